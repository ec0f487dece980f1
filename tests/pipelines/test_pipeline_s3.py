"""End to end on a real S3-protocol server (moto, 127.0.0.1) and a real local Ray cluster.

A tiny Ref-YouTube-VOS-layout dataset with two corrupt videos is uploaded to one bucket, ingested by the Ray Data job
into another, then streamed to 2 TorchTrainer workers. Checks: every (video, expression) of the good videos arrives,
frames and masks equal the source at the resized resolution (frames are stored as PNG here, so exactly), the corrupt
videos are in the quarantine report and nowhere else, and an ingest killed half way and rerun gives byte-identical
shards and the same manifest as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle

from pipelines import ingest, shards, storage, stream

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules by name

N_VIDEOS = 8
CORRUPT_FRAME, BAD_MASK = "vid002", "vid005"
MAX_SIDE = 64  # source frames are 72x96 -> 48x64


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: hashed word ids, padded to the longest text."""

    def __call__(
        self,
        texts: list[str],
        padding: str = "longest",
        truncation: bool = False,
        max_length=None,  # noqa: ANN001
        return_tensors: str = "pt",
    ) -> dict:
        import torch

        ids = [[1 + (hash(w) % 1000) for w in t.split()] for t in texts]
        n = max(len(i) for i in ids)
        return {
            "input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
            "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids]),
        }


def _upload(local_root: str, uri: str) -> int:
    count = 0
    for path in sorted(Path(local_root).rglob("*")):
        if path.is_file():
            storage.write_bytes(storage.join(uri, path.relative_to(local_root).as_posix()), path.read_bytes())
            count += 1
    return count


@pytest.fixture(scope="module")
def s3_dataset(s3_server, tmp_path_factory) -> dict:
    """The tiny dataset, locally and uploaded to its own bucket."""
    from tiny_ytvos import write_tiny_ytvos

    local = tmp_path_factory.mktemp("ytvos") / "ytvos"
    write_tiny_ytvos(local, n_videos=N_VIDEOS, n_frames=5, corrupt_frame=CORRUPT_FRAME, bad_mask_size=BAD_MASK)
    bucket = s3_server.make_bucket("raw")
    uri = f"s3://{bucket}/ytvos"
    assert _upload(str(local), uri) > N_VIDEOS * 10
    return {"local": str(local), "uri": uri}


def _config(source: str, dest: str) -> ingest.IngestConfig:
    return ingest.IngestConfig(
        source=source,
        dest=dest,
        format="ref-youtube-vos",
        split="train",
        max_side=MAX_SIDE,
        shard_size=1,
        frame_codec="png",
        max_bad_fraction=0.3,
    )


@pytest.fixture(scope="module")
def ingested(ray_cluster, s3_server, s3_dataset) -> dict:
    """An uninterrupted ingest of the S3 dataset into a second bucket."""
    dest = f"s3://{s3_server.make_bucket('shards')}/ytvos-train"
    lines: list[str] = []
    summary = ingest.run_ingest(_config(s3_dataset["uri"], dest), parallelism=2, printer=lines.append)
    return {"dest": dest, "summary": summary, "lines": lines}


def test_ingest_quarantines_bad_videos_only(ingested, s3_dataset) -> None:
    manifest = ingested["summary"].manifest
    assert manifest["num_videos"] == N_VIDEOS and manifest["num_bad"] == 2
    assert len(manifest["shards"]) == N_VIDEOS
    assert any("shards 8/8" in line and "bad 2" in line for line in ingested["lines"])  # progress lines
    quarantine = [json.loads(x) for x in storage.read_bytes(f"{ingested['dest']}/quarantine.jsonl").splitlines()]
    assert sorted(q["video_id"] for q in quarantine) == [CORRUPT_FRAME, BAD_MASK]
    reasons = {q["video_id"]: q["reason"] for q in quarantine}
    assert "00005.jpg" in reasons[CORRUPT_FRAME]  # the unreadable frame is named
    assert "00000.png" in reasons[BAD_MASK] and "mask" in reasons[BAD_MASK]
    assert all(q["file"].startswith("s3://") for q in quarantine)

    stored = []
    for shard in manifest["shards"]:
        table = shards.read_shard(f"{ingested['dest']}/{shard['name']}")
        assert table.num_rows == shard["rows"]
        stored += table.column("video_id").to_pylist()
    good = [f"vid{i:03d}" for i in range(N_VIDEOS) if f"vid{i:03d}" not in (CORRUPT_FRAME, BAD_MASK)]
    assert sorted(stored) == good  # bad videos are nowhere in the shards


