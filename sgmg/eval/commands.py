"""``sgmg evaluate --benchmark B --predictions DIR --ground-truth DIR [--out results.json]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgmg evaluate``."""
    from sgmg.eval.evaluate import BENCHMARKS

    parser.add_argument("--benchmark", required=True, choices=list(BENCHMARKS), help="which protocol to score with")
    parser.add_argument(
        "--predictions",
        required=True,
        help="predictions folder: ref-davis anno_<k>/<video>/<frame>.png; ref-youtube-vos "
        "[Annotations/]<video>/<exp_id>/<frame>.png; mevis <video>/<exp_id>/<frame>.png; refcoco <sample>.png",
    )
    parser.add_argument(
        "--ground-truth",
        required=True,
        help="ref-davis: DAVIS folder with Annotations_unsupervised/480p; ref-youtube-vos: dataset root with "
        "meta_expressions/<split>/ and <split>/Annotations; mevis: folder with meta_expressions.json and "
        "mask_dict.json; refcoco: COCO JSON file or folder of PNG masks",
    )
    parser.add_argument("--out", help="write the full results (metrics, per-item scores) to this JSON file")
    parser.add_argument("--split", default="valid", help="ref-youtube-vos: split folder name (default valid)")
    parser.add_argument("--videos", help="comma-separated videos to score (video benchmarks; default all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``sgmg evaluate``: print the metrics table, optionally write JSON; 2 on bad input."""
    from sgmg.eval.common import EvalInputError
    from sgmg.eval.evaluate import evaluate

    kwargs: dict[str, object] = {"progress": not args.quiet}
    if args.videos:
        if args.benchmark == "refcoco":
            print("error: --videos applies to video benchmarks, not refcoco", file=sys.stderr)
            return 2
        kwargs["videos"] = [v for v in args.videos.split(",") if v]
    if args.benchmark == "ref-youtube-vos":
        kwargs["split"] = args.split
    start = time.perf_counter()
    try:
        result = evaluate(args.benchmark, Path(args.predictions), Path(args.ground_truth), **kwargs)
    except EvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.format_table())
    runs = result.details.get("runs") if isinstance(result.details, dict) else None
    if isinstance(runs, dict) and len(runs) > 1:
        for name, metrics in runs.items():
            print(f"  {name}: " + "  ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
    print(f"scored in {time.perf_counter() - start:.1f} s")
    if args.out:
        path = result.write_json(args.out)
        print(f"wrote {path}")
    return 0
