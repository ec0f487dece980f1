"""A finished ingest as its readers see it: the manifest that ``sgmg ingest`` writes last (shard names, row and sample
counts, content hashes, config; see :mod:`pipelines.ingest`), its identity (:func:`manifest_hash`) and the rows of its
shards by range."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence

from pipelines import shards, storage
from pipelines.ingest_config import IngestError

MANIFEST_NAME = "manifest.json"


def load_manifest(dest: str) -> dict:
    """The manifest of a completed ingest at ``dest``.

    Raises:
        IngestError: no manifest (the ingest did not finish: rerun it to resume).
    """
    uri = storage.join(dest, MANIFEST_NAME)
    if not storage.is_file(uri):
        raise IngestError(
            f"{uri} not found: {dest} is not a completed ingest; run or resume `sgmg ingest --dest {dest}`"
        )
    return json.loads(storage.read_bytes(uri))


def manifest_hash(dest: str) -> str:
    """The identity of the ingest at ``dest``: sha256 of its manifest's canonical JSON (sorted keys, no spaces), which
    lists every shard's content hash. Two validation sets with the same hash hold the same data, so scores on them
    compare (the registry's champion rule).

    Raises:
        IngestError: no manifest at ``dest``.
    """
    canonical = json.dumps(load_manifest(dest), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def row_ranges(
    dest: str, manifest: dict | None = None, rows_per_range: int = shards.ROW_GROUP_ROWS
) -> list[tuple[str, int, int]]:
    """``(shard uri, start, stop)`` ranges of at most ``rows_per_range`` videos covering every row of the ingest.

    The default follows the shards' row groups, so each range reads one row group.
    """
    manifest = manifest or load_manifest(dest)
    step = max(1, int(rows_per_range))
    return [
        (storage.join(dest, s["name"]), start, min(start + step, int(s["rows"])))
        for s in manifest["shards"]
        for start in range(0, int(s["rows"]), step)
    ]


def shard_uris(dest: str, manifest: dict | None = None) -> list[str]:
    """URIs of the shards listed in the manifest of ``dest``."""
    manifest = manifest or load_manifest(dest)
    return [storage.join(dest, s["name"]) for s in manifest["shards"]]


def expected_rows(manifest: dict) -> int:
    """Number of video rows the manifest promises."""
    return int(manifest["num_rows"])


def iter_rows(ranges: Iterable[tuple[str, int, int]], columns: Sequence[str] | None = None) -> Iterator[dict]:
    """The rows (dicts) of ``(shard uri, start, stop)`` ranges (:func:`row_ranges`), one range read at a time."""
    for uri, start, stop in ranges:
        yield from shards.read_shard_rows(str(uri), int(start), int(stop), columns).to_pylist()
