"""``sgmg ingest``: a raw dataset (local folder or s3://) -> Parquet shards + manifest, as a Ray Data job.

``configure`` only builds the argument parser (no Ray import); ``run`` reads the settings (:class:`IngestJob`, through
:func:`sgmg.config_io.load_config` as every command does), starts or joins Ray (``RAY_ADDRESS`` when set,
otherwise a local cluster) and calls :func:`pipelines.ingest.run_ingest`. Settings can also come from a YAML file
(``--config pipelines/configs/ingest.yaml``); flags given on the command line win.

Exit codes: 0 done (or already complete), 1 failed (too many bad videos, conflicting destination, storage error),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields

from pipelines.ingest_config import FORMATS, IngestConfig, IngestError

_FLAGS = (
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
)


@dataclass(frozen=True)
class IngestJob(IngestConfig):
    """``sgmg ingest`` settings: the :class:`~pipelines.ingest.IngestConfig` fields (its defaults; ``source``, ``dest``
    and ``format`` required, ``max_side`` 0 meaning None) plus how the job runs.

    Attributes:
        parallelism: concurrent shard tasks (None: cluster CPUs / ``num_cpus``).
        num_cpus: CPUs per shard task.
    """

    source: str = ""
    dest: str = ""
    format: str = ""
    parallelism: int | None = None
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        missing = [k for k in ("source", "dest", "format") if not getattr(self, k)]
        if missing:
            raise ValueError(
                "missing " + ", ".join("--" + k for k in missing) + " (on the command line or in --config)"
            )
        if self.max_side == 0:
            object.__setattr__(self, "max_side", None)
        super().__post_init__()

    def ingest_config(self) -> IngestConfig:
        """The shard settings alone."""
        return IngestConfig(**{f.name: getattr(self, f.name) for f in fields(IngestConfig)})


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``ingest`` arguments to ``parser``."""
    parser.add_argument("--source", help="dataset root: a folder, file:// or s3://bucket/prefix URI")
    parser.add_argument("--dest", help="output folder for shards and manifest: a folder, file:// or s3:// URI")
    parser.add_argument("--format", choices=FORMATS, help="dataset format")
    parser.add_argument("--split", help="split to ingest (default train)")
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


def load_job(args: argparse.Namespace) -> IngestJob:
    """The ``IngestJob`` of ``--config`` (optional) with the flags given on the command line applied over it.

    Raises:
        FileNotFoundError / ValueError: a missing file, a bad or missing value.
        pipelines.ingest.IngestError: a value :class:`~pipelines.ingest.IngestConfig` refuses.
    """
    from sgmg.config_io import load_config

    overrides = [f"{k}={json.dumps(getattr(args, k))}" for k in _FLAGS if getattr(args, k, None) is not None]
    return load_config(IngestJob, args.config, overrides, "ingest config")


def run(args: argparse.Namespace) -> int:
    """Run the ingest job; returns the exit code."""
    from pipelines.ingest import check_source, run_ingest
    from pipelines.storage import StorageError

    try:
        job = load_job(args)
        cfg = job.ingest_config()
        check_source(cfg)  # before Ray starts (seconds): a missing source is reported at once
    except (OSError, ValueError, IngestError) as err:
        print(f"sgmg ingest: {err}", file=sys.stderr)
        return 2

    from pipelines.cluster import ray_session

    try:
        with ray_session(include_dashboard=False, log_to_driver=False):
            run_ingest(cfg, parallelism=job.parallelism, num_cpus=job.num_cpus, printer=lambda m: print(m, flush=True))
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
