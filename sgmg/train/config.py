"""Frozen training configuration (loss, optimiser, schedule, loop) and its YAML + dotted-override loader.

Defaults follow the official SgMg recipe (github.com/bo-miao/SgMg ``opts.py``) except where a field says otherwise.
``asdict(TrainConfig(...))`` is what checkpoints store and what sweeps override (``loss.weight_dice=3``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ConfigValueError(ValueError):
    """A bad config value, naming its dotted key, the value, what is expected and (once :func:`load_config` knows)
    where the value came from and how to fix it.

    Attributes:
        key: dotted key (``train.optim.lr``); a dataclass's own checks give the field name, :func:`from_dict`
            prefixes it with the enclosing sections.
        value: the bad value.
        expected: what would have been accepted.
        origin: where the value came from (``the command-line override 'train.optim.lr=nan'``, a YAML path).
        fix: how to fix it.
        detail: a message that replaces ``expected ..., got ...`` (unknown keys).
    """

    def __init__(
        self,
        key: str,
        value: Any,
        expected: str,
        *,
        origin: str | None = None,
        fix: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.key, self.value, self.expected = key, value, expected
        self.origin, self.fix, self.detail = origin, fix, detail
        super().__init__(self.message())

    def message(self) -> str:
        """``key: expected X, got V (from ORIGIN); fix: FIX``."""
        text = f"{self.key}: {self.detail or f'expected {self.expected}, got {self.value!r}'}"
        if self.origin:
            text += f" (from {self.origin})"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text

    def located(self, *, key: str | None = None, origin: str | None = None, fix: str | None = None) -> ConfigValueError:
        """A copy with ``key``, ``origin`` and ``fix`` replaced where given."""
        return ConfigValueError(
            key or self.key,
            self.value,
            self.expected,
            origin=origin or self.origin,
            fix=fix or self.fix,
            detail=self.detail,
        )


def require(key: str, value: Any, ok: bool, expected: str) -> None:
    """Raise :class:`ConfigValueError` for ``key`` unless ``ok`` (the checks of the config dataclasses).

    Raises:
        ConfigValueError: ``ok`` is false.
    """
    if not ok:
        raise ConfigValueError(key, value, expected)


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
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _is_number(value):
                require(f.name, value, value >= 0, "a number >= 0 (loss weights and matcher costs)")
        require("focal_alpha", self.focal_alpha, 0 <= self.focal_alpha <= 1, "a probability in [0, 1]")


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
        require("lr", self.lr, self.lr > 0, "a number > 0 (the base learning rate)")
        for name in ("lr_visual_encoder", "lr_text_encoder", "lr_linear_proj_mult", "weight_decay"):
            value = getattr(self, name)
            require(name, value, value >= 0, "a number >= 0")
        require("betas", self.betas, all(0 <= b < 1 for b in self.betas), "two AdamW betas in [0, 1)")
        require("eps", self.eps, self.eps > 0, "a number > 0")
        milestones = list(self.lr_milestones)
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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"text": {"freeze": False}}`` -> ``{"text.freeze": False}`` (the form ``build_model`` takes)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type ``tp``.

    Raises:
        ConfigValueError: naming the dotted key ``where``.
    """
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigValueError(where, value, "a mapping")
        return _deep_copy(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigValueError(where, value, f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, prefix=where + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigValueError(where, value, f"one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        errors: list[ConfigValueError] = []
        for arg in args:
            try:
                return _convert(arg, value, where)
            except ConfigValueError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigValueError(where, value, " or ".join(e.expected for e in errors))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, Sequence) or isinstance(value, str):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigValueError(where, list(value), f"{len(args)} values")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigValueError(where, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigValueError(where, value, "an integer")
        return value
    if tp is float:
        number = None
        if not isinstance(value, bool) and isinstance(value, int | float | str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):  # YAML reads nan/inf overrides as strings, .nan as floats
            raise ConfigValueError(where, value, "a finite number")
        return number
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigValueError(where, value, "a string")
        return str(value)
    return value


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a (nested) mapping, validating names, types and values.

    Raises:
        ConfigValueError: naming the dotted key of an unknown field or a bad value.
        ValueError: a check of ``cls`` that names no field (the message is prefixed with ``prefix``).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        keys = [prefix + k for k in unknown]
        raise ConfigValueError(
            keys[0], data[unknown[0]], f"one of {names}", detail=f"unknown config key(s) {keys}; valid keys: {names}"
        )
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as err:
        raise err.located(key=prefix + err.key) from None
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
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({err})") from None
        node[parts[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _default_of(cls: type, key: str) -> Any:
    """The default value of dotted ``key`` in the dataclass ``cls`` (``dataclasses.MISSING`` when none is known)."""
    node: Any = cls
    value: Any = dataclasses.MISSING
    for part in key.split("."):
        part = part.split("[")[0]
        if not (dataclasses.is_dataclass(node) or dataclasses.is_dataclass(type(node))):
            return dataclasses.MISSING
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return dataclasses.MISSING
        f = fields[part]
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            return dataclasses.MISSING
        node = value
    return value


def _origin_and_fix(err: ConfigValueError, cls: type, path: Path | None, overrides: Sequence[str]) -> tuple[str, str]:
    """Where the bad value of ``err.key`` came from (the last override that set it or a section above it, else the
    YAML file, else a default) and how to fix it."""
    key = err.key.split("[")[0]
    default = _default_of(cls, key)
    example = ""
    if default is not dataclasses.MISSING and default not in (None, "") and default != err.value:
        shown = list(default) if isinstance(default, tuple) else default
        if not dataclasses.is_dataclass(shown) and not isinstance(shown, dict):
            example = f", e.g. {key}={shown} (the default)"
    for item in reversed(overrides):
        okey = item.partition("=")[0].strip()
        if key == okey or key.startswith(okey + ".") or okey.startswith(key + "."):
            if err.detail:
                return f"the command-line override {item!r}", "remove the override or correct its key"
            return f"the command-line override {item!r}", f"change the override to {err.expected}{example}"
    if path is not None:
        if err.detail:
            return str(path), f"remove or rename {key} in {path}"
        return str(path), f"correct {key} in {path} (or override it on the command line){example}"
    return "the defaults", f"set {key} on the command line ({key}=...) or in the YAML file{example}"


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = (), what: str = "config") -> Any:
    """Read a YAML file (optional) and dotted ``key=value`` overrides into the frozen dataclass ``cls``.

    Every value is checked (types, finite numbers, ranges) before anything runs; an error names the dotted key, the
    bad value, where it came from (the override ``key=value`` or the YAML file) and the fix.

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message says which ``what``).
        ConfigValueError: a bad value (its message as above).
        ValueError: a malformed file or override.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigValueError as err:
        origin, fix = _origin_and_fix(err, cls, path, overrides)
        raise err.located(origin=origin, fix=fix) from None
    except ValueError as err:
        where = f"{path}" if path is not None else "overrides"
        if overrides:
            where += f" + overrides {list(overrides)}" if path is not None else f" {list(overrides)}"
        raise ValueError(f"{where}: {err}") from None


def load_train_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (optional) and dotted overrides into a :class:`TrainConfig` (see :func:`load_config`)."""
    return load_config(TrainConfig, path, overrides, "training config")
