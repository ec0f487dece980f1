"""Eval-forward latency of SgMg on CPU (2 threads).

Default: ``sgmg_video_swin_t`` (RoBERTa-base-sized text encoder, random weights) on one video of 3 frames at
192x256, the setting in which the official code took about 10.5 s on a 2-core CPU (measured outside the repo). Prints
the median of ``--runs`` timed runs after one warm-up.

    .venv/bin/python tests/benchmarks/bench_model_forward.py [--model sgmg_video_swin_t] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from sgmg.zoo import build_model, list_models


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sgmg_video_swin_t", choices=list_models())
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model)
    video = torch.randn(1, args.frames, 3, args.height, args.width)
    vocab = int(model.text_encoder.model.config.vocab_size)
    input_ids = torch.randint(3, vocab, (1, args.tokens))
    attention_mask = torch.ones(1, args.tokens, dtype=torch.long)
    times = []
    with torch.inference_mode():
        model(video, input_ids, attention_mask)  # warm-up
        for _ in range(args.runs):
            start = time.perf_counter()
            model(video, input_ids, attention_mask)
            times.append(time.perf_counter() - start)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{args.model} eval forward, 1x{args.frames}x3x{args.height}x{args.width}, {args.tokens} tokens, "
        f"{args.threads} threads: median {statistics.median(times):.3f} s over {args.runs} runs "
        f"(min {min(times):.3f} s, max {max(times):.3f} s; 1-min load average {load:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
