"""The shard format of the ingest output: one Parquet row per video, with all its expressions.

Frames and masks are stored once per video, not once per expression (Ref-YouTube-VOS has ~3.6 expressions per video),
and the streaming side (:mod:`pipelines.stream`) expands a row to its (video, expression) samples while it samples
clips. Columns (:data:`SHARD_SCHEMA`): ``video_id, dataset, split, frame_ids, height, width, frame_codec, frames`` (one
encoded image per frame: JPEG, or PNG for lossless), ``obj_ids``, ``masks`` (COCO RLE ``counts`` bytes per (object,
frame), flattened ``[O, T]`` row-major), ``visible`` (``[O, T]`` flattened), ``has_gt``, ``expressions`` (list of
``{exp_id, text, obj_ids}``) and ``source`` (JSON of the reader's locators: the source ids). The footer holds the
shard's JSON metadata under ``sgmg.shard`` (its config hash, videos and quarantine entries).

Pure functions of rows and bytes (plus reading a committed shard through :mod:`pipelines.storage`), used by the ingest
tasks (:mod:`pipelines.ingest`), the clip stream and the tests.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.ingest_config import IngestError
from sgmg.data import rle
from sgmg.data.schema import Expression, VideoData, VideoRecord

SHARD_FORMAT_VERSION = 2  # 2: no ``boxes`` column (nothing read it; clips get their boxes from the masks)
ROW_GROUP_ROWS = 8  # videos per Parquet row group of a shard (the unit of a partial read)
_META_KEY = b"sgmg.shard"
EXPRESSION_TYPE = pa.struct([("exp_id", pa.string()), ("text", pa.string()), ("obj_ids", pa.list_(pa.int64()))])
SHARD_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("frame_ids", pa.list_(pa.string())),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("frame_codec", pa.string()),
        ("frames", pa.list_(pa.binary())),
        ("obj_ids", pa.list_(pa.int64())),
        ("masks", pa.list_(pa.binary())),
        ("visible", pa.list_(pa.bool_())),
        ("has_gt", pa.bool_()),
        ("expressions", pa.list_(EXPRESSION_TYPE)),
        ("source", pa.string()),
    ]
)


def encode_image(frame: np.ndarray, codec: str, quality: int = 90) -> bytes:
    """Encode uint8 RGB ``[H, W, 3]`` as JPEG or PNG (deterministic)."""
    from sgmg.data.io import encode_jpeg, encode_png

    return encode_jpeg(frame, quality=quality) if codec == "jpeg" else encode_png(frame)


def encode_masks(masks: np.ndarray) -> list[bytes]:
    """COCO RLE ``counts`` of bool ``[O, T, H, W]`` masks, flattened ``[O, T]`` row-major."""
    o, t, h, w = masks.shape
    if o * t == 0:
        return []
    return [r["counts"] for r in rle.encode(masks.reshape(o * t, h, w))]  # [O*T, H, W]


def decode_masks(counts: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_masks` without the reshape: bool ``[N, H, W]``."""
    return rle.decode_counts(counts, height, width)


def validate_video(video: VideoData) -> None:
    """Check the shapes a reader returned; raise ``ValueError`` naming the video when they disagree."""
    rec = video.record
    frames = video.frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"video {rec.video_id!r}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}"
        )
    t, h, w = frames.shape[:3]
    if t == 0:
        raise ValueError(f"video {rec.video_id!r} has no frames")
    if t != len(rec.frame_ids):
        raise ValueError(f"video {rec.video_id!r}: {t} frames decoded but {len(rec.frame_ids)} frame ids listed")
    m = video.masks
    if m.ndim != 4 or tuple(m.shape[1:]) != (t, h, w) or m.shape[0] != len(video.obj_ids):
        raise ValueError(
            f"video {rec.video_id!r}: masks {list(m.shape)} do not match frames [T={t}, H={h}, W={w}] "
            f"and {len(video.obj_ids)} objects"
        )


