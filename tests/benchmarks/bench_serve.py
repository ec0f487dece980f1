"""Benchmark: the Serve endpoint's requests/s and latency, batching on vs off, at concurrency 1 and 8.

Run: ``.venv/bin/python tests/benchmarks/bench_serve.py [--requests 48 --frames 4 --height 96 --width 128]``
(not part of ``make test``). Two ``sgmg serve`` processes run side by side on the same ``sgmg_tiny`` checkpoint and
config, one with ``SgMgModel.user_config.max_batch_size=8`` (batching on) and one with ``max_batch_size=1`` (off);
the measurements alternate between them round by round, so both see the same machine. Each request is one clip of
``--frames`` frames (one window) and one sentence, sent over HTTP on 127.0.0.1 by the project's client from
``--concurrency`` threads. Writes ``bench_out/serve.json`` and prints a table.

Before the HTTP rounds it measures the model replica's part alone, in this process: one batched forward pass
(``RVOSPredictor.forward_windows``) over 8 windows of the request's shape against 8 passes over one window, with the
replica's thread count (``--threads``, 1 = its ``num_cpus``) on ``--device``: the most that batching can give when the
replica, not the HTTP path, is the bottleneck. ``--forward-only`` stops there (``--device cuda`` on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tests" / "pipelines"))


def _start(checkpoint: Path, port: int, batch: int, short_side: int, work: Path) -> subprocess.Popen:
    log = (work / f"serve-{port}.log").open("w")
    cmd = [sys.executable, "-m", "sgmg.cli", "serve", "--model", str(checkpoint), "--port", str(port)]
    cmd += [f"short_side={short_side}", f"SgMgModel.user_config.max_batch_size={batch}", "reload_interval_s=0"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sgmg serve on port {port} exited with {proc.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"sgmg serve on port {port} not ready")


def _round(url: str, video: Path, text: str, requests_n: int, concurrency: int) -> dict:
    import requests

    from pipelines.serve.client import segment

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def one(_: int) -> float:
        t = time.perf_counter()
        segment(url, video, text, session=session)
        return time.perf_counter() - t

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up
        t0 = time.perf_counter()
        latencies = list(pool.map(one, range(requests_n)))
        wall = time.perf_counter() - t0
    return {
        "rps": requests_n / wall,
        "p50_ms": 1000 * np.percentile(latencies, 50),
        "p99_ms": 1000 * np.percentile(latencies, 99),
    }


def forward_ratio(frames: int, height: int, width: int, short_side: int, device: str, threads: int,
                  batch: int = 8, repeats: int = 3) -> dict:  # fmt: skip
    """Per-window seconds of the replica's forward pass at batch 1 and at ``batch`` (best of ``repeats``,
    alternating)."""
    import torch

    import sgmg
    from sgmg.data.tokenizer import load_tokenizer
    from sgmg.inference.predictor import RVOSPredictor, input_size

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = sgmg.build_model("sgmg_tiny").eval().to(device)
    predictor = RVOSPredictor(model, load_tokenizer(model.config.text.tokenizer_source), device=device)
    h, w = input_size(height, width, short_side)
    best = {1: float("inf"), batch: float("inf")}
    for r in range(repeats + 1):
        for b in best:
            video = torch.randn(b, frames, 3, h, w, device=device)
            ids, mask = predictor.tokenize_many(["the bright square"] * b)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            predictor.forward_windows(video, ids, mask, torch.arange(b, device=device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r:  # the first round warms up
                best[b] = min(best[b], (time.perf_counter() - t) / b)
    return {"input": [frames, h, w], "device": device, "threads": threads,
            "ms_per_window_b1": 1000 * best[1], f"ms_per_window_b{batch}": 1000 * best[batch],
            "ratio": best[1] / best[batch]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48, help="requests per round and setting")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "bench_out"))
    parser.add_argument("--device", default="cpu", help="device of the replica-only measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the replica-only measurement")
    parser.add_argument("--forward-only", action="store_true", help="only the replica-only measurement")
    args = parser.parse_args()

    fwd = forward_ratio(args.frames, args.height, args.width, args.short_side, args.device, args.threads)
    print(
        f"replica only, {fwd['input']} on {fwd['device']} ({fwd['threads']} thread(s)): "
        f"{fwd['ms_per_window_b1']:.1f} ms/window at batch 1, {fwd['ms_per_window_b8']:.1f} at batch 8 "
        f"({fwd['ratio']:.2f}x)"
    )
    if args.forward_only:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve_forward.json").write_text(json.dumps(fwd, indent=1))
        return 0

    from serve_fixtures import square_frames, write_mp4

    import sgmg

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    sgmg.save_checkpoint(sgmg.build_model("sgmg_tiny"), work / "checkpoint")
    video = write_mp4(work / "clip.mp4", square_frames(args.frames, args.height, args.width))
    ports = {"batching on": 8611, "batching off": 8612}
    procs = {
        name: _start(work / "checkpoint", port, 8 if name == "batching on" else 1, args.short_side, work)
        for name, port in ports.items()
    }
    results: dict[str, dict] = {name: {1: [], 8: []} for name in ports}
    try:
        for name, port in ports.items():
            _wait(port, procs[name])
        print(f"load before: {os.getloadavg()}")
        for r in range(args.rounds):
            for concurrency in (8, 1):
                for name, port in ports.items():
                    n = args.requests if concurrency == 8 else max(8, args.requests // 4)
                    res = _round(f"http://127.0.0.1:{port}", video, "the bright square", n, concurrency)
                    results[name][concurrency].append(res)
                    print(f"round {r} {name:12s} c={concurrency}: {res['rps']:.2f} req/s, p50 {res['p50_ms']:.0f} ms")
        print(f"load after: {os.getloadavg()}")
        import requests

        for name, port in ports.items():
            info = requests.get(f"http://127.0.0.1:{port}/v1/model", timeout=10).json()
            batch = info["windows"] / max(1, info["batches"])
            results[name]["mean_batch"] = batch
            print(f"{name}: {info['windows']} windows in {info['batches']} forward passes ({batch:.2f} per pass)")
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=60)

    summary = {}
    for name in ports:
        for c in (1, 8):
            runs = results[name][c]
            summary[f"{name}, c={c}"] = {
                "rps_median": statistics.median(x["rps"] for x in runs),
                "rps_spread": [min(x["rps"] for x in runs), max(x["rps"] for x in runs)],
                "p50_ms": statistics.median(x["p50_ms"] for x in runs),
                "p99_ms": statistics.median(x["p99_ms"] for x in runs),
                "windows_per_forward": results[name].get("mean_batch"),
            }
    gain = summary["batching on, c=8"]["rps_median"] / summary["batching off, c=8"]["rps_median"]
    clip = f"{args.frames} x {args.height} x {args.width} (model input short side {args.short_side})"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"clip": clip, "results": summary, "batching_gain_c8": gain, "replica_only": fwd}
    (out / "serve.json").write_text(json.dumps(report, indent=1))
    print(f"\nclip {clip}, sgmg_tiny, {args.rounds} rounds (median, min-max)")
    print("| setting | requests/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for key, v in summary.items():
        lo, hi = v["rps_spread"]
        print(f"| {key} | {v['rps_median']:.2f} ({lo:.2f}-{hi:.2f}) | {v['p50_ms']:.0f} | {v['p99_ms']:.0f} |")
    print(f"batching gain at concurrency 8: {gain:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
