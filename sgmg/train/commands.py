"""``sgmg train``: ``--local`` trains in this process (no Ray); the Ray Train variant lives in ``pipelines.train``."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgmg train``."""
    parser.add_argument(
        "--local",
        action="store_true",
        help="train in this process, without Ray (config: TrainConfig fields); without it: a Ray Train job "
        "(pipelines.train_job.RayTrainJob fields: shards, num_workers, storage_path, train: {...}, tracking: {...})",
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="training config; optional")
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="Ray Train only: register the final checkpoint as a new version of the MLflow model NAME; it becomes "
        "models:/NAME@champion only if its val_jf beats the champion's on the same validation set",
    )
    parser.add_argument(
        "--summary",
        metavar="FILE.json",
        help="Ray Train only: write the result (metrics, checkpoint, MLflow run, registered version) to this JSON file",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. --local: data.root=data/synthetic max_steps=50 optim.lr=2e-5; "
        "Ray: shards=s3://b/shards num_workers=4 use_gpu=true train.max_steps=5000",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``sgmg train``; returns the exit code."""
    if not args.local:
        from pipelines.train import run as run_ray_train

        return int(run_ray_train(args) or 0)

    if args.register is not None:
        print("sgmg train: --register is for the Ray Train job (MLflow tracking); not with --local", file=sys.stderr)
        return 2
    from sgmg.train.config import load_train_config
    from sgmg.train.local import train_local

    try:
        cfg = load_train_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"sgmg train: {exc}", file=sys.stderr)
        return 2
    try:
        result = train_local(cfg, log=lambda line: print(line, flush=True))
    except FloatingPointError as exc:
        print(f"sgmg train: {exc}", file=sys.stderr)
        return 1
    print(
        f"done: {result.steps} steps in {result.seconds:.1f}s, last checkpoint {result.last_checkpoint}, "
        f"{result.nonfinite_total} non-finite steps skipped"
    )
    return 0
