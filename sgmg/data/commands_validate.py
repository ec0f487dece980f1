"""``sgmg validate-dataset PATH [--format F] [--split S ...]``: list every problem of a dataset, exit 1 if any."""

from __future__ import annotations

import argparse
import sys
import time

from sgmg.data.datasets import FORMATS
from sgmg.data.validate import validate_dataset


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.add_argument("path", help="dataset root folder (or file:// URI)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="dataset format (default: auto)")
    parser.add_argument(
        "--split",
        action="append",
        default=None,
        help="split to check (repeatable; default: every split present; refcoco: NAME/SPLIT)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    """Validate, print the problems and a summary; 0 when valid, 1 otherwise."""
    start = time.monotonic()

    def progress(split: str, done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 50 == 0):
            rate = done / max(time.monotonic() - start, 1e-9)
            print(
                f"\r[{split}] {done}/{total} videos ({rate:.1f}/s)",
                end="\n" if done == total else "",
                file=sys.stderr,
                flush=True,
            )

    report = validate_dataset(args.path, fmt=args.format, splits=args.split, progress=progress)
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    copies = f" (and {report.copies} mp4 copies of them)" if report.copies else ""
    print(
        f"{args.path}: format {report.format}, splits {', '.join(report.splits) or '-'}: {report.videos} videos"
        f"{copies}, {report.expressions} expressions checked: {status}"
    )
    return 0 if report.ok else 1
