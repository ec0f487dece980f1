"""Ref-YouTube-VOS layout (also the layout Ref-DAVIS17 is converted to, and the synthetic generator's output).

```
<root>/<split>/JPEGImages/<video>/<frame>.jpg        (DAVIS conversions may add a 480p/ level)
<root>/<split>/Annotations/<video>/<frame>.png       palette PNG, pixel value = object id; absent -> no ground truth
<root>/<split>/meta.json                             optional: {"videos": {vid: {"objects": {id: {"category"}}}}}
<root>/meta_expressions/<split>/meta_expressions.json
    {"videos": {vid: {"expressions": {exp_id: {"exp": str, "obj_id": "1"}}, "frames": ["00000", ...]}}}
```

The real Ref-YouTube-VOS ``meta_expressions/valid`` lists all 507 validation videos, of which the competition's ``test``
split (``meta_expressions/test``) takes 305: split ``valid`` lists the other 202, as the official inference does, and
split ``test`` reads its frames from ``valid/`` when there is no ``test/`` folder; ``valid-all`` lists all 507.
Ref-YouTube-VOS ``valid`` expressions carry no ``obj_id`` (the server holds the ground truth): their ``obj_ids`` are
empty and ``has_gt`` is False. The synthetic set writes ``valid/Annotations`` and ``obj_id`` so it can be scored
locally.
"""

from __future__ import annotations

from collections.abc import Sequence

from sgmg.data.datasets.base import (
    DatasetReader,
    load_label_png_video,
    source_dict,
)
from sgmg.data.io import IMAGE_EXTS, DataError, FileSource, join, read_json
from sgmg.data.schema import Expression, VideoData, VideoRecord

_FRAME_DIRS = ("JPEGImages/480p", "JPEGImages")
_MASK_DIRS = ("Annotations/480p", "Annotations_unsupervised/480p", "Annotations")


def parse_obj_ids(value: object, where: str) -> tuple[int, ...]:
    """Object id(s) of an expression entry: ``"1"``, ``1``, ``["1", 2]`` or missing (-> ``()``)."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: obj_id {value!r} is not an integer object id") from err


class RefYouTubeVOSReader(DatasetReader):
    """Reader of the Ref-YouTube-VOS layout (see the module docstring)."""

    format = "ref-youtube-vos"

    def __init__(self, source: FileSource, split: str, dataset_name: str | None = None) -> None:
        super().__init__(source, split)
        if dataset_name:
            self.format = dataset_name

    @property
    def folder(self) -> str:
        """The split's folder of frames and annotations."""
        if self.split == "valid-all" or (self.split == "test" and not self.source.exists("test")):
            return "valid"
        return self.split

    def expressions_path(self) -> str:
        """Relative path of the split's ``meta_expressions.json``."""
        name = "valid" if self.split == "valid-all" else self.split
        candidates = [join("meta_expressions", name, "meta_expressions.json")]
        if name == "valid":
            candidates.append("meta_expressions/val/meta_expressions.json")
        for rel in candidates:
            if self.source.exists(rel):
                return rel
        raise DataError(
            f"no expressions file for split {self.split!r}: expected {self.source.describe(candidates[0])} "
            f"(splits present: {self.source.list_dir('meta_expressions') or 'none'})"
        )

    def _first_existing(self, options: Sequence[str]) -> str | None:
        for sub in options:
            rel = join(self.folder, sub)
            if self.source.exists(rel):
                return rel
        return None

    def list_videos(self, problems: list[str] | None = None) -> list[VideoRecord]:
        """See :meth:`DatasetReader.list_videos`."""
        exp_rel = self.expressions_path()
        meta = read_json(self.source, exp_rel)
        where = self.source.describe(exp_rel)
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise DataError(f'{where}: expected {{"videos": {{video_id: {{...}}}}}}, got {type(meta).__name__}')
        frames_root = self._first_existing(_FRAME_DIRS)
        if frames_root is None:
            raise DataError(f"no frame folder: expected {self.source.describe(join(self.folder, 'JPEGImages'))}")
        masks_root = self._first_existing(_MASK_DIRS)
        excluded: set[str] = set()
        test_rel = "meta_expressions/test/meta_expressions.json"
        if self.split == "valid" and self.source.exists(test_rel):
            test_meta = read_json(self.source, test_rel)
            excluded = set(test_meta.get("videos", {})) if isinstance(test_meta, dict) else set()
        records = []
        for vid in sorted(set(meta["videos"]) - excluded):
            entry = meta["videos"][vid]
            try:
                records.append(self._record(vid, entry, where, frames_root, masks_root))
            except DataError as err:
                if problems is None:
                    raise
                problems.append(str(err))
        return records

    def _record(self, vid: str, entry: object, where: str, frames_root: str, masks_root: str | None) -> VideoRecord:
        if not isinstance(entry, dict) or not isinstance(entry.get("expressions", {}), dict):
            raise DataError(f"{where}: video {vid!r} must be an object with an 'expressions' object")
        frames_dir = join(frames_root, vid)
        frame_ids = entry.get("frames")
        ext = ".jpg"
        if frame_ids is None:  # meta without frame list: list the folder
            names = [n for n in self.source.list_dir(frames_dir) if n.lower().endswith(IMAGE_EXTS)]
            if not names:
                raise DataError(
                    f"{where}: video {vid!r} has no 'frames' list and {self.source.describe(frames_dir)} "
                    "holds no images"
                )
            ext = "." + names[0].rsplit(".", 1)[-1]
            frame_ids = [n.rsplit(".", 1)[0] for n in names]
        if not isinstance(frame_ids, list) or not all(isinstance(f, str) for f in frame_ids) or not frame_ids:
            raise DataError(f"{where}: video {vid!r} 'frames' must be a non-empty list of frame names")
        expressions = []
        for exp_id, exp in entry.get("expressions", {}).items():
            if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str):
                raise DataError(f"{where}: video {vid!r} expression {exp_id!r} must be an object with a string 'exp'")
            obj_ids = parse_obj_ids(exp.get("obj_id"), f"{where}: video {vid!r} expression {exp_id!r}")
            expressions.append(Expression(exp_id=str(exp_id), text=exp["exp"], obj_ids=obj_ids))
        source = [("frames", frames_dir), ("frame_ext", ext)]
        if masks_root is not None:
            source.append(("masks", join(masks_root, vid)))
        return VideoRecord(
            dataset=self.format,
            split=self.split,
            video_id=vid,
            frame_ids=tuple(sorted(frame_ids)),
            expressions=tuple(expressions),
            source=tuple(source),
        )

    def load_video(
        self, record: VideoRecord, max_side: int | None = None, frame_indices: Sequence[int] | None = None
    ) -> VideoData:
        """See :meth:`DatasetReader.load_video`."""
        ext = source_dict(record).get("frame_ext", ".jpg")
        return load_label_png_video(self.source, record, max_side, frame_indices, ext)
