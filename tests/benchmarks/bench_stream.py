"""Benchmark: training clips/s delivered from ingested Parquet shards (Ray Data) vs per-frame JPEG files (DataLoader).

Run: ``.venv/bin/python tests/benchmarks/bench_stream.py [--videos 16 --frames 20 --height 720 --width 1280]``
(not part of ``make test``). On the same synthetic Ref-YouTube-VOS-layout data and machine it measures:

1. **baseline**: what the official code does: a ``torch.utils.data.DataLoader(num_workers=2)`` whose dataset opens
   every frame JPEG and mask PNG of a clip with PIL at source resolution, then applies the SgMg video augmentation
   (``sgmg.data.transforms.augment_video``);
2. **ray**: ``pipelines.stream.clip_dataset`` over the shards of ``sgmg ingest`` (JPEG at ``--max-side``), same clip
   sampler and the same augmentation, consumed with ``iter_batches`` (``prefetch_batches=4``);
3. **limit**: raw decode speed of the stored clip frames and masks (no augmentation), in 2 processes;

and the same three without augmentation (``recipe=none``: decode + clip sampling only). Every sample of an epoch is
drawn once (official anchors: one clip per 5 frames of each (video, expression)). Other processes share the CPU:
the script prints ``os.getloadavg()`` before and after, so read ratios (same conditions) rather than absolute rates.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

NUM_FRAMES = 5


# ------------------------------------------------------------------------------------------------ baseline (official)


class PerFrameJpegDataset:
    """One item per (video, expression, anchor): PIL-decode the clip's frames and masks, augment (official style)."""

    def __init__(self, root: str, samples: list[tuple], augment: bool, seed: int = 0) -> None:
        self.root = Path(root)
        self.samples = samples
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):  # noqa: ANN204 - a ClipSample or None
        from PIL import Image

        from sgmg.data.sampler import sample_clip_indices
        from sgmg.data.schema import ClipSample
        from sgmg.data.transforms import augment_video

        vid, frame_ids, exp_id, text, obj_ids, anchor = self.samples[i]
        rng = np.random.default_rng([self.seed, i])
        idx = sample_clip_indices(len(frame_ids), anchor, NUM_FRAMES, rng)
        frames, masks = [], []
        for j in idx:
            with Image.open(self.root / "train" / "JPEGImages" / vid / f"{frame_ids[j]}.jpg") as img:
                frames.append(np.asarray(img.convert("RGB")))
            with Image.open(self.root / "train" / "Annotations" / vid / f"{frame_ids[j]}.png") as m:
                labels = np.asarray(m)
            masks.append(np.stack([labels == o for o in obj_ids]))  # [O, H, W]
        clip = ClipSample(
            np.stack(frames), np.stack(masks, 1), text, vid, exp_id, [frame_ids[j] for j in idx], list(obj_ids)
        )
        return augment_video(clip, rng) if self.augment else clip


def _first(batch: list):  # noqa: ANN202 - collate that keeps samples as they are
    return batch


def run_baseline(root: str, samples: list[tuple], augment: bool, workers: int = 2) -> float:
    """clips/s of a DataLoader over per-frame files."""
    import torch.utils.data as tud

    loader = tud.DataLoader(
        PerFrameJpegDataset(root, samples, augment),
        batch_size=4,
        num_workers=workers,
        collate_fn=_first,
        prefetch_factor=4,
        persistent_workers=False,
    )
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader)
    assert n == len(samples)
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ ray data stream


def run_ray(dest: str, augment: bool, passes: int = 2) -> tuple[float, float, int]:
    """clips/s of ``clip_dataset`` consumed by ``iter_batches``: (first pass incl. start-up, best later pass, clips)."""
    from pipelines import stream

    cfg = stream.ClipConfig(num_frames=NUM_FRAMES, recipe="video" if augment else "none", seed=0)
    rates, n = [], 0
    for _ in range(passes):
        ds = stream.clip_dataset(dest, cfg, num_cpus=1)
        t0 = time.perf_counter()
        n = sum(len(b["video_id"]) for b in ds.iter_batches(batch_size=4, batch_format="numpy", prefetch_batches=4))
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], max(rates[1:] or rates), n


