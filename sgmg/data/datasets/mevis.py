"""MeViS (motion expressions; one sentence can refer to several objects).

```
<root>/<split>/JPEGImages/<video>/<frame>.jpg
<root>/<split>/meta_expressions.json
    {"videos": {vid: {"expressions": {exp_id: {"exp": str, "obj_id": [int, ...], "anno_id": [int, ...]}},
                      "frames": ["00000", ...]}}}
<root>/<split>/mask_dict.json      {anno_id: [COCO RLE or null, one per frame]}; absent (split "valid") -> no GT
```

``obj_id[i]`` is the video-level id of the object whose per-frame masks are ``mask_dict[anno_id[i]]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from sgmg.data import rle as rle_codec
from sgmg.data.datasets.base import (
    DatasetReader,
    assemble,
    raise_if_errors,
    read_video_files,
    source_dict,
)
from sgmg.data.datasets.ytvos import parse_obj_ids
from sgmg.data.io import DataError, FileSource, join, read_json
from sgmg.data.schema import Expression, VideoData, VideoRecord


def decode_rle(rle: dict, where: str) -> np.ndarray:
    """bool ``[H, W]`` of one COCO RLE (:func:`sgmg.data.rle.decode`), a :class:`DataError` naming ``where`` if bad."""
    try:
        return rle_codec.decode(rle)
    except ValueError as err:
        raise DataError(f"{where}: bad RLE ({err.__cause__})") from err


class MevisReader(DatasetReader):
    """Reader of the MeViS layout (see the module docstring)."""

    format = "mevis"

    def __init__(self, source: FileSource, split: str) -> None:
        super().__init__(source, split)

    def _mask_dict(self) -> dict:
        cache = self.__dict__.get("_cache_masks")
        if cache is None:
            rel = join(self.split, "mask_dict.json")
            cache = read_json(self.source, rel)
            if not isinstance(cache, dict):
                raise DataError(f"{self.source.describe(rel)}: expected {{anno_id: [rle or null, ...]}}")
            self.__dict__["_cache_masks"] = cache
        return cache

    def list_videos(self, problems: list[str] | None = None) -> list[VideoRecord]:
        """See :meth:`DatasetReader.list_videos`."""
        rel = join(self.split, "meta_expressions.json")
        meta = read_json(self.source, rel)
        where = self.source.describe(rel)
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise DataError(f'{where}: expected {{"videos": {{video_id: {{...}}}}}}')
        has_gt = self.source.exists(join(self.split, "mask_dict.json"))
        records = []
        for vid in sorted(meta["videos"]):
            try:
                records.append(self._record(vid, meta["videos"][vid], where, has_gt))
            except DataError as err:
                if problems is None:
                    raise
                problems.append(str(err))
        return records

    def _record(self, vid: str, entry: object, where: str, has_gt: bool) -> VideoRecord:
        if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list) or not entry["frames"]:
            raise DataError(f"{where}: video {vid!r} must have a non-empty 'frames' list and an 'expressions' object")
        expressions = []
        anno_of: dict[int, int] = {}
        for exp_id, exp in entry.get("expressions", {}).items():
            here = f"{where}: video {vid!r} expression {exp_id!r}"
            if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str):
                raise DataError(f"{here} must be an object with a string 'exp'")
            obj_ids = parse_obj_ids(exp.get("obj_id"), here)
            anno_ids = parse_obj_ids(exp.get("anno_id"), here)
            if has_gt and len(anno_ids) != len(obj_ids):
                raise DataError(f"{here}: {len(obj_ids)} obj_id but {len(anno_ids)} anno_id")
            for o, a in zip(obj_ids, anno_ids, strict=False):
                anno_of[o] = a
            expressions.append(Expression(exp_id=str(exp_id), text=exp["exp"], obj_ids=obj_ids))
        source = [("frames", join(self.split, "JPEGImages", vid))]
        if has_gt:
            source.append(("anno_ids", json.dumps(sorted(anno_of.items()))))
        return VideoRecord(
            dataset=self.format,
            split=self.split,
            video_id=vid,
            frame_ids=tuple(str(f) for f in entry["frames"]),
            expressions=tuple(expressions),
            source=tuple(source),
        )

    def load_video(
        self, record: VideoRecord, max_side: int | None = None, frame_indices: Sequence[int] | None = None
    ) -> VideoData:
        """See :meth:`DatasetReader.load_video`."""
        src = source_dict(record)
        idx, frames, frame_paths, _ = read_video_files(self.source, record, frame_indices, ".jpg")
        if "anno_ids" not in src:
            return assemble(record, frames, [], None, max_side)
        anno_of = dict(json.loads(src["anno_ids"]))
        mask_dict = self._mask_dict()
        where = self.source.describe(join(self.split, "mask_dict.json"))
        obj_ids = sorted(anno_of)
        h, w = frames[0].shape[:2]
        masks = np.zeros((len(obj_ids), len(idx), h, w), dtype=bool)
        n = len(record.frame_ids)
        errors: list[str] = []
        for k, obj in enumerate(obj_ids):
            per_frame = mask_dict.get(str(anno_of[obj]))
            if not isinstance(per_frame, list) or len(per_frame) != n:
                got = (
                    "missing"
                    if per_frame is None
                    else f"{len(per_frame)} entries"
                    if isinstance(per_frame, list)
                    else type(per_frame).__name__
                )
                errors.append(f"{where}: anno_id {anno_of[obj]} (object {obj}) should list {n} frames, got {got}")
                continue
            for t, i in enumerate(idx):
                if per_frame[i] is None:
                    continue
                try:
                    m = decode_rle(per_frame[i], f"{where} anno_id {anno_of[obj]} frame {i}")
                except DataError as err:
                    errors.append(str(err))
                    continue
                if m.shape != (h, w):
                    errors.append(
                        f"{where}: anno_id {anno_of[obj]} frame {i} mask is {m.shape[1]}x{m.shape[0]} "
                        f"(WxH), frame {frame_paths[t]} is {w}x{h}"
                    )
                    continue
                masks[k, t] = m
        raise_if_errors(record, errors)
        return assemble(record, frames, obj_ids, masks, max_side)
