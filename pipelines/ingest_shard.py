"""One shard of an ingest (:mod:`pipelines.ingest`): its videos read through the ``sgmg`` dataset readers, decoded,
resized and encoded into rows (:mod:`pipelines.shards`), bad videos quarantined, and the Parquet file committed in one
atomic write; :func:`shard_task` is the Ray Data task that builds the shards of a batch.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from pipelines import shards, storage
from pipelines.ingest_config import IngestConfig
from sgmg.data.schema import VideoData, VideoRecord


def shard_name(index: int, count: int) -> str:
    """File name of shard ``index`` of ``count``."""
    return f"shard-{index:05d}-of-{count:05d}.parquet"


@dataclass
class ShardResult:
    """What one shard task reports (also stored in the shard's Parquet footer)."""

    index: int
    name: str
    rows: int
    samples: int
    sha256: str
    bytes: int
    video_ids: list[str]
    quarantine: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False


def open_reader(fmt: str, source_uri: str, split: str):  # noqa: ANN201 - sgmg.data.datasets.base.DatasetReader
    """The sgmg dataset reader of ``fmt`` over ``source_uri`` (local or S3, through :class:`StorageFileSource`)."""
    from sgmg.data.datasets import open_dataset

    return open_dataset(fmt, storage.StorageFileSource(source_uri), split)


def _quarantine_entry(reader, record: VideoRecord, err: BaseException, shard: int) -> dict:  # noqa: ANN001
    src = dict(record.source)
    loc = src.get("video") or src.get("frames") or src.get("image") or next(iter(src.values()), "")
    try:
        file = reader.source.describe(loc) if loc else record.video_id
    except Exception:  # noqa: BLE001 - describe is best effort
        file = loc
    # drop memory addresses ("<_io.BytesIO object at 0x7f..>") so reruns write byte-identical shards
    reason = re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(err).__name__}: {err}")
    return {"video_id": record.video_id, "file": file, "reason": reason, "shard": shard}


def build_shard(
    cfg: IngestConfig,
    index: int,
    count: int,
    records: Sequence[VideoRecord],
    reader=None,  # noqa: ANN001 - DatasetReader
    load: Callable[[VideoRecord], VideoData] | None = None,
) -> tuple[bytes, ShardResult]:
    """Decode, resize and encode the videos of one shard; bad videos go to the result's quarantine list.

    Returns:
        The Parquet bytes and the :class:`ShardResult` (sha256 of those bytes included).
    """
    t0 = time.perf_counter()
    if reader is None:
        reader = open_reader(cfg.format, cfg.source, cfg.split)
    load = load or (lambda r: reader.load_video(r, max_side=cfg.max_side))
    rows, bad = [], []
    for rec in records:
        try:
            rows.append(shards.encode_video_row(load(rec), cfg.frame_codec, cfg.jpeg_quality))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - every per-video failure is quarantined, the job goes on
            bad.append(_quarantine_entry(reader, rec, err, index))
    name = shard_name(index, count)
    meta = {
        "version": shards.SHARD_FORMAT_VERSION,
        "config_hash": cfg.config_hash(),
        "index": index,
        "count": count,
        "video_ids": [r.video_id for r in records],
        "quarantine": bad,
        "rows": len(rows),
        "samples": sum(len(r["expressions"]) for r in rows),
    }
    data = shards.write_shard_bytes(rows, meta)
    result = ShardResult(
        index=index,
        name=name,
        rows=len(rows),
        samples=meta["samples"],
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        video_ids=meta["video_ids"],
        quarantine=bad,
        seconds=time.perf_counter() - t0,
    )
    return data, result


def shard_task(batch: dict, cfg: dict) -> dict:
    """Ray Data UDF: build and commit the shard of each row (``batch_size=1``: one shard per call).

    A plain function on a task pool rather than an actor: the reader is cheap to open, and pooled worker processes
    that already imported torch are reused across shards and across jobs.
    """
    config = IngestConfig(**cfg)
    reader = open_reader(config.format, config.source, config.split)
    out: dict[str, list] = {"result": []}
    for index, count, blob in zip(batch["index"], batch["count"], batch["records"], strict=True):
        records = pickle.loads(blob)
        data, result = build_shard(config, int(index), int(count), records, reader=reader)
        storage.write_bytes(storage.join(config.dest, result.name), data)  # atomic commit
        out["result"].append(json.dumps(asdict(result)))
    return out