def test_stream_to_two_train_workers_delivers_every_sample_exactly(ingested, s3_dataset, tmp_path) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    from sgmg.data.datasets import open_dataset

    # the source at the resized resolution, read locally with the same reader
    reader = open_dataset("ref-youtube-vos", s3_dataset["local"], "train")
    expected = {}
    for rec in reader.list_videos():
        if rec.video_id in (CORRUPT_FRAME, BAD_MASK):
            continue
        video = reader.load_video(rec, max_side=MAX_SIDE)
        for exp in rec.expressions:
            s = video.sample(exp)
            expected[(rec.video_id, exp.exp_id)] = (s.frames, s.masks)
    assert expected and next(iter(expected.values()))[0].shape[1:3] == (48, 64)

    ds = stream.clip_dataset(
        ingested["dest"], stream.ClipConfig(num_frames=3, recipe="none", seed=7, anchored=False), num_cpus=0.5
    )
    out_dir = tmp_path / "seen"
    out_dir.mkdir()

    def train_fn(config: dict) -> None:
        import ray.train
        import torch

        from sgmg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        ctx = ray.train.get_context()
        shard = ray.train.get_dataset_shard("train")
        seen, bad = [], []
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        for batch in stream.iter_clip_batches(shard, batch_size=2, tokenizer=WordTokenizer(), prefetch_batches=2):
            assert batch.video.dim() == 5 and batch.input_ids.shape[0] == batch.video.shape[0]
            for i, meta in enumerate(batch.meta):
                key = (meta["video_id"], meta["exp_id"])
                seen.append(key)
                frames_exp, masks_exp = config["expected"][key]
                idx = meta["frame_indices"]
                h, w = meta["size"]
                video = batch.video[i, :, :, :h, :w]  # [T, 3, h, w]
                frames = ((video * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                masks = batch.targets[i].masks[:, :, :h, :w].bool().numpy()  # [O, T, h, w]
                if not (np.array_equal(frames, frames_exp[idx]) and np.array_equal(masks, masks_exp[:, idx])):
                    bad.append(key)
        Path(config["out"], f"rank{ctx.get_world_rank()}.json").write_text(json.dumps({"seen": seen, "bad": bad}))
        ray.train.report({"n": len(seen)})

    trainer = TorchTrainer(
        train_fn,
        train_loop_config={"expected": expected, "out": str(out_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name=f"stream-{time.time_ns()}", storage_path=str(tmp_path / "ray")),
        datasets={"train": ds},
    )
    trainer.fit()
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    assert len(results) == 2
    seen = [tuple(k) for r in results for k in r["seen"]]
    assert all(r["seen"] for r in results)  # both workers got data
    assert sorted(seen) == sorted(expected)  # every (video, expression) exactly once
    assert [k for r in results for k in r["bad"]] == []


def test_killed_ingest_resumes_to_identical_result(ingested, s3_server, s3_dataset, ray_cluster) -> None:
    import ray

    dest = f"s3://{s3_server.make_bucket('resume')}/ytvos-train"
    cfg = _config(s3_dataset["uri"], dest)
    cmd = [
        sys.executable,
        "-m",
        "pipelines.ingest_cli",
        "--source",
        cfg.source,
        "--dest",
        dest,
        "--format",
        cfg.format,
        "--max-side",
        str(MAX_SIDE),
        "--shard-size",
        "1",
        "--frame-codec",
        "png",
        "--max-bad-fraction",
        "0.3",
        "--parallelism",
        "1",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=Path(__file__).parents[2],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    committed: list[str] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            committed = [n for n in storage.list_dir(dest) if n.startswith("shard-")] if storage.exists(dest) else []
            if committed:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group we started, nothing else
        output = proc.communicate()[0].decode(errors="replace")
    assert committed, f"no shard was committed before the deadline; ingest output:\n{output}"
    after_kill = [n for n in storage.list_dir(dest) if n.startswith("shard-")]
    assert 0 < len(after_kill) < N_VIDEOS, f"kill came too late to test a resume: {after_kill}"
    assert not storage.exists(f"{dest}/manifest.json")

    lines: list[str] = []
    summary = ingest.run_ingest(cfg, parallelism=2, printer=lines.append)
    assert summary.skipped == len(after_kill) and summary.written == N_VIDEOS - len(after_kill)
    assert any("resuming" in line for line in lines)
    for got, want in zip(summary.manifest["shards"], ingested["summary"].manifest["shards"], strict=True):
        assert got == want, (
            shards.read_shard_meta(f"{dest}/{got['name']}"),
            shards.read_shard_meta(f"{ingested['dest']}/{want['name']}"),
        )
    assert summary.manifest == ingested["summary"].manifest  # same shards, rows, hashes, config
    assert storage.read_bytes(f"{dest}/quarantine.jsonl") == storage.read_bytes(f"{ingested['dest']}/quarantine.jsonl")
    for shard in summary.manifest["shards"]:
        assert storage.read_bytes(f"{dest}/{shard['name']}") == storage.read_bytes(
            f"{ingested['dest']}/{shard['name']}"
        )
    # and a third run is a no-op
    again = ingest.run_ingest(cfg, printer=lines.append)
    assert again.written == 0 and again.manifest == summary.manifest


def test_ingest_fails_above_bad_fraction_without_manifest(ray_cluster, s3_dataset, tmp_path) -> None:
    dest = str(tmp_path / "out")
    cfg = ingest.IngestConfig(
        source=s3_dataset["uri"], dest=dest, max_side=MAX_SIDE, shard_size=2, max_bad_fraction=0.1, limit=4
    )
    with pytest.raises(ingest.IngestError, match=r"1/4 videos \(25.0%\) are bad.*quarantine.jsonl"):
        ingest.run_ingest(cfg, parallelism=2, printer=lambda m: None)
    assert not (tmp_path / "out" / "manifest.json").exists()
    quarantine = (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()
    assert [json.loads(q)["video_id"] for q in quarantine] == [CORRUPT_FRAME]
    assert sorted(os.listdir(tmp_path / "out")) == [
        "_plan.json",
        "quarantine.jsonl",
        "shard-00000-of-00002.parquet",
        "shard-00001-of-00002.parquet",
    ]


def test_read_videos_gives_every_good_video_once(ingested) -> None:
    ds = stream.read_videos(ingested["dest"], columns=("video_id", "frame_ids"), videos_per_task=1)
    rows = ds.take_all()
    planned = sorted(v for s in ingested["summary"].manifest["shards"] for v in s["video_ids"])
    assert len(planned) == N_VIDEOS  # the plan lists every video; the quarantined ones have no row
    assert sorted(r["video_id"] for r in rows) == [v for v in planned if v not in (CORRUPT_FRAME, BAD_MASK)]
    assert set(rows[0]) == {"video_id", "frame_ids"}
