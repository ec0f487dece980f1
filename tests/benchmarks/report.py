"""Collect the benchmarks' JSON files into ``bench_out/results.json`` and ``bench_out/results.md``.

Run: ``.venv/bin/python tests/benchmarks/report.py [--dir bench_out]`` (``make bench`` runs it last). Reads what the
benchmarks wrote (``model.json`` from ``bench_model.py``, ``serve.json`` and ``serve_forward.json`` from
``bench_serve.py``, ``stream.json`` from ``bench_stream.py --out``, ``train.json`` from ``bench_train.py --out``,
``gpu.json`` from ``bench_gpu.py``);
a missing file is a missing section, not an error. Every time is the median of its repeats with the min..max spread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SOURCES = ("model", "serve", "serve_forward", "stream", "train", "gpu")


def _ms(t: dict) -> str:
    return f"{t['median_ms']:.1f} ({t['min_ms']:.1f}..{t['max_ms']:.1f})"


def _model_tables(model: dict) -> list[str]:
    lines = [f"Device {model['device']}, {model['threads']} threads, torch {model['torch']}, median of "
             f"{model['repeats']} (min..max); 1-min load average {model['load_before']:.2f} before, "
             f"{model['load_after']:.2f} after.", ""]  # fmt: skip
    compared = [
        ("op", "Multi-scale deformable attention"),
        ("expressions", "Several expressions of one clip (per expression)"),
    ]
    for key, title in compared:
        if key not in model:
            continue
        lines += [
            f"### {title}",
            "",
            "| case | ours, ms | baseline, ms | baseline | speed-up |",
            "|---|---|---|---|---|",
        ]
        for row in model[key]:
            lines.append(
                f"| {row['case']} | {_ms(row['ours'])} | {_ms(row['baseline'])} | {row['baseline_name']} | "
                f"{row['speedup']:.2f}x |"
            )
        lines.append("")
    if "forward" in model:
        lines += [
            "### Eval forward",
            "",
            "| case | fp32 ms | bf16 ms | fp32 / bf16 on PyTorch ops (no C++ kernels), ms | frames/s fp32 / bf16 | "
            "bf16 mask pixels agreeing with fp32 |",
            "|---|---|---|---|---|---|",
        ]
        for r in model["forward"]:
            before = " / ".join(_ms(r[k]) if r.get(k) else "-" for k in ("pytorch_ops", "fast_pytorch_ops"))
            lines.append(
                f"| {r['case']} | {_ms(r['ours'])} | {_ms(r['fast'])} | {before} | {r['frames_per_s']:.2f} / "
                f"{r['fast_frames_per_s']:.2f} | {100 * r['fast_pixel_agreement']:.2f} % |"
            )
        lines.append("")
    if "agreement" in model:
        lines += [
            "### Fast mode (bf16) against exact (fp32)",
            "",
            "| model and clips | clips | mask IoU mean (min) | same best query | near ties | same best query "
            "outside near ties |",
            "|---|---|---|---|---|---|",
        ]
        for r in model["agreement"]:
            ties = "-" if r["near_ties"] is None else str(r["near_ties"])
            decisive = "-" if r["same_best_query_decisive"] is None else f"{100 * r['same_best_query_decisive']:.1f} %"
            same = "- (one query)" if r["same_best_query"] is None else f"{100 * r['same_best_query']:.1f} %"
            lines.append(
                f"| {r['case']} | {r['clips']} | {r['mean_iou']:.4f} ({r['min_iou']:.4f}) | {same} | {ties} | "
                f"{decisive} |"
            )
        lines.append("")
    if "train_step" in model:
        lines += ["### Training step", "", "| case | ms | clips/s |", "|---|---|---|"]
        lines += [f"| {r['case']} | {_ms(r['ours'])} | {r['clips_per_s']:.2f} |" for r in model["train_step"]]
        lines.append("")
    return lines


def _serve_tables(serve: dict | None, forward: dict | None) -> list[str]:
    lines = []
    if serve:
        lines += [f"Clip {serve['clip']}.", "", "| setting | req/s (spread) | p50 ms | p99 ms | windows/forward |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, r in serve["results"].items():
            lo, hi = r["rps_spread"]
            lines.append(
                f"| {name} | {r['rps_median']:.2f} ({lo:.2f}..{hi:.2f}) | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r.get('windows_per_forward', float('nan')):.2f} |"
            )
        lines.append("")
    if forward:
        lines += [f"Model replica alone ({forward['device']}, {forward['threads']} thread(s), windows of "
                  f"{forward['input']}): {forward['ms_per_window_b1']:.1f} ms a window one at a time, "
                  f"{forward['ms_per_window_b8']:.1f} ms in batches of 8 ({forward['ratio']:.2f}x).", ""]  # fmt: skip
    return lines


def _gpu_tables(gpu: dict) -> list[str]:
    if "skipped" in gpu:
        return [f"Skipped: {gpu['skipped']}.", ""]
    lines = [f"Device {gpu['device']}, torch {gpu['torch']}; median (min..max) seconds.", ""]
    if gpu.get("eval"):
        lines += ["| eval | s | frames/s | first call s |", "|---|---|---|---|"]
        for r in gpu["eval"]:
            t = r["seconds"]
            lines.append(
                f"| {r['case']} | {t['median_s']:.4f} ({t['min_s']:.4f}..{t['max_s']:.4f}) | "
                f"{r['frames_per_s']:.1f} | {r['first_call_s']:.1f} |"
            )
        lines.append("")
    if gpu.get("train"):
        lines += ["| training step | s | clips/s | peak GiB |", "|---|---|---|---|"]
        for r in gpu["train"]:
            t, peak = r["seconds"], r["peak_memory_gib"]
            lines.append(
                f"| {r['case']} | {t['median_s']:.3f} ({t['min_s']:.3f}..{t['max_s']:.3f}) | {r['clips_per_s']:.2f} | "
                f"{'-' if peak is None else f'{peak:.1f}'} |"
            )
        lines.append("")
    return lines


def render(results: dict) -> str:
    """The Markdown page of ``results`` (the merged JSON files, by source name)."""
    lines = ["# Benchmarks", "", "Written by `make bench` (`tests/benchmarks/report.py`).", ""]
    if "model" in results:
        lines += ["## Model (`bench_model.py`)", ""] + _model_tables(results["model"])
    if "serve" in results or "serve_forward" in results:
        lines += ["## Serve (`bench_serve.py`)", ""]
        lines += _serve_tables(results.get("serve"), results.get("serve_forward"))
    if "stream" in results:
        s = results["stream"]
        header = "| pipeline | Ray Data clips/s | DataLoader clips/s | ratio | raw decode clips/s |"
        lines += ["## Clip stream (`bench_stream.py`)", "", header, "|---|---|---|---|---|"]
        for key in ("augment", "decode_only"):
            if key in s:
                r = s[key]
                lines.append(
                    f"| {key} | {r['ray_clips_s']} | {r['baseline_clips_s']} | {r['ray_vs_baseline']}x | "
                    f"{r['limit_clips_s']} |"
                )
        lines.append("")
    if "train" in results:
        lines += ["## Ray Train (`bench_train.py`)", "", "```json", json.dumps(results["train"], indent=1), "```", ""]
    if "gpu" in results:
        lines += ["## GPU (`bench_gpu.py`)", ""] + _gpu_tables(results["gpu"])
    missing = [name for name in SOURCES if name not in results]
    if missing:
        lines += [f"Not measured in this run: {', '.join(f'`{m}.json`' for m in missing)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Read ``--dir``/*.json, write results.json and results.md there. Returns 0 (1 when nothing was found)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(Path(__file__).resolve().parents[2] / "bench_out"))
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    results = {
        name: json.loads((folder / f"{name}.json").read_text())
        for name in SOURCES
        if (folder / f"{name}.json").is_file()
    }
    if not results:
        print(f"no benchmark results in {folder}; run the benchmarks first (make bench)")
        return 1
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    (folder / "results.md").write_text(render(results))
    print(f"wrote {folder / 'results.json'} and {folder / 'results.md'} ({', '.join(results)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
