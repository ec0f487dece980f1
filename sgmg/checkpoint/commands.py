"""``sgmg convert``: turn a released SgMg ``.pth`` (github.com/bo-miao/SgMg) into this project's checkpoint format."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``convert`` arguments."""
    parser.add_argument("input", help="official SgMg checkpoint (.pth with a 'model' state dict)")
    parser.add_argument("output", help="output directory, or NAME.safetensors (NAME.json is written next to it)")
    parser.add_argument(
        "--variant",
        default="video_swin_t",
        choices=["video_swin_t", "video_swin_s", "video_swin_b"],
        help="backbone of the checkpoint (default: video_swin_t)",
    )


def run(args: argparse.Namespace) -> int:
    """Convert; returns 0 on success, 1 on a bad input (message on stderr)."""
    from sgmg.checkpoint.convert_official import load_official_checkpoint
    from sgmg.checkpoint.io import save_checkpoint

    try:
        model = load_official_checkpoint(args.input, variant=args.variant)
    except (FileNotFoundError, ValueError) as exc:
        print(f"sgmg convert: {exc}", file=sys.stderr)
        return 1
    out = save_checkpoint(model, args.output)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return 0
