"""The ``sgmg`` command line.

Every subcommand lives in its own module, which exposes ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. Only the chosen subcommand's module is imported, so ``sgmg --help`` and the
library subcommands never import Ray, MLflow or boto3.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module implementing configure/run, one-line help). Pipeline commands live in ``pipelines``.
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("sgmg.inference.commands", "segment the object a sentence refers to in a video or frame folder"),
    "evaluate": ("sgmg.eval.commands", "score a predictions folder against ground truth (J, F, J&F, IoU)"),
    "make-synthetic": ("sgmg.data.commands_synthetic", "generate a synthetic R-VOS dataset (Ref-YouTube-VOS layout)"),
    "validate-dataset": ("sgmg.data.commands_validate", "report every problem in a dataset folder at once"),
    "convert": ("sgmg.checkpoint.commands", "convert an official SgMg .pth checkpoint to this project's format"),
    "train": (
        "sgmg.train.commands",
        "train SgMg (--local: one process, no Ray; otherwise Ray Train); rerunning a name resumes it",
    ),
    "ingest": ("pipelines.ingest_cli", "Ray Data job: raw dataset -> Parquet clip shards in object storage"),
    "sweep": (
        "pipelines.tune",
        "Ray Tune sweep of Ray Train jobs; registers the best, champion if it is better; rerunning a name resumes it",
    ),
    "registry": ("pipelines.registry_cli", "MLflow model registry: list, show, promote, rollback the champion"),
    "serve": ("pipelines.serve.cli", "Ray Serve HTTP endpoint for a registered model or a checkpoint"),
}


PIPELINE_PACKAGES = ("ray", "mlflow", "boto3", "pyarrow", "requests", "matplotlib", "multipart")
"""Top-level modules of the ``pipelines`` extra (``pip install 'sgmg[pipelines]'``), absent from a bare install."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Top-level parser; only ``command``'s module is imported to configure its sub-parser."""
    parser = argparse.ArgumentParser(
        prog="sgmg",
        description="SgMg referring video object segmentation: data, ingest, training, evaluation, inference.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sgmg`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        from sgmg.allocator import tune_malloc

        tune_malloc()  # every command allocates large tensors (sgmg.allocator)
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in PIPELINE_PACKAGES:
            raise
        print(
            f"error: sgmg {command} needs the pipeline dependencies ({exc.name} is not installed); "
            "install them with: pip install 'sgmg[pipelines]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