def encode_video_row(video: VideoData, codec: str = "jpeg", quality: int = 90) -> dict:
    """One shard row (a dict following :data:`SHARD_SCHEMA`) from a decoded video."""
    validate_video(video)
    rec = video.record
    t, h, w = video.frames.shape[:3]
    masks = video.masks.astype(bool, copy=False)
    visible = masks.any((-2, -1))  # [O, T]
    return {
        "video_id": rec.video_id,
        "dataset": rec.dataset,
        "split": rec.split,
        "frame_ids": list(rec.frame_ids),
        "height": h,
        "width": w,
        "frame_codec": codec,
        "frames": [encode_image(f, codec, quality) for f in video.frames],
        "obj_ids": [int(o) for o in video.obj_ids],
        "masks": encode_masks(masks),
        "visible": visible.reshape(-1).tolist(),
        "has_gt": bool(video.has_gt),
        "expressions": [{"exp_id": e.exp_id, "text": e.text, "obj_ids": list(e.obj_ids)} for e in rec.expressions],
        "source": json.dumps(dict(rec.source), sort_keys=True),
    }


def decode_frames(frames: Sequence[bytes], indices: Iterable[int] | None = None) -> np.ndarray:
    """uint8 RGB ``[t, H, W, 3]`` of the stored frames at ``indices`` (all when None)."""
    from sgmg.data.io import decode_image

    idx = range(len(frames)) if indices is None else indices
    return np.stack([decode_image(bytes(frames[i]), f"frame {i}") for i in idx])


def row_expressions(row: dict) -> list[Expression]:
    """The :class:`Expression` list of a shard row."""
    return [Expression(e["exp_id"], e["text"], tuple(int(o) for o in e["obj_ids"])) for e in row["expressions"]]


def row_masks(row: dict, obj_ids: Sequence[int], indices: Sequence[int] | None = None) -> np.ndarray:
    """bool ``[O, t, H, W]`` masks of ``obj_ids`` (a subset of the row's objects) at frame ``indices``."""
    t = len(row["frame_ids"])
    idx = list(range(t)) if indices is None else list(indices)
    all_ids = [int(o) for o in row["obj_ids"]]
    h, w = int(row["height"]), int(row["width"])
    if not row["has_gt"] or not obj_ids:
        return np.zeros((0, len(idx), h, w), dtype=bool)
    picks = [all_ids.index(int(o)) * t + j for o in obj_ids for j in idx]
    return decode_masks([row["masks"][p] for p in picks], h, w).reshape(len(obj_ids), len(idx), h, w)


def row_to_video(row: dict) -> VideoData:
    """Decode a whole shard row back to :class:`VideoData` (tests and tools; the stream decodes clips only)."""
    rec = VideoRecord(
        dataset=row["dataset"],
        split=row["split"],
        video_id=row["video_id"],
        frame_ids=tuple(row["frame_ids"]),
        expressions=tuple(row_expressions(row)),
        source=tuple(sorted(json.loads(row["source"]).items())),
    )
    obj_ids = [int(o) for o in row["obj_ids"]]
    return VideoData(
        record=rec,
        frames=decode_frames(row["frames"]),
        obj_ids=obj_ids,
        masks=row_masks(row, obj_ids),
        has_gt=bool(row["has_gt"]),
    )


def read_shard_rows(
    uri: str, start: int = 0, stop: int | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """Rows ``[start, stop)`` of the shard at ``uri``, reading only the row groups that hold them.

    Raises:
        StorageError: the shard cannot be read (named in the message).
    """

    def read(fs: Any, path: str) -> pa.Table:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            end = pf.metadata.num_rows if stop is None else min(stop, pf.metadata.num_rows)
            groups, first, offset = [], 0, 0
            for g in range(pf.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if offset < end and offset + n > start:
                    first = first if groups else offset
                    groups.append(g)
                offset += n
            table = pf.read_row_groups(groups, columns=list(columns) if columns else None)
            return table.slice(start - first, max(0, end - start))

    return storage.read_with(uri, read)


def write_shard_bytes(rows: list[dict], meta: dict) -> bytes:
    """Serialise rows into one Parquet file (bytes) with ``meta`` JSON in its footer. Deterministic."""
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    buf = io.BytesIO()
    # one row group per ~8 videos keeps memory bounded when reading; frames are already compressed
    pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="zstd", write_statistics=False)
    return buf.getvalue()


def read_shard_meta(uri: str) -> dict:
    """The ``sgmg.shard`` footer metadata of a committed shard."""
    fs, path = storage.pyarrow_location(uri)
    md = pq.read_metadata(path, filesystem=fs)
    raw = (md.metadata or {}).get(_META_KEY)
    if raw is None:
        raise IngestError(f"{uri} is not an sgmg shard (no {_META_KEY.decode()} metadata); remove it or use a new dest")
    return json.loads(raw)


def read_shard(uri: str) -> pa.Table:
    """Read a whole shard (tests and tools)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))
