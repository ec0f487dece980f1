"""``sgmg make-synthetic OUT --videos N --seed S [--frames F --size HxW]``: write a synthetic R-VOS dataset."""

from __future__ import annotations

import argparse
import sys
import time

from sgmg.data.synthetic import SyntheticConfig, write_synthetic_dataset


def parse_size(text: str) -> tuple[int, int]:
    """``"96x128"`` -> ``(96, 128)`` (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW, e.g. 96x128") from err
    return h, w


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.add_argument("out", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--videos", type=int, default=8, help="number of train videos (default 8)")
    parser.add_argument(
        "--valid-videos", type=int, default=None, help="number of valid videos (default: max(1, videos // 4))"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical bytes")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (default 8)")
    parser.add_argument("--size", type=parse_size, default=(96, 128), help="frame size HxW, even (default 96x128)")
    parser.add_argument("--expressions-per-object", type=int, default=3, help="expressions per object (default 3)")
    parser.add_argument("--no-mp4", action="store_true", help="skip the videos/<split>/*.mp4 copies")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    """Generate the dataset; 0 on success, 2 on bad arguments or an existing OUT."""
    valid = args.valid_videos if args.valid_videos is not None else max(1, args.videos // 4)
    try:
        config = SyntheticConfig(
            train_videos=args.videos,
            valid_videos=valid,
            frames=args.frames,
            height=args.size[0],
            width=args.size[1],
            seed=args.seed,
            expressions_per_object=args.expressions_per_object,
            mp4=not args.no_mp4,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.monotonic()

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            rate = done / max(time.monotonic() - start, 1e-9)
            print(
                f"\rmake-synthetic: {done}/{total} videos ({rate:.1f} videos/s)",
                end="\n" if done == total else "",
                file=sys.stderr,
                flush=True,
            )

    try:
        out = write_synthetic_dataset(args.out, config, overwrite=args.overwrite, progress=progress)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {config.train_videos} train + {config.valid_videos} valid videos to {out} "
        f"in {time.monotonic() - start:.1f} s"
    )
    return 0
