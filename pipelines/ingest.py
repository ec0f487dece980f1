"""Ray Data ingest: a raw dataset in object storage -> Parquet shards of preprocessed videos, plus a manifest.

Output layout under ``dest`` (any URI :mod:`pipelines.storage` accepts)::

    _plan.json              written first: the config and the deterministic video -> shard assignment
    shard-00000-of-00012.parquet ...   one Parquet file per shard, committed atomically
    quarantine.jsonl        one JSON line per bad video: {"video_id", "file", "reason", "shard"}
    manifest.json           written last: shard names, row/sample counts, sha256 content hashes, config, totals

**One row per video**, with all its expressions; the shard format (schema, row encoding and decoding, footer
metadata) is :mod:`pipelines.shards`.

**Idempotent and resumable.** Videos are sorted by id and cut into consecutive shards of ``shard_size``: the
assignment depends only on the listing and the config, and is recorded in ``_plan.json`` before any shard is
written. Each shard is built in memory and committed under its final name in one atomic write (temp file + rename
locally, a single object upload on S3), so a shard either exists complete or not at all. A rerun with the same config
reads the plan, skips the shards that exist (their Parquet footers carry their quarantine entries) and writes the
missing ones; the manifest is written last. A rerun with a *different* config into the same ``dest`` is refused.

**Bad inputs** (unreadable frames, masks whose size differs from their frame, any reader error) are quarantined per
video and the job continues; it fails (no manifest) only when the fraction of bad videos exceeds
``max_bad_fraction``.

**Parallelism.** The unit of work is a shard: ``map_batches`` over the shards to build, with a task pool of
``parallelism`` tasks of ``num_cpus`` each; each task decodes, resizes and encodes its videos and commits its shard.
Choose ``shard_size`` so that there are many more shards than CPUs (the default 32 Ref-YouTube-VOS videos at 640 px
make ~60 MB shards).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from pipelines import ingested, shards, storage
from pipelines.ingest_config import IngestConfig, IngestError
from pipelines.ingest_shard import ShardResult, open_reader, shard_name, shard_task
from sgmg.data.schema import VideoRecord

log = logging.getLogger(__name__)

PLAN_NAME = "_plan.json"
QUARANTINE_NAME = "quarantine.jsonl"


# ----------------------------------------------------------------------------------------------------------------------
# The plan and the rows of the output


def plan_shards(video_ids: Sequence[str], shard_size: int) -> list[list[str]]:
    """Deterministic assignment: sorted ids cut into consecutive chunks of ``shard_size``."""
    ids = sorted(video_ids)
    return [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]


# ----------------------------------------------------------------------------------------------------------------------
# Dataset access through the sgmg readers


def check_source(cfg: IngestConfig) -> None:
    """Cheap checks of ``cfg.source`` before any Ray work starts: it exists, can be listed, and holds the index of the
    format's split (Ref-YouTube-VOS: ``meta_expressions/<split>/meta_expressions.json``, which is read; MeViS:
    ``<split>/meta_expressions.json``; raw Ref-DAVIS: ``DAVIS/`` and ``davis_text_annotations/``; RefCOCO: the
    dataset's folder; plain videos: at least one entry).

    Raises:
        IngestError: naming the source (and the expected index file) and what is wrong.
    """
    from sgmg.data.datasets.davis import RawDavisReader
    from sgmg.data.datasets.ytvos import RefYouTubeVOSReader
    from sgmg.data.io import DataError

    src = cfg.source
    try:
        if not storage.exists(src):
            raise IngestError(f"--source {src} does not exist; give the dataset root (a folder, file:// or s3:// URI)")
        entries = storage.list_dir(src)
        if not entries:
            raise IngestError(f"--source {src} is empty; give the dataset root of format {cfg.format}")
        reader = open_reader(cfg.format, src, cfg.split)
        index: str | None = None
        if isinstance(reader, RefYouTubeVOSReader):
            index = reader.expressions_path()
        elif cfg.format == "mevis":
            index = f"{cfg.split}/meta_expressions.json"
        elif cfg.format == "refcoco":
            index = reader.name
        if index is not None:
            if not reader.source.exists(index):
                raise IngestError(f"--source {src} has no {reader.source.describe(index)} for format {cfg.format}")
            if index.endswith(".json"):
                reader.source.read_bytes(index)  # readable (permissions, S3 credentials)
        elif cfg.format == "ref-davis" and not isinstance(reader, RawDavisReader):
            raise IngestError(f"--source {src} is not a Ref-DAVIS17 folder")  # unreachable: open_dataset picks one
    except (DataError, ValueError, OSError) as err:  # StorageError is an OSError; so are unclassified S3 errors
        raise IngestError(f"--source {src} (format {cfg.format}, split {cfg.split}): {err}") from None


# ----------------------------------------------------------------------------------------------------------------------
# The job


@dataclass
class IngestSummary:
    """What :func:`run_ingest` did."""

    manifest: dict
    written: int
    skipped: int
    bad: int
    seconds: float


def _load_plan(cfg: IngestConfig) -> dict | None:
    uri = storage.join(cfg.dest, PLAN_NAME)
    if not storage.is_file(uri):
        return None
    plan = json.loads(storage.read_bytes(uri))
    if plan.get("config_hash") != cfg.config_hash():
        raise IngestError(
            f"{cfg.dest} already holds an ingest with a different configuration ({plan.get('config')} vs "
            f"{cfg.content_key()}); use a new --dest, or delete {cfg.dest} to start over"
        )
    return plan


def _progress(done: int, total: int, rows: int, bad: int, t0: float, printer: Callable[[str], None]) -> None:
    dt = max(time.perf_counter() - t0, 1e-9)
    printer(f"[ingest] shards {done}/{total} | videos {rows} ({rows / dt:.1f}/s) | bad {bad} | {dt:.0f}s")


def run_ingest(
    cfg: IngestConfig,
    parallelism: int | None = None,
    num_cpus: float = 1.0,
    printer: Callable[[str], None] = print,
) -> IngestSummary:
    """Run the ingest job on the current Ray cluster (``ray.init`` must have been called).

    The steps: return at once when ``dest`` already holds the manifest of this config; list the source's videos;
    write the plan (or check the one a previous run wrote); keep the shards already committed; build the others on
    Ray Data; write the quarantine report and, unless too many videos are bad, the manifest.

    Args:
        cfg: what to ingest and how.
        parallelism: number of concurrent shard tasks (default: the cluster's CPUs / ``num_cpus``).
        num_cpus: CPUs reserved per shard task.
        printer: where progress lines go.

    Returns:
        An :class:`IngestSummary`; its ``manifest`` is what was written to ``manifest.json``.

    Raises:
        IngestError: conflicting destination, source changed since the plan, or too many bad videos (after the
            quarantine report is written; no manifest then).
        StorageError / DataError: the source or destination cannot be read or written.
    """
    t0 = time.perf_counter()
    done = _completed_ingest(cfg, printer)
    if done is not None:
        return done
    by_id = _list_videos(cfg)
    plan = _ensure_plan(cfg, by_id)
    count = len(plan["shards"])
    results, todo = _committed_shards(cfg, plan, by_id, printer)
    if todo:
        _build_shards(cfg, todo, results, count, parallelism, num_cpus, printer)
    ordered = _ordered_results(results, count)
    quarantine = _write_quarantine(cfg, ordered, len(by_id))
    manifest = _write_manifest(cfg, ordered, len(by_id), len(quarantine))
    written = sum(1 for r in ordered if not r.skipped)
    dt = time.perf_counter() - t0
    printer(
        f"[ingest] done: {count} shards ({written} written, {count - written} kept), {manifest['num_rows']} videos, "
        f"{manifest['num_samples']} samples, {len(quarantine)} quarantined, {dt:.1f}s -> "
        f"{storage.join(cfg.dest, ingested.MANIFEST_NAME)}"
    )
    return IngestSummary(manifest, written, count - written, len(quarantine), dt)


def _completed_ingest(cfg: IngestConfig, printer: Callable[[str], None]) -> IngestSummary | None:
    """The summary of a finished ingest of this config at ``cfg.dest`` (nothing to do), or None when there is none.

    Raises:
        IngestError: ``cfg.dest`` holds the manifest of a different configuration.
    """
    manifest_uri = storage.join(cfg.dest, ingested.MANIFEST_NAME)
    if not storage.is_file(manifest_uri):
        return None
    manifest = json.loads(storage.read_bytes(manifest_uri))
    if manifest.get("config_hash") == cfg.config_hash():
        printer(f"[ingest] {cfg.dest} is already complete ({len(manifest['shards'])} shards); nothing to do")
        return IngestSummary(manifest, 0, len(manifest["shards"]), manifest["num_bad"], 0.0)
    raise IngestError(f"{manifest_uri} was written with a different configuration; use a new --dest or delete it")


def _list_videos(cfg: IngestConfig) -> dict[str, VideoRecord]:
    """The source's videos to ingest by id, sorted by id and cut to ``cfg.limit``.

    Raises:
        IngestError: no videos, or an id that is not unique.
    """
    reader = open_reader(cfg.format, cfg.source, cfg.split)
    records = sorted(reader.list_videos(), key=lambda r: r.video_id)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    if not records:
        raise IngestError(f"no videos found in {cfg.source} (format {cfg.format}, split {cfg.split})")
    by_id = {r.video_id: r for r in records}
    if len(by_id) != len(records):
        raise IngestError(f"duplicate video ids in {cfg.source}; ids must be unique per split")
    return by_id


def _ensure_plan(cfg: IngestConfig, by_id: dict[str, VideoRecord]) -> dict:
    """The video -> shard plan: the one a previous run of this config wrote, or a new one, written before any shard.

    Raises:
        IngestError: the plan at ``cfg.dest`` is of another config, or of another set of videos than the source's now.
    """
    plan = _load_plan(cfg)
    if plan is None:
        plan = {
            "config": cfg.content_key(),
            "config_hash": cfg.config_hash(),
            "shards": plan_shards(list(by_id), cfg.shard_size),
        }
        storage.write_bytes(storage.join(cfg.dest, PLAN_NAME), json.dumps(plan, indent=1).encode())
        return plan
    planned = [v for s in plan["shards"] for v in s]
    if sorted(planned) != sorted(by_id):
        raise IngestError(
            f"the videos in {cfg.source} changed since {cfg.dest}/{PLAN_NAME} was written "
            f"({len(planned)} planned, {len(by_id)} now); use a new --dest"
        )
    return plan


def _committed_shards(
    cfg: IngestConfig, plan: dict, by_id: dict[str, VideoRecord], printer: Callable[[str], None]
) -> tuple[dict[int, ShardResult], list[dict]]:
    """Resume: the results of the shards of the plan already committed at ``cfg.dest`` (read back from their footers,
    after removing an interrupted run's partial files), and the rows of the shard tasks still to run.

    Raises:
        IngestError: a committed shard does not match the plan.
    """
    count = len(plan["shards"])
    chash = cfg.config_hash()
    results: dict[int, ShardResult] = {}
    stale = storage.remove_stale_temporaries(cfg.dest)
    if stale:
        printer(f"[ingest] removed {len(stale)} partial file(s) of an interrupted run: {', '.join(stale)}")
    existing = set(storage.list_dir(cfg.dest)) if storage.exists(cfg.dest) else set()
    todo = []
    for i, ids in enumerate(plan["shards"]):
        name = shard_name(i, count)
        if name in existing:
            meta = shards.read_shard_meta(storage.join(cfg.dest, name))
            if meta.get("config_hash") != chash or meta.get("video_ids") != ids:
                raise IngestError(f"{storage.join(cfg.dest, name)} does not match the plan; delete it and rerun")
            data_hash = hashlib.sha256(storage.read_bytes(storage.join(cfg.dest, name))).hexdigest()
            results[i] = ShardResult(
                i, name, meta["rows"], meta["samples"], data_hash, 0, ids, meta["quarantine"], skipped=True
            )
        else:
            todo.append({"index": i, "count": count, "records": pickle.dumps([by_id[v] for v in ids])})
    if results:
        printer(f"[ingest] resuming: {len(results)}/{count} shards already committed, {len(todo)} to write")
    return results, todo


def _build_shards(
    cfg: IngestConfig,
    todo: list[dict],
    results: dict[int, ShardResult],
    count: int,
    parallelism: int | None,
    num_cpus: float,
    printer: Callable[[str], None],
) -> None:
    """Build and commit the shards of ``todo`` on Ray Data (one :func:`shard_task` per shard), adding their results
    to ``results`` as they come, with a progress line each."""
    import ray

    rows_done = sum(r.rows for r in results.values())
    bad_done = sum(len(r.quarantine) for r in results.values())
    cpus = ray.cluster_resources().get("CPU", 1.0)
    size = max(1, min(len(todo), parallelism or int(cpus // num_cpus) or 1))
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(
        shard_task,
        fn_kwargs={"cfg": asdict(cfg)},
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=size),
        num_cpus=num_cpus,
    )
    t_run = time.perf_counter()
    for row in ds.iter_rows():
        r = ShardResult(**json.loads(row["result"]))
        results[r.index] = r
        rows_done += r.rows
        bad_done += len(r.quarantine)
        _progress(len(results), count, rows_done, bad_done, t_run, printer)


def _ordered_results(results: dict[int, ShardResult], count: int) -> list[ShardResult]:
    """The results of shards ``0 .. count - 1`` in order.

    Raises:
        IngestError: a shard was not produced.
    """
    missing = [i for i in range(count) if i not in results]
    if missing:
        raise IngestError(f"shards {missing} were not produced; rerun the same command to resume")
    return [results[i] for i in range(count)]


def _write_quarantine(cfg: IngestConfig, ordered: Sequence[ShardResult], n_videos: int) -> list[dict]:
    """Write ``quarantine.jsonl`` (every shard's bad videos) and return its entries.

    Raises:
        IngestError: the fraction of bad videos is above ``cfg.max_bad_fraction`` (after the report is written).
    """
    quarantine = [q for r in ordered for q in r.quarantine]
    storage.write_bytes(
        storage.join(cfg.dest, QUARANTINE_NAME),
        "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine).encode(),
    )
    frac = len(quarantine) / n_videos
    if frac > cfg.max_bad_fraction:
        raise IngestError(
            f"{len(quarantine)}/{n_videos} videos ({frac:.1%}) are bad, above --max-bad-fraction "
            f"{cfg.max_bad_fraction:.1%}; see {storage.join(cfg.dest, QUARANTINE_NAME)}. Fix or remove them, or raise "
            "the threshold, then rerun (committed shards are kept)"
        )
    return quarantine


def _write_manifest(cfg: IngestConfig, ordered: Sequence[ShardResult], n_videos: int, n_bad: int) -> dict:
    """Write ``manifest.json``, the last file of an ingest (its presence marks the ingest complete), and return it."""
    manifest = {
        "version": shards.SHARD_FORMAT_VERSION,
        "config": cfg.content_key(),
        "config_hash": cfg.config_hash(),
        "schema": shards.SHARD_SCHEMA.to_string(show_schema_metadata=False),
        "shards": [
            {"name": r.name, "rows": r.rows, "samples": r.samples, "sha256": r.sha256, "video_ids": r.video_ids}
            for r in ordered
        ],
        "num_videos": n_videos,
        "num_rows": sum(r.rows for r in ordered),
        "num_samples": sum(r.samples for r in ordered),
        "num_bad": n_bad,
        "quarantine": QUARANTINE_NAME,
    }
    storage.write_bytes(
        storage.join(cfg.dest, ingested.MANIFEST_NAME), json.dumps(manifest, indent=1, sort_keys=True).encode()
    )
    return manifest
