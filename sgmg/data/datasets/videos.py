"""A plain folder of videos with sentences: the format for a user's own data (no ground truth).

```
<root>/<name>.mp4                  a video file (any of .mp4 .avi .mov .mkv .webm .m4v), decoded with decord/PyAV
<root>/<name>/00000.jpg ...        or a folder of frames (JPEG/PNG), in name order
<root>/expressions.json            {"<name>": ["sentence", ...]}  or  {"<name>": {"<exp_id>": "sentence", ...}}
<root>/expressions.csv             alternative: header ``video,expression`` (optional third column ``exp_id``)
```

The video id is ``<name>``; frame ids of video files are ``00000``, ``00001``, ...; list-form sentences get exp ids
``"0"``, ``"1"``, ... A video without sentences is still listed (with no expressions).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from sgmg.data.datasets.base import (
    DatasetReader,
    assemble,
    check_sizes,
    raise_if_errors,
    read_frames,
    select_indices,
    source_dict,
)
from sgmg.data.io import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    DataError,
    FileSource,
    count_video_frames,
    decode_video,
    is_dir,
    read_json,
)
from sgmg.data.schema import Expression, VideoData, VideoRecord


def _parse_expression_json(data: object, where: str) -> dict[str, list[tuple[str, str]]]:
    if not isinstance(data, dict):
        raise DataError(f'{where}: expected {{"<video>": ["sentence", ...]}}, got {type(data).__name__}')
    out: dict[str, list[tuple[str, str]]] = {}
    for vid, value in data.items():
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            out[vid] = [(str(i), s) for i, s in enumerate(value)]
        elif isinstance(value, dict) and all(isinstance(s, str) for s in value.values()):
            out[vid] = [(str(k), s) for k, s in value.items()]
        else:
            raise DataError(f"{where}: video {vid!r}: expected a list of sentences or {{exp_id: sentence}}")
    return out


def _parse_expression_csv(text: str, where: str) -> dict[str, list[tuple[str, str]]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    out: dict[str, list[tuple[str, str]]] = {}
    for n, row in enumerate(rows, 2):
        vid, sentence = row.get("video"), row.get("expression")
        if not vid or sentence is None:
            raise DataError(f"{where}:{n}: expected columns 'video' and 'expression', got {row}")
        items = out.setdefault(vid, [])
        items.append((row.get("exp_id") or str(len(items)), sentence))
    return out


class VideoFolderReader(DatasetReader):
    """Reader of a folder of video files or frame folders plus sentences (see the module docstring)."""

    format = "videos"

    def __init__(self, source: FileSource, split: str = "test") -> None:
        super().__init__(source, split)

    def _expressions(self) -> dict[str, list[tuple[str, str]]]:
        if self.source.exists("expressions.json"):
            return _parse_expression_json(
                read_json(self.source, "expressions.json"), self.source.describe("expressions.json")
            )
        if self.source.exists("expressions.csv"):
            text = self.source.read_bytes("expressions.csv").decode("utf-8-sig", errors="replace")
            return _parse_expression_csv(text, self.source.describe("expressions.csv"))
        return {}

    def list_videos(self, problems: list[str] | None = None) -> list[VideoRecord]:
        """See :meth:`DatasetReader.list_videos` (video files are opened to count their frames)."""
        sentences = self._expressions()
        records: dict[str, VideoRecord] = {}
        errors: list[str] = []
        for name in self.source.list_dir(""):
            try:
                if name.lower().endswith(VIDEO_EXTS):
                    vid = name.rsplit(".", 1)[0]
                    n = count_video_frames(self.source.read_bytes(name), self.source.describe(name))
                    frame_ids = tuple(f"{i:05d}" for i in range(n))
                    source = (("video", name),)
                elif is_dir(self.source, name):
                    files = [f for f in self.source.list_dir(name) if f.lower().endswith(IMAGE_EXTS)]
                    if not files:
                        continue
                    vid = name
                    frame_ids = tuple(f.rsplit(".", 1)[0] for f in files)
                    source = (("frames", name), ("frame_files", "/".join(files)))
                else:
                    continue
            except DataError as err:
                errors.append(str(err))
                continue
            exps = tuple(Expression(exp_id=e, text=s, obj_ids=()) for e, s in sentences.get(vid, []))
            records[vid] = VideoRecord(self.format, self.split, vid, frame_ids, exps, source)
        for vid in sentences:
            if vid not in records and not any(vid in e for e in errors):
                errors.append(
                    f"{self.source.describe('expressions')}: sentences for video {vid!r}, but no "
                    f"{vid}.mp4 or {vid}/ frame folder in {self.source.describe('')}"
                )
        if errors:
            if problems is None:
                raise DataError("\n".join(errors))
            problems.extend(errors)
        return [records[k] for k in sorted(records)]

    def load_video(
        self, record: VideoRecord, max_side: int | None = None, frame_indices: Sequence[int] | None = None
    ) -> VideoData:
        """See :meth:`DatasetReader.load_video` (``has_gt`` is always False)."""
        src = source_dict(record)
        idx = select_indices(record, frame_indices)
        if "video" in src:
            frames = list(decode_video(self.source.read_bytes(src["video"]), self.source.describe(src["video"]), idx))
            return assemble(record, frames, [], None, max_side)
        files = src["frame_files"].split("/")
        paths = [f"{src['frames']}/{files[i]}" for i in idx]
        errors: list[str] = []
        frames = read_frames(self.source, paths, errors)
        check_sizes(self.source, frames, paths, [None] * len(idx), [None] * len(idx), errors)
        raise_if_errors(record, errors)
        return assemble(record, frames, [], None, max_side)
