"""Frozen training configuration (optimiser, schedule, data, loop; the loss is :mod:`sgmg.loss.config`).

Defaults follow the official SgMg recipe (github.com/bo-miao/SgMg ``opts.py``) except where a field says otherwise.
``asdict(TrainConfig(...))`` is what checkpoints store and what sweeps override (``loss.weight_dice=3``). YAML files and
``key=value`` overrides are read by :mod:`sgmg.config_io`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sgmg.config_io import ConfigValueError, flatten, load_config, require
from sgmg.loss.config import LossConfig

__all__ = ["DataConfig", "LossConfig", "OptimConfig", "TrainConfig", "load_train_config"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]


OFFICIAL_EPOCH_MILESTONES = (3, 5)
"""Upstream's Ref-YouTube-VOS fine-tuning LR drops (epochs)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW parameter groups, LR schedule, LR scaling and gradient clipping.

    Parameter groups (first match wins, by substring of the parameter name): ``visual_encoder_names`` get
    ``lr_visual_encoder``, ``text_encoder_names`` get ``lr_text_encoder``, ``linear_proj_names`` (the deformable
    attention's sampling offsets and reference points) get ``lr * lr_linear_proj_mult``, the rest ``lr``.

    LR scaling: ``lr_scaling="linear"`` multiplies every LR by ``world_size / lr_reference_world_size``. The official
    scripts do this silently with the number of visible GPUs: ``/8`` when fine-tuning from pretrained weights and in
    image pretraining, ``/4`` when training from scratch; on their 2 GPUs that gave 2.5e-5 / 1.25e-5. To reproduce it
    set ``lr_scaling: linear`` and ``lr_reference_world_size: 8`` (or 4 from scratch). The default ``none`` uses the
    LRs as written.

    Attributes:
        lr: base LR (transformer, heads, fusion, refiner).
        lr_visual_encoder: LR of the visual encoder (``lr_backbone``).
        lr_text_encoder: LR of the text encoder (unused when it is frozen).
        lr_linear_proj_mult: multiplier of ``lr`` for ``linear_proj_names``.
        weight_decay: AdamW weight decay, applied to every parameter (as upstream).
        betas / eps: AdamW.
        visual_encoder_names / text_encoder_names / linear_proj_names: name substrings of the groups.
        lr_milestones: MultiStepLR milestones, in ``schedule_unit`` units. None: the official ``(3, 5)`` in epochs,
            and no drop in steps (epoch milestones read as steps would drop the LR 100x within the first steps).
        lr_gamma: LR factor at each milestone.
        schedule_unit: ``epoch`` (upstream: fine-tuning drops at epochs 3 and 5) or ``step`` (optimizer steps).
        lr_scaling: ``none`` or ``linear`` (by world size, see above).
        lr_reference_world_size: the world size at which the LRs are as written.
        clip_max_norm: gradient clipping max norm (0 disables clipping; the norm is still reported).
    """

    lr: float = 1e-4
    lr_visual_encoder: float = 5e-5
    lr_text_encoder: float = 1e-5
    lr_linear_proj_mult: float = 1.0
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    visual_encoder_names: tuple[str, ...] = ("visual_encoder.",)
    text_encoder_names: tuple[str, ...] = ("text_encoder.",)
    linear_proj_names: tuple[str, ...] = ("sampling_offsets", "reference_points")
    lr_milestones: tuple[int, ...] | None = None
    lr_gamma: float = 0.1
    schedule_unit: Literal["epoch", "step"] = "epoch"
    lr_scaling: Literal["none", "linear"] = "none"
    lr_reference_world_size: int = 8
    clip_max_norm: float = 0.1

    @property
    def milestones(self) -> tuple[int, ...]:
        """``lr_milestones``, or the default of ``schedule_unit`` when it is None."""
        if self.lr_milestones is not None:
            return tuple(self.lr_milestones)
        return OFFICIAL_EPOCH_MILESTONES if self.schedule_unit == "epoch" else ()

    def __post_init__(self) -> None:
        require("lr", self.lr, self.lr > 0, "a number > 0 (the base learning rate)")
        for name in ("lr_visual_encoder", "lr_text_encoder", "lr_linear_proj_mult", "weight_decay"):
            value = getattr(self, name)
            require(name, value, value >= 0, "a number >= 0")
        require("betas", self.betas, all(0 <= b < 1 for b in self.betas), "two AdamW betas in [0, 1)")
        require("eps", self.eps, self.eps > 0, "a number > 0")
        milestones = list(self.milestones)
        require(
            "lr_milestones",
            milestones,
            milestones == sorted(milestones) and all(m >= 1 for m in milestones),
            "increasing milestones >= 1",
        )
        require("lr_gamma", self.lr_gamma, 0 < self.lr_gamma <= 1, "a factor in (0, 1]")
        require(
            "lr_reference_world_size",
            self.lr_reference_world_size,
            self.lr_reference_world_size >= 1,
            "an integer >= 1",
        )
        require("clip_max_norm", self.clip_max_norm, self.clip_max_norm >= 0, "a number >= 0 (0 = no clipping)")


@dataclass(frozen=True)
class DataConfig:
    """What ``sgmg train --local`` reads.

    Attributes:
        root: dataset folder in the Ref-YouTube-VOS layout (e.g. one made by ``sgmg make-synthetic``).
        split: split to train on.
        num_frames: frames per training clip.
        augment: the official video training augmentation (scale jitter 288-512 short side, crops, flips,
            photometric distortion; capped at ``max_size``). False: a plain resize to ``size`` (quick CPU runs).
        size: short side of the plain resize (``augment=False``).
        max_size: cap on the longer side.
        tokenizer: tokenizer folder (see :func:`sgmg.data.tokenizer.load_tokenizer`); None uses the one the model's
            config records (``sgmg_tiny``: the MiniLM package's bert-base-uncased vocabulary).
        batch_size: clips per optimizer micro-step.
        expressions_per_clip: expressions trained on each clip: its own and up to ``expressions_per_clip - 1``
            expressions of other objects of the same video (:func:`sgmg.data.sampler.pick_referrals`), all over one
            visual encoding of the clip. 1: the official recipe. More contrasts the objects of a video for the same
            pixels, which is what teaches the sentence to pick the object (see ARCHITECTURE.md).
    """

    root: str = ""
    split: str = "train"
    num_frames: int = 5
    augment: bool = True
    size: int = 360
    max_size: int = 640
    tokenizer: str | None = None
    batch_size: int = 1
    expressions_per_clip: int = 1

    def __post_init__(self) -> None:
        for name in ("num_frames", "size", "max_size", "batch_size", "expressions_per_clip"):
            require(name, getattr(self, name), getattr(self, name) >= 1, "an integer >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Attributes:
        model: model variant name for ``sgmg.zoo.build_model``.
        model_overrides: nested overrides of the variant's ``SgMgConfig`` (e.g. ``{"text": {"freeze": False}}``;
            the text encoder is frozen in the official fine-tuning and in the variants' defaults).
        data: dataset and clip sampling.
        loss: matcher and loss weights.
        optim: optimizer, schedule and clipping.
        max_steps: optimizer steps to train for (the run ends there; resuming continues up to it).
        accum_steps: micro-batches per optimizer step (gradient accumulation).
        precision: ``auto`` (bf16 autocast on CUDA devices that support it, fp32 elsewhere), ``fp32``, ``bf16``, or
            ``fp16`` (CUDA only, with a GradScaler).
        max_nonfinite_in_a_row: a non-finite loss skips the optimizer step; this many in a row raise
            ``FloatingPointError``.
        init_from: checkpoint (this project's format) to start from, e.g. the image-pretraining result; ignored
            when resuming from ``output_dir``.
        reinit_score_heads: when starting from ``init_from``, re-initialise the score (class) heads, as the official
            fine-tuning does.
        output_dir: where checkpoints go (``step_000100/``...); the latest one there is resumed.
        checkpoint_every: optimizer steps between checkpoints (and one at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        log_every: optimizer steps between rate lines.
        seed: random seed.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
    """

    model: str = "sgmg_tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 1000
    accum_steps: int = 1
    precision: Precision = "auto"
    max_nonfinite_in_a_row: int = 5
    init_from: str | None = None
    reinit_score_heads: bool = True
    output_dir: str = "runs/train"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "accum_steps",
            "max_nonfinite_in_a_row",
            "checkpoint_every",
            "log_every",
            "keep_checkpoints",
        ):
            require(name, getattr(self, name), getattr(self, name) >= 1, "an integer >= 1")
        require("seed", self.seed, self.seed >= 0, "an integer >= 0")
        _check_model(self.model, self.model_overrides)


def _check_model(name: str, overrides: Mapping[str, Any]) -> None:
    """``model`` names a variant and ``model_overrides`` are fields of its config with valid values (checked here,
    before any process builds the model)."""
    from sgmg.config import replace_nested
    from sgmg.zoo import MODEL_CONFIGS, list_models

    require("model", name, name in MODEL_CONFIGS, f"one of {list_models()}")

    items = flatten(overrides)
    try:
        replace_nested(MODEL_CONFIGS[name], **items)
    except (TypeError, ValueError) as err:
        raise ConfigValueError(
            "model_overrides",
            dict(overrides),
            f"fields of the {name} model config (sgmg.config.SgMgConfig)",
            detail=f"invalid for model {name!r}: {err}",
        ) from None


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (optional) and dotted overrides into a :class:`TrainConfig` (see :func:`load_config`)."""
    return load_config(TrainConfig, path, overrides, "training config")
