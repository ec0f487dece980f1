"""The benchmark suite's own pieces (fast): its deformable-attention baseline computes what the model's op computes,
and the report page renders every section from the JSON the benchmarks write."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from sgmg.model.ops.ms_deform_attn import ms_deform_attn

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_stacked_baseline_equals_the_models_op_forward_and_backward():
    bench = _load("bench_model")
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 8), (3, 4), (2, 2)]
    lq = sum(h * w for h, w in shapes)
    value = torch.randn(2, lq, 4, 8, generator=gen, requires_grad=True)
    locations = (torch.rand(2, 10, 4, 3, 4, 2, generator=gen) * 1.2 - 0.1).requires_grad_(True)
    weights = torch.rand(2, 10, 4, 3, 4, generator=gen).softmax(-1).requires_grad_(True)
    ours = ms_deform_attn(value, shapes, locations, weights)
    stacked = bench.stacked_ms_deform_attn(value, shapes, locations, weights)
    assert ours.shape == stacked.shape == (2, 10, 32)
    torch.testing.assert_close(ours, stacked, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(ours)
    for a, b in zip(
        torch.autograd.grad(ours, (value, locations, weights), grad),
        torch.autograd.grad(stacked, (value, locations, weights), grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _timing(ms: float) -> dict:
    return {"median_ms": ms, "min_ms": ms * 0.9, "max_ms": ms * 1.1, "runs": 3}


def test_report_renders_each_sections_rows_and_names_what_was_not_measured(tmp_path):
    report = _load("report")
    model = {
        "device": "cpu",
        "threads": 2,
        "torch": "2.x",
        "repeats": 3,
        "load_before": 0.5,
        "load_after": 0.7,
        "op": [
            {
                "case": "tiny 3x144x192 eval",
                "ours": _timing(5.0),
                "baseline": _timing(7.5),
                "baseline_name": "stack",
                "speedup": 1.5,
                "max_abs_diff": 1e-7,
            }
        ],
        "forward": [
            {
                "case": "sgmg_tiny 1x3x144x192",
                "ours": _timing(40.0),
                "fast": _timing(30.0),
                "pytorch_ops": _timing(50.0),
                "fast_pytorch_ops": _timing(45.0),
                "frames_per_s": 75.0,
                "fast_frames_per_s": 100.0,
                "fast_pixel_agreement": 0.9951,
            }
        ],
        "train_step": [{"case": "sgmg_tiny train step, 1 clip", "ours": _timing(190.0), "clips_per_s": 5.26}],
        "agreement": [
            {
                "case": "seeded Swin-T, 3x192x256",
                "clips": 16,
                "mean_iou": 0.9901,
                "min_iou": 0.9811,
                "same_best_query": 0.875,
                "near_ties": 2,
                "same_best_query_decisive": 1.0,
            },
            {
                "case": "trained",
                "clips": 132,
                "mean_iou": 0.999,
                "min_iou": 0.98,
                "same_best_query": None,
                "near_ties": None,
                "same_best_query_decisive": None,
            },
        ],
    }
    serve = {
        "clip": "4 x 96 x 128",
        "results": {"batching on, c=8": {"rps_median": 19.1, "rps_spread": [18.0, 20.0], "p50_ms": 400, "p99_ms": 483}},
    }
    (tmp_path / "model.json").write_text(json.dumps(model))
    (tmp_path / "serve.json").write_text(json.dumps(serve))
    (tmp_path / "gpu.json").write_text(json.dumps({"skipped": "no CUDA device on this machine"}))
    assert report.main(["--dir", str(tmp_path)]) == 0
    page = (tmp_path / "results.md").read_text()
    assert "| tiny 3x144x192 eval | 5.0 (4.5..5.5) | 7.5 (6.8..8.2) | stack | 1.50x |" in page
    assert (
        "| sgmg_tiny 1x3x144x192 | 40.0 (36.0..44.0) | 30.0 (27.0..33.0) | 50.0 (45.0..55.0) / 45.0 (40.5..49.5) "
        "| 75.00 / 100.00 | 99.51 % |" in page
    )
    assert "| seeded Swin-T, 3x192x256 | 16 | 0.9901 (0.9811) | 87.5 % | 2 | 100.0 % |" in page
    assert "| trained | 132 | 0.9990 (0.9800) | - (one query) | - | - |" in page
    assert "## GPU (`bench_gpu.py`)" in page and "Skipped: no CUDA device" in page
    assert "| batching on, c=8 | 19.10 (18.00..20.00) | 400 | 483 |" in page
    assert "`stream.json`" in page and "`train.json`" in page  # named as not measured
    merged = json.loads((tmp_path / "results.json").read_text())
    assert set(merged) == {"model", "serve", "gpu"}


def test_report_without_results_says_so(tmp_path, capsys):
    report = _load("report")
    assert report.main(["--dir", str(tmp_path)]) == 1
    assert "make bench" in capsys.readouterr().out


def test_gpu_benchmark_skips_cleanly_without_cuda_and_runs_end_to_end(tmp_path, monkeypatch):
    bench = _load("bench_gpu")
    report = _load("report")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "gpu.json").read_text()) == {"skipped": "no CUDA device on this machine"}
    # the same code path on the CPU at a toy size (a GPU session runs it at the paper's)
    argv = ["--device", "cpu", "--clip", "2x64x96", "--variants", "sgmg_tiny", "--train-variant", "sgmg_tiny"]
    assert bench.main([*argv, "--repeats", "1", "--no-compile", "--out", str(tmp_path)]) == 0
    gpu = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["case"].split()[-1] for r in gpu["eval"]] == ["fp32", "bf16"]
    assert [r["case"].endswith(f"checkpointing {s}") for r in gpu["train"] for s in ("off", "on")].count(True) == 2
    assert all(r["clips_per_s"] > 0 for r in gpu["train"])
    assert report.main(["--dir", str(tmp_path)]) == 0
    assert (
        "| sgmg_tiny train step, 1 clip of 2x64x96, fp32, gradient checkpointing on |"
        in (tmp_path / "results.md").read_text()
    )


def test_agreement_flags_are_checked_before_anything_runs(capsys, tmp_path: Path):
    bench = _load("bench_model")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--sections", "agreement", "--checkpoint", "ckpt", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--checkpoint needs --dataset" in capsys.readouterr().err
    assert not (tmp_path / "model.json").exists()


def test_agreement_summary_counts_near_ties_and_one_query_models():
    bench = _load("bench_model")
    clips = [
        {"iou": 0.99, "same_best_query": True, "score_gap": 0.01, "score_change": 0.001},
        {"iou": 0.60, "same_best_query": False, "score_gap": 0.0001, "score_change": 0.001},  # a near tie
    ]
    row = bench.summarise_agreement("case", clips)
    assert row["same_best_query"] == 0.5 and row["near_ties"] == 1 and row["same_best_query_decisive"] == 1.0
    assert row["mean_iou"] == pytest.approx(0.795) and row["min_iou"] == 0.6
    single = [{"iou": 1.0, "same_best_query": True, "score_gap": None, "score_change": 0.0}]
    row = bench.summarise_agreement("one query", single)
    assert row["same_best_query"] is None and row["near_ties"] is None
