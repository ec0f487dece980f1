"""Frozen training configuration (loss, optimiser, schedule, loop) and its YAML + dotted-override loader.

Defaults follow the official SgMg recipe (github.com/bo-miao/SgMg ``opts.py``) except where a field says otherwise.
``asdict(TrainConfig(...))`` is what checkpoints store and what sweeps override (``loss.weight_dice=3``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class LossConfig:
    """Matcher costs and loss weights (official defaults; aux layers use the same weights).

    Attributes:
        weight_score: score (class) sigmoid focal loss (``cls_loss_coef``).
        weight_bbox: box L1 loss (``bbox_loss_coef``).
        weight_giou: box GIoU loss (``giou_loss_coef``).
        weight_mask: mask sigmoid focal loss, full resolution and stride 2 (``mask_loss_coef``).
        weight_dice: mask dice loss, full resolution and stride 2 (``dice_loss_coef``).
        cost_class / cost_bbox / cost_giou / cost_mask / cost_dice: matcher cost weights (``set_cost_*``).
        focal_alpha / focal_gamma: focal loss parameters (losses and matcher costs).
        boxes_on_invalid_frames: the box losses include frames where the object is invisible (zero target boxes), as
            upstream does; False restricts them to visible frames.
        aux_loss: add the losses of every decoder layer (upstream), not just the last.
    """

    weight_score: float = 2.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    weight_mask: float = 2.0
    weight_dice: float = 5.0
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_mask: float = 2.0
    cost_dice: float = 5.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    boxes_on_invalid_frames: bool = True
    aux_loss: bool = True

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        negative = {k: v for k, v in values.items() if _is_number(v) and v < 0}
        if negative:
            raise ValueError(f"loss weights and costs must be >= 0, got {negative}")
        if not 0 <= self.focal_alpha <= 1:
            raise ValueError(f"loss.focal_alpha must be in [0, 1], got {self.focal_alpha}")


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
        lr_milestones: MultiStepLR milestones, in ``schedule_unit`` units.
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
    lr_milestones: tuple[int, ...] = (3, 5)
    lr_gamma: float = 0.1
    schedule_unit: Literal["epoch", "step"] = "epoch"
    lr_scaling: Literal["none", "linear"] = "none"
    lr_reference_world_size: int = 8
    clip_max_norm: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lr", "lr_visual_encoder", "lr_text_encoder", "lr_linear_proj_mult", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ValueError(f"optim.lr_milestones must be increasing, got {list(self.lr_milestones)}")
        if self.lr_reference_world_size < 1:
            raise ValueError(f"optim.lr_reference_world_size must be >= 1, got {self.lr_reference_world_size}")
        if self.clip_max_norm < 0:
            raise ValueError(f"optim.clip_max_norm must be >= 0 (0 = no clipping), got {self.clip_max_norm}")


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
    """

    root: str = ""
    split: str = "train"
    num_frames: int = 5
    augment: bool = True
    size: int = 360
    max_size: int = 640
    tokenizer: str | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        for name in ("num_frames", "size", "max_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")


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
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type ``tp``; errors name the dotted key."""
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return _deep_copy(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, Sequence) or isinstance(value, str):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a (nested) mapping, validating names and types.

    Raises:
        ValueError: naming the dotted key of an unknown field or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys: {names}")
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"{prefix or cls.__name__}: {err}") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a nested dict (values parsed as YAML); returns a new dict.

    Raises:
        ValueError: if an override is not of the form ``key=value``.
    """
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form dotted.key=value (e.g. optim.lr=2e-5)")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = (), what: str = "config") -> Any:
    """Read a YAML file (optional) and dotted ``key=value`` overrides into the frozen dataclass ``cls``.

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message says which ``what``).
        ValueError: naming the file (or "overrides") and the dotted key of a bad value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ValueError as err:
        where = f"{path}" if path is not None else "overrides"
        raise ValueError(f"{where}: {err}") from None


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (optional) and dotted overrides into a :class:`TrainConfig` (see :func:`load_config`)."""
    return load_config(TrainConfig, path, overrides, "training config")
