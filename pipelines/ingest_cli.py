"""``sgmg ingest``: a raw dataset (local folder or s3://) -> Parquet shards + manifest, as a Ray Data job.

``configure`` only builds the argument parser (no Ray import); ``run`` starts or joins Ray (``RAY_ADDRESS`` when set,
otherwise a local cluster) and calls :func:`pipelines.ingest.run_ingest`. Settings can also come from a YAML file
(``--config pipelines/configs/ingest.yaml``); flags given on the command line win.

Exit codes: 0 done (or already complete), 1 failed (too many bad videos, conflicting destination, storage error),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

_FORMATS = ("ref-youtube-vos", "ref-davis", "refcoco", "mevis", "videos")
_DEFAULTS = {
    "split": "train",
    "max_side": 640,
    "shard_size": 32,
    "max_bad_fraction": 0.05,
    "frame_codec": "jpeg",
    "jpeg_quality": 90,
    "num_cpus": 1.0,
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``ingest`` arguments to ``parser``."""
    parser.add_argument("--source", help="dataset root: a folder, file:// or s3://bucket/prefix URI")
    parser.add_argument("--dest", help="output folder for shards and manifest: a folder, file:// or s3:// URI")
    parser.add_argument("--format", choices=_FORMATS, help="dataset format")
    parser.add_argument("--split", help=f"split to ingest (default {_DEFAULTS['split']})")
    parser.add_argument(
        "--max-side", type=int, help="resize so the longest side is at most this (default 640; 0 keeps)"
    )
    parser.add_argument("--shard-size", type=int, help="videos per Parquet shard (default 32)")
    parser.add_argument("--max-bad-fraction", type=float, help="fail above this fraction of bad videos (default 0.05)")
    parser.add_argument("--frame-codec", choices=("jpeg", "png"), help="frame encoding in the shards (default jpeg)")
    parser.add_argument("--jpeg-quality", type=int, help="JPEG quality 1..100 (default 90)")
    parser.add_argument("--limit", type=int, help="ingest only the first N videos (sorted by id)")
    parser.add_argument("--parallelism", type=int, help="concurrent shard tasks (default: cluster CPUs / --num-cpus)")
    parser.add_argument("--num-cpus", type=float, help="CPUs per shard task (default 1)")
    parser.add_argument("--config", help="YAML file with any of the settings above (snake_case keys)")


def _settings(args: argparse.Namespace) -> dict:
    settings = dict(_DEFAULTS)
    if args.config:
        import yaml

        with open(args.config, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping of settings, got {type(loaded).__name__}")
        known = set(_DEFAULTS) | {"source", "dest", "format", "limit", "parallelism"}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{args.config}: unknown setting(s) {unknown}; known: {sorted(known)}")
        settings.update(loaded)
    for key in (
        "source",
        "dest",
        "format",
        "split",
        "max_side",
        "shard_size",
        "max_bad_fraction",
        "frame_codec",
        "jpeg_quality",
        "limit",
        "parallelism",
        "num_cpus",
    ):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    missing = [k for k in ("source", "dest", "format") if not settings.get(k)]
    if missing:
        raise ValueError("missing " + ", ".join("--" + k for k in missing) + " (on the command line or in --config)")
    if settings["max_side"] in (0, None):
        settings["max_side"] = None
    return settings


def run(args: argparse.Namespace) -> int:
    """Run the ingest job; returns the exit code."""
    try:
        settings = _settings(args)
    except (OSError, ValueError) as err:
        print(f"sgmg ingest: {err}", file=sys.stderr)
        return 2

    from pipelines.ingest import IngestConfig, IngestError, check_source, run_ingest
    from pipelines.storage import StorageError

    parallelism = settings.pop("parallelism", None)
    num_cpus = float(settings.pop("num_cpus"))
    try:
        cfg = IngestConfig(**settings)
        check_source(cfg)  # before Ray starts (seconds): a missing source is reported at once
    except IngestError as err:
        print(f"sgmg ingest: {err}", file=sys.stderr)
        return 2

    from pipelines.cluster import ray_session

    try:
        with ray_session(include_dashboard=False, log_to_driver=False):
            run_ingest(cfg, parallelism=parallelism, num_cpus=num_cpus, printer=lambda m: print(m, flush=True))
    except (IngestError, StorageError) as err:
        print(f"sgmg ingest: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - DataError from the readers (missing/malformed metadata)
        if type(err).__name__ == "DataError":
            print(f"sgmg ingest: {err}", file=sys.stderr)
            return 1
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.ingest_cli ...`` (same as ``sgmg ingest ...``)."""
    parser = argparse.ArgumentParser(prog="sgmg ingest", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
