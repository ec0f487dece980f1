"""``sgmg predict VIDEO "sentence" ["sentence" ...] --checkpoint CKPT --out DIR``: masks (PNG) and an overlay video.

One sentence writes ``DIR/masks/<frame>.png``; several write ``DIR/<i>/masks/<frame>.png`` for the i-th (the visual
encoder runs once per window for all of them, as in the Serve endpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sgmg.data.tokenizer import load_tokenizer_for  # also imported from here by pipelines/demo_report.py


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgmg predict``."""
    parser.add_argument("video", help="a video file (.mp4, ...) or a folder of frames (.jpg/.png, sorted by name)")
    parser.add_argument(
        "text", nargs="+", help="the referring expression(s), e.g. 'the dog jumping over the fence' (one per argument)"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint in this project's format (folder or .safetensors file)")
    src.add_argument("--official", metavar="PTH", help="a released SgMg .pth checkpoint (needs --variant)")
    parser.add_argument("--variant", default="video_swin_t", help="variant of --official: video_swin_t|s|b")
    parser.add_argument(
        "--tokenizer",
        help="local folder (or hub name, if reachable) of the text encoder's tokenizer; "
        "default: the one recorded in the checkpoint's config",
    )
    parser.add_argument("--out", required=True, help="output folder: masks/<frame>.png, overlay.mp4, prediction.json")
    parser.add_argument("--window", type=int, default=36, help="frames per forward pass (bounds memory; default 36)")
    parser.add_argument(
        "--short-side", type=int, help="resize frames to this short side (default: the model variant's, 360)"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default 0.5)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="fp32: the official numerics (default); bf16: faster, the Swin blocks and encoder FFNs in bfloat16",
    )
    parser.add_argument("--no-overlay", action="store_true", help="skip the overlay video")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    """Run ``sgmg predict``."""
    blank = [t for t in args.text if not t.strip()]
    if blank:  # before anything is loaded or created
        print(
            f"error: the referring expression is empty ({blank[0]!r}); give the sentence that describes the object, "
            "e.g. 'the dog jumping over the fence'",
            file=sys.stderr,
        )
        return 2
    from sgmg.inference.predictor import RVOSPredictor
    from sgmg.inference.sources import FrameSource
    from sgmg.inference.writers import OverlayVideoWriter, write_mask_png

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(
            f"error: output folder {str(out)!r} is not empty; choose another --out or pass --overwrite", file=sys.stderr
        )
        return 2
    try:
        source = FrameSource.open(args.video)
        model = _load_model(args)
        tokenizer = load_tokenizer_for(model, args.tokenizer)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    predictor = RVOSPredictor(
        model,
        tokenizer,
        device=args.device,
        short_side=args.short_side,
        threshold=args.threshold,
        precision=args.precision,
    )
    texts = list(args.text)
    folders = [out] if len(texts) == 1 else [out / str(i) for i in range(len(texts))]
    writers = [
        None if args.no_overlay else OverlayVideoWriter(f / "overlay.mp4", source.fps, source.size) for f in folders
    ]
    scores: list[list[float]] = [[] for _ in texts]
    best_queries: list[list[int]] = [[] for _ in texts]
    start = time.perf_counter()
    input_ids, attention_mask = predictor.tokenize_many(texts)
    done = 0
    for first, frames in source.windows(args.window):
        masks, window_scores, best = predictor.segment_window(frames, input_ids, attention_mask)
        for e, folder in enumerate(folders):
            best_queries[e].append(int(best[e]))
            scores[e].extend(window_scores[e].tolist())
            for i, mask in enumerate(masks[e].cpu().numpy()):
                write_mask_png(folder / "masks" / f"{source.frame_names[first + i]}.png", mask)
                if writers[e] is not None:
                    writers[e].write(frames[i], mask)
        done += len(frames)
        rate = done / (time.perf_counter() - start)
        print(f"\r{done}/{len(source)} frames, {rate:.2f} frames/s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for writer in writers:
        if writer is not None:
            writer.close()
    seconds = round(time.perf_counter() - start, 3)
    for e, folder in enumerate(folders):
        summary = {
            "video": str(source.path),
            "text": texts[e],
            "frames": source.frame_names,
            "scores": scores[e],
            "best_query_per_window": best_queries[e],
            "window": args.window,
            "precision": args.precision,
            "seconds": seconds,
        }
        (folder / "prediction.json").write_text(json.dumps(summary, indent=1))
    where = ", ".join(str(f / "masks") for f in folders)
    print(f"wrote {done} masks per sentence to {where}" + ("" if args.no_overlay else " (and overlay.mp4 beside)"))
    return 0


def _load_model(args: argparse.Namespace):
    import sgmg

    if args.checkpoint:
        return sgmg.load_checkpoint(args.checkpoint)
    return sgmg.load_official_checkpoint(args.official, variant=args.variant)