# ------------------------------------------------------------------------------------------------ decode limit


def _decode_rows(args: tuple[str, list[int]]) -> int:
    """Decode every anchored clip of the given shard rows (frames + masks, no augmentation); returns clips."""
    path, _ = args
    import pyarrow.parquet as pq

    from pipelines import shards
    from sgmg.data.sampler import clip_anchors, sample_clip_indices

    n = 0
    for row in pq.read_table(path).to_pylist():
        t = len(row["frame_ids"])
        for exp in shards.row_expressions(row):
            for a in clip_anchors(t, NUM_FRAMES):
                idx = sorted(set(sample_clip_indices(t, a, NUM_FRAMES, np.random.default_rng(a))))
                shards.decode_frames(row["frames"], idx)
                shards.row_masks(row, exp.obj_ids, idx)
                n += 1
    return n


def run_limit(dest: str, procs: int = 2) -> float:
    """clips/s of raw decoding of the stored clips, in ``procs`` processes."""
    shards = sorted(str(p) for p in Path(dest).glob("shard-*.parquet"))
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_decode_rows, [(shards[0], [])])  # warm the imports
        t0 = time.perf_counter()
        n = sum(pool.map(_decode_rows, [(s, []) for s in shards]))
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    """Generate data, ingest, run the three readers with and without augmentation, print a JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--max-side", type=int, default=640)
    p.add_argument("--workdir", default=None, help="keep data here (default: a temp folder)")
    p.add_argument("--out", default=None, help="write the JSON report here too")
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_stream_"))
    root, dest = work / "ytvos", work / "shards"
    load_before = os.getloadavg()

    from sgmg.data.synthetic import SyntheticConfig, write_synthetic_dataset

    if not root.exists():
        write_synthetic_dataset(
            root,
            SyntheticConfig(
                train_videos=args.videos,
                valid_videos=0,
                frames=args.frames,
                height=args.height,
                width=args.width,
                mp4=False,
            ),
        )
    from sgmg.data.datasets import open_dataset
    from sgmg.data.sampler import clip_anchors

    records = open_dataset("ref-youtube-vos", str(root), "train").list_videos()
    samples = [
        (r.video_id, list(r.frame_ids), e.exp_id, e.text, e.obj_ids, a)
        for r in records
        for e in r.expressions
        for a in clip_anchors(len(r.frame_ids), NUM_FRAMES)
    ]

    import ray

    from pipelines import ingest

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        cfg = ingest.IngestConfig(source=str(root), dest=str(dest), max_side=args.max_side, shard_size=2)
        ingest.run_ingest(cfg, printer=lambda m: None)
        ingest_s = time.perf_counter() - t0
        report: dict = {
            "videos": len(records),
            "frames_per_video": args.frames,
            "source_size": [args.height, args.width],
            "stored_max_side": args.max_side,
            "clips_per_epoch": len(samples),
            "ingest_s": round(ingest_s, 1),
            "cpu_count": os.cpu_count(),
        }
        for augment in (True, False):
            key = "augment" if augment else "decode_only"
            base = run_baseline(str(root), samples, augment)
            cold, warm, n = run_ray(str(dest), augment)
            assert n == len(samples), (n, len(samples))
            limit = run_limit(str(dest))
            report[key] = {
                "baseline_clips_s": round(base, 2),
                "ray_clips_s_first_pass": round(cold, 2),
                "ray_clips_s": round(warm, 2),
                "limit_clips_s": round(limit, 2),
                "ray_vs_baseline": round(warm / base, 2),
                "ray_vs_limit": round(warm / limit, 2),
            }
            print(key, json.dumps(report[key]), flush=True)
    finally:
        ray.shutdown()
    report["loadavg_before"] = [round(x, 2) for x in load_before]
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
