"""Benchmark on a CUDA GPU: eval frames/s and training clips/s of the Swin variants at the paper's sizes.

Run: ``.venv/bin/python tests/benchmarks/bench_gpu.py [--variants sgmg_video_swin_t,sgmg_video_swin_b] [--no-compile]``
on a machine with a CUDA device (one script, under 5 minutes on one H100/H200-class GPU). Without one it prints why
and exits 0 after writing ``{"skipped": ...}``, so CI and ``make bench`` on CPU machines pass through it.

- ``eval``: frames/s of an eval forward on 5 frames of 360 x 640 (the official inference size), random weights, one
  expression, for each variant in ``fp32`` (TF32 off), ``bf16`` (:mod:`sgmg.model.precision`: the Swin blocks and the
  encoder FFNs in bfloat16) and ``bf16 + torch.compile``. The paper's reference: 65 frames/s for SgMg Swin-T.
- ``train``: clips/s of a training step (forward, loss, backward, AdamW step; bf16 autocast as the training recipe's
  ``precision: auto`` on CUDA) of Swin-T on one 5-frame 360 x 640 clip (the paper's clip), with the backbone's
  gradient checkpointing off and on, and the peak GPU memory of each.

Writes ``bench_out/gpu.json`` (read by ``tests/benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CLIP = (5, 360, 640)  # frames, height, width: the official inference size and the paper's training clip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median/min/max seconds of ``fn`` over ``repeats`` synchronised calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs), "runs": repeats}


def _tokens(model, n: int = 1, length: int = 12):
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.text_encoder.model.config.vocab_size)
    ids = torch.randint(3, min(vocab, 30000), (n, length), generator=gen)
    return ids, torch.ones_like(ids)


def bench_eval(variant: str, clip: tuple[int, int, int], device: torch.device, compile_: bool, repeats: int):
    """Eval frames/s of ``variant`` on one ``clip`` in fp32, bf16 and (``compile_``) bf16 + ``torch.compile``."""
    from sgmg.model.precision import set_inference_precision
    from sgmg.zoo import build_model

    frames, height, width = clip
    torch.manual_seed(0)
    fp32 = build_model(variant).to(device).eval()
    video = torch.randn(1, frames, 3, height, width, device=device)
    ids, mask = (t.to(device) for t in _tokens(fp32))
    modes = {"fp32": fp32, "bf16": set_inference_precision(copy.deepcopy(fp32), "bf16")}
    if compile_:
        modes["bf16 + torch.compile"] = torch.compile(modes["bf16"], dynamic=False)
    rows = []
    for mode, model in modes.items():

        def run(model=model):
            with torch.inference_mode():
                model(video, ids, mask)

        start = time.perf_counter()
        run()  # first call: cuDNN autotuning, or the compilation
        first = time.perf_counter() - start
        t = _time(run, device, warmup=2, repeats=repeats)
        rows.append(
            {
                "case": f"{variant} eval 1x{frames}x{height}x{width} {mode}",
                "seconds": t,
                "frames_per_s": frames / t["median_s"],
                "first_call_s": first,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _train_batch(model, clip: tuple[int, int, int], device: torch.device):
    """One clip with one object (a box covering the middle third of every frame) and its expression."""
    from sgmg.data.schema import ClipBatch, VideoTarget

    frames, height, width = clip
    masks = torch.zeros(1, frames, height, width)
    masks[0, :, height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 1
    valid = torch.ones(1, frames, dtype=torch.bool)
    boxes = torch.tensor([0.5, 0.5, 1 / 3, 1 / 3]).expand(1, frames, 4).clone()
    ids, mask = _tokens(model)
    return ClipBatch(
        video=torch.randn(1, frames, 3, height, width),
        pad_mask=torch.zeros(1, height, width, dtype=torch.bool),
        input_ids=ids,
        attention_mask=mask,
        targets=[VideoTarget(masks, boxes, valid, (height, width))],
    ).to(device)


def bench_train(variant: str, clip: tuple[int, int, int], device: torch.device, repeats: int) -> list[dict]:
    """Training clips/s and peak memory of ``variant`` on one ``clip``, gradient checkpointing off and on."""
    from sgmg.loss.criterion import SgMgCriterion
    from sgmg.loss.matcher import InstanceSequenceMatcher
    from sgmg.train.step import NonFiniteGuard, train_step
    from sgmg.zoo import build_model

    rows = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(variant).to(device).train()
        model.set_gradient_checkpointing(checkpointing)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        criterion, guard = SgMgCriterion(matcher=InstanceSequenceMatcher()), NonFiniteGuard(100)
        batch = _train_batch(model, clip, device)
        amp = torch.bfloat16 if device.type == "cuda" else None

        def step(model=model, optimizer=optimizer, criterion=criterion, guard=guard, batch=batch, amp=amp):
            train_step(model, criterion, batch, optimizer, amp_dtype=amp, nonfinite=guard)

        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t = _time(step, device, warmup=2, repeats=repeats)
        rows.append(
            {
                "case": f"{variant} train step, 1 clip of {'x'.join(map(str, clip))}, "
                f"{'bf16 autocast' if amp else 'fp32'}, gradient checkpointing {'on' if checkpointing else 'off'}",
                "seconds": t,
                "clips_per_s": 1 / t["median_s"],
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del model, optimizer
        if cuda:
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, or write why it was skipped; returns 0 either way."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="sgmg_video_swin_t,sgmg_video_swin_b")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the bf16 + torch.compile rows")
    parser.add_argument("--sections", default="eval,train")
    parser.add_argument("--train-variant", default="sgmg_video_swin_t")
    parser.add_argument("--clip", default="5x360x640", help="frames x height x width (default: the paper's)")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only checks that the script runs")
    parser.add_argument("--out", default=str(ROOT / "bench_out"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    clip = tuple(int(x) for x in args.clip.split("x"))
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA device on this machine"
        (out / "gpu.json").write_text(json.dumps({"skipped": reason}, indent=1))
        print(f"bench_gpu: skipped ({reason}); wrote {out / 'gpu.json'}")
        return 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict = {"device": name, "torch": torch.__version__, "eval": [], "train": []}
    sections = {s.strip() for s in args.sections.split(",")}
    if "eval" in sections:
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            report["eval"] += bench_eval(variant, clip, device, not args.no_compile, args.repeats)
    if "train" in sections:
        report["train"] = bench_train(args.train_variant, clip, device, args.repeats)
    (out / "gpu.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
