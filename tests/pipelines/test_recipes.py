"""The paper's recipes as Ray Train job configs (pipelines/configs/): RefCOCO/+/g image pretraining (1-frame clips),
Ref-YouTube-VOS fine-tuning (5 frames) from that checkpoint, MeViS. Each loads with the paper's settings and its
training section runs one step on a tiny dataset of its format, on CPU, with the tiny model (the shapes and the
datasets' layouts are real; only the model size is not)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from tiny_formats import write_tiny_mevis, write_tiny_refcoco
from tiny_ytvos import write_tiny_ytvos

from pipelines import train as ray_train
from pipelines import train_job
from sgmg.train.local import train_local

CONFIGS = Path(ray_train.__file__).parent / "configs"


def one_step(job: train_job.RayTrainJob, root: Path, split: str, out: Path, init_from: str | None = None):
    """The job's training section, one optimizer step on ``root`` with ``sgmg_tiny`` on CPU."""
    overrides = {k: v for k, v in job.train.model_overrides.items() if k != "text"}
    text = {k: v for k, v in job.train.model_overrides.get("text", {}).items() if k != "pretrained"}  # offline
    cfg = dataclasses.replace(
        job.train,
        model="sgmg_tiny",
        model_overrides=overrides | ({"text": text} if text else {}),
        data=dataclasses.replace(job.train.data, root=str(root), split=split, max_size=96),
        init_from=init_from,
        max_steps=1,
        checkpoint_every=1,
        output_dir=str(out),
        device="cpu",
        precision="fp32",
    )
    result = train_local(cfg, log=lambda m: None)
    assert result.steps == 1 and result.last_metrics is not None and math.isfinite(result.last_metrics.loss)
    return result


@pytest.mark.integration  # three short training runs (about 15 s on 2 cores), not a unit test
def test_recipes_load_with_the_papers_settings_and_chain_on_tiny_data(tmp_path) -> None:
    pretrain = train_job.load_job(CONFIGS / "pretrain_refcoco.yaml")
    assert (pretrain.recipe, pretrain.train.data.num_frames, pretrain.train.data.batch_size) == ("image", 1, 2)
    assert pretrain.max_epochs == 11 and pretrain.train.optim.lr_milestones == (8, 10)
    assert pretrain.train.model_overrides["text"]["freeze"] is False  # the text encoder is trained in stage 1
    finetune = train_job.load_job(CONFIGS / "finetune_ytvos.yaml")
    assert (finetune.recipe, finetune.train.data.num_frames, finetune.train.data.batch_size) == ("video", 5, 1)
    assert finetune.max_epochs == 6 and finetune.train.optim.lr_milestones == (3, 5)
    assert finetune.train.init_from and finetune.train.reinit_score_heads and finetune.train.data.max_size == 640
    mevis = train_job.load_job(CONFIGS / "train_mevis.yaml")
    assert mevis.max_epochs == 3 and mevis.train.optim.lr_milestones == (1, 2)
    assert mevis.train.optim.lr_reference_world_size == 4  # from scratch: LRs x GPUs/4
    for job in (pretrain, finetune, mevis):
        assert job.max_failures == -1 and job.train.optim.lr_scaling == "linear"

    # stage 1 on RefCOCO/+/g together, stage 2 from its checkpoint on Ref-YouTube-VOS, MeViS from scratch
    stage1 = one_step(pretrain, write_tiny_refcoco(tmp_path / "coco"), "all/train", tmp_path / "pretrain")
    ytvos = tmp_path / "ytvos"
    write_tiny_ytvos(ytvos, n_videos=1, n_frames=6, size=(64, 96))
    one_step(finetune, ytvos, "train", tmp_path / "finetune", init_from=str(stage1.last_checkpoint))
    one_step(mevis, write_tiny_mevis(tmp_path / "mevis"), "train", tmp_path / "mevis-run")


def test_max_epochs_is_checked() -> None:
    with pytest.raises(ValueError, match="max_epochs: expected an integer >= 1, or null"):
        train_job.load_job(CONFIGS / "train_mevis.yaml", ["max_epochs=0"])
