"""Local training pieces: the clip stream over a dataset folder, and the CLI end to end."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from sgmg.train.checkpoint import checkpoint_dirs
from sgmg.train.config import DataConfig, TrainConfig
from sgmg.train.local import ClipStream


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sgmg.data.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("data") / "synth"
    cfg = SyntheticConfig(train_videos=2, valid_videos=1, frames=4, height=64, width=96, mp4=False)
    return write_synthetic_dataset(root, cfg)


class WordTokenizer:
    """Stand-in for a Hugging Face tokenizer: one id per word."""

    def __call__(self, texts: list[str], padding: str = "longest", **kwargs) -> dict[str, torch.Tensor]:
        ids = [[101] + [1000 + len(w) for w in t.split()] + [102] for t in texts]
        n = max(map(len, ids))
        return {
            "input_ids": torch.tensor([x + [0] * (n - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids]),
        }


def test_clip_stream_batches(synthetic_root: Path) -> None:
    cfg = TrainConfig(data=DataConfig(root=str(synthetic_root), num_frames=3, augment=False, size=48, batch_size=2))
    stream = ClipStream(cfg, WordTokenizer())
    assert len(stream) >= 1
    epoch, batch = next(stream.forever())
    assert epoch == 0
    b, t, c, h, w = batch.video.shape
    assert (b, t, c) == (2, 3, 3) and h % 32 == 0 and w % 32 == 0
    for tgt in batch.targets:
        assert tgt.masks.shape[1:] == (3, h, w) and tgt.valid.any()
        assert min(tgt.size) == 48
    again = next(ClipStream(cfg, WordTokenizer()).forever())[1]
    assert torch.equal(again.video, batch.video)  # deterministic in (seed, epoch)


def test_clip_stream_with_several_expressions_per_clip_trains(synthetic_root: Path) -> None:
    """``expressions_per_clip=2``: the same clips as with 1, each with an expression of another object of its video,
    one video row per clip and ``video_index``; a real training step of the tiny model takes such a batch."""
    from sgmg.data.tokenizer import load_tokenizer
    from sgmg.loss.criterion import build_criterion
    from sgmg.train.optim import build_optimizer
    from sgmg.train.step import NonFiniteGuard, train_step
    from sgmg.zoo import build_model

    data = DataConfig(root=str(synthetic_root), num_frames=2, augment=False, size=64, batch_size=2)
    torch.manual_seed(0)
    model = build_model("sgmg_tiny")
    tokenizer = load_tokenizer(model.config.text.tokenizer_source)
    one = next(ClipStream(TrainConfig(data=data), tokenizer).forever())[1]
    cfg = TrainConfig(data=dataclasses.replace(data, expressions_per_clip=2))
    batch = next(ClipStream(cfg, tokenizer).forever())[1]
    assert torch.equal(batch.video, one.video)  # the clips' own draws do not change
    assert batch.video_index.tolist() == [0, 0, 1, 1]  # synthetic videos have 2-4 objects
    assert [m["exp_id"] for m in batch.meta[::2]] == [m["exp_id"] for m in one.meta]
    assert all(a["obj_ids"] != b["obj_ids"] for a, b in zip(batch.meta[::2], batch.meta[1::2], strict=True))
    opt = build_optimizer(model, cfg.optim)
    metrics = train_step(model, build_criterion(cfg.loss), batch, opt, nonfinite=NonFiniteGuard(1))
    assert metrics.stepped and math.isfinite(metrics.loss)
    with pytest.raises(ValueError, match="expressions_per_clip"):
        DataConfig(expressions_per_clip=0)


def test_clip_stream_rejects_missing_root() -> None:
    with pytest.raises(ValueError, match="data.root is empty"):
        ClipStream(TrainConfig(), WordTokenizer())


@pytest.mark.integration
def test_cli_trains_on_a_dataset_folder_and_resumes(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    from sgmg.cli import main

    config = tmp_path / "local.yaml"
    config.write_text(
        f"data: {{root: {synthetic_root}, num_frames: 2, augment: false, size: 64, max_size: 96}}\n"
        "optim: {schedule_unit: step, lr_milestones: [100]}\n"
        f"max_steps: 1\nlog_every: 1\ndevice: cpu\noutput_dir: {tmp_path / 'run'}\n"
    )
    assert main(["train", "--local", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "step 1/1" in out and "step/s" in out and "done: 1 steps" in out
    assert main(["train", "--local", "--config", str(config), "max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 2/2" in out
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_0000001", "step_0000002"]
