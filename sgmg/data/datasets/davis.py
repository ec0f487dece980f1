"""Ref-DAVIS17: the raw DAVIS-2017 folders plus the referring-expression text files, or their Ref-YouTube-VOS-style
conversion (which :class:`~sgmg.data.datasets.ytvos.RefYouTubeVOSReader` reads).

Raw layout (what Khoreva et al. distribute; facts from the official ``tools/data/convert_davis_to_ytvos.py``):

```
<root>/DAVIS/ImageSets/2017/{train,val}.txt                  one video name per line
<root>/DAVIS/JPEGImages/480p/<video>/<frame>.jpg
<root>/DAVIS/Annotations_unsupervised/480p/<video>/<frame>.png   palette PNG, pixel value = object id
<root>/davis_text_annotations/Davis17_annot1.txt               first-frame expressions of annotator 1 (UTF-8)
<root>/davis_text_annotations/Davis17_annot1_full_video.txt    full-video expressions of annotator 1 (UTF-8)
<root>/davis_text_annotations/Davis17_annot2.txt               same for annotator 2 (Latin-1)
<root>/davis_text_annotations/Davis17_annot2_full_video.txt
```

Each text line is ``<video> <obj_id> "<expression>"``. Three video names are misspelt in the files and are fixed
(``clasic-car``, ``dog-scale``, ``motor-bike``). Expressions are numbered per video as the conversion does: objects in
increasing id, and for each object ``[annot1 first-frame, annot1 full-video, annot2 first-frame, annot2 full-video]``,
so ``int(exp_id) % 4`` is the annotator run (``anno_0..3``) of the DAVIS protocol. Unlike the conversion, which zips the
four lists by position, expressions are paired by object id, so a line missing in one file does not shift the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from sgmg.data.datasets.base import (
    DatasetReader,
    load_label_png_video,
    source_dict,
)
from sgmg.data.io import IMAGE_EXTS, DataError, FileSource
from sgmg.data.schema import Expression, VideoData, VideoRecord

TEXT_FILES = (
    ("davis_text_annotations/Davis17_annot1.txt", "utf-8"),
    ("davis_text_annotations/Davis17_annot1_full_video.txt", "utf-8"),
    ("davis_text_annotations/Davis17_annot2.txt", "latin-1"),
    ("davis_text_annotations/Davis17_annot2_full_video.txt", "latin-1"),
)
NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
_SPLITS = {"train": "train", "val": "val", "valid": "val"}


def parse_text_annotations(text: str, where: str) -> dict[str, dict[int, str]]:
    """Parse one DAVIS text-annotation file: ``{video: {obj_id: expression}}``.

    Raises:
        DataError: a non-empty line that is not ``<video> <obj_id> "<expression>"`` (names the file and line).
    """
    out: dict[str, dict[int, str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.strip().split(maxsplit=2)
        if not parts:
            continue
        if len(parts) < 3 or not parts[1].isdigit():
            raise DataError(f'{where}:{lineno}: expected `<video> <obj_id> "<expression>"`, got {line.strip()!r}')
        video = NAME_FIXES.get(parts[0], parts[0])
        exp = parts[2].strip()
        if len(exp) >= 2 and exp[0] == exp[-1] and exp[0] in "\"'":
            exp = exp[1:-1]
        out.setdefault(video, {})[int(parts[1])] = exp
    return out


class RawDavisReader(DatasetReader):
    """Reader of the raw Ref-DAVIS17 layout (see the module docstring). Splits: ``train``, ``valid`` (or ``val``)."""

    format = "ref-davis"

    def __init__(self, source: FileSource, split: str) -> None:
        if split not in _SPLITS:
            raise ValueError(f"ref-davis split {split!r}: expected one of {sorted(_SPLITS)}")
        super().__init__(source, split)

    def list_videos(self, problems: list[str] | None = None) -> list[VideoRecord]:
        """See :meth:`DatasetReader.list_videos`."""
        set_rel = f"DAVIS/ImageSets/2017/{_SPLITS[self.split]}.txt"
        names = self.source.read_bytes(set_rel).decode("utf-8", errors="replace").split()
        texts = []
        for rel, encoding in TEXT_FILES:
            raw = self.source.read_bytes(rel)
            try:
                decoded = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise DataError(f"{self.source.describe(rel)} is not {encoding} text: {err}") from err
            texts.append(parse_text_annotations(decoded, self.source.describe(rel)))
        mask_root = next(
            (r for r in ("DAVIS/Annotations_unsupervised/480p", "DAVIS/Annotations/480p") if self.source.exists(r)),
            None,
        )
        records = []
        for vid in names:
            try:
                records.append(self._record(vid, texts, mask_root))
            except DataError as err:
                if problems is None:
                    raise
                problems.append(str(err))
        return records

    def _record(self, vid: str, texts: list[dict[str, dict[int, str]]], mask_root: str | None) -> VideoRecord:
        frames_dir = f"DAVIS/JPEGImages/480p/{vid}"
        files = [n for n in self.source.list_dir(frames_dir) if n.lower().endswith(IMAGE_EXTS)]
        if not files:
            raise DataError(f"video {vid!r} (listed in ImageSets) has no frames in {self.source.describe(frames_dir)}")
        ext = "." + files[0].rsplit(".", 1)[-1]
        obj_ids = sorted({o for t in texts for o in t.get(vid, {})})
        expressions = []
        for k, obj in enumerate(obj_ids):
            for j, table in enumerate(texts):
                text = table.get(vid, {}).get(obj)
                if text is not None:
                    expressions.append(Expression(exp_id=str(4 * k + j), text=text, obj_ids=(obj,)))
        source = [("frames", frames_dir), ("frame_ext", ext)]
        if mask_root is not None:
            source.append(("masks", f"{mask_root}/{vid}"))
        return VideoRecord(
            dataset=self.format,
            split=self.split,
            video_id=vid,
            frame_ids=tuple(n.rsplit(".", 1)[0] for n in files),
            expressions=tuple(expressions),
            source=tuple(source),
        )

    def load_video(
        self, record: VideoRecord, max_side: int | None = None, frame_indices: Sequence[int] | None = None
    ) -> VideoData:
        """See :meth:`DatasetReader.load_video`."""
        ext = source_dict(record)["frame_ext"]
        return load_label_png_video(self.source, record, max_side, frame_indices, ext)
