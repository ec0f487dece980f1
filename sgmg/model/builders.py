"""Builders: the only place that reads :mod:`sgmg.config` dataclasses and turns them into modules.

SgMg: Miao et al., ICCV 2023 (github.com/bo-miao/SgMg).
"""

from __future__ import annotations

from torch import nn

from sgmg.config import SgMgConfig
from sgmg.model.deformable_transformer import DeformableTransformer
from sgmg.model.fusion import SpectralFilterBlock, SpectrumGuidedFusion, TextCrossAttention
from sgmg.model.mask_head import ConditionalMaskHead
from sgmg.model.multi_granularity_refiner import MultiGranularityRefiner
from sgmg.model.ops.linear import use_inference_linear
from sgmg.model.sgmg import SgMg
from sgmg.model.text_encoder import TextEncoder, TextProjection, build_text_model
from sgmg.model.visual_encoder import VideoSwinTransformer, load_kinetics_weights


def build_visual_encoder(config: SgMgConfig) -> VideoSwinTransformer:
    """Video Swin from ``config.visual``, loading Kinetics weights when ``pretrained_path`` is set."""
    v = config.visual
    encoder = VideoSwinTransformer(
        embed_dim=v.embed_dim,
        depths=tuple(v.depths),
        num_heads=tuple(v.num_heads),
        patch_size=tuple(v.patch_size),
        window_size=tuple(v.window_size),
        mlp_ratio=v.mlp_ratio,
        drop_path_rate=v.drop_path_rate,
    )
    if v.pretrained_path:
        load_kinetics_weights(encoder, v.pretrained_path)
    return encoder


def build_sgmg(config: SgMgConfig, *, load_pretrained: bool = True) -> SgMg:
    """Build an :class:`SgMg` (train mode, like any fresh ``nn.Module``).

    Args:
        config: the model configuration.
        load_pretrained: read pretrained weights named in the config (Kinetics Video Swin, a pretrained text
            encoder). False builds every part at random init (used when a checkpoint provides all weights).
    """
    if not load_pretrained:
        config = _without_pretrained(config)
    dim = config.transformer.hidden_dim
    tcfg = config.transformer
    text_model = build_text_model(name=config.text.name, pretrained=config.text.pretrained, arch=config.text.arch)
    text_encoder = TextEncoder(
        model=text_model,
        freeze=config.text.freeze,
        pooling=config.text.sentence_pooling,
        frozen_dropout=config.text.frozen_dropout,
        cache_size=config.text.feature_cache,
    )
    sigma = config.fusion.sigma
    fusion = SpectrumGuidedFusion(
        pre=nn.ModuleList(SpectralFilterBlock(channels=dim, sigma=sigma) for _ in range(tcfg.num_feature_levels)),
        post=nn.ModuleList(SpectralFilterBlock(channels=dim, sigma=sigma) for _ in range(tcfg.num_feature_levels)),
        cross_attn=TextCrossAttention(dim=dim, num_heads=config.fusion.num_heads),
    )
    transformer = DeformableTransformer(
        dim=dim,
        num_heads=tcfg.num_heads,
        enc_layers=tcfg.enc_layers,
        dec_layers=tcfg.dec_layers,
        ffn_dim=tcfg.dim_feedforward,
        dropout=tcfg.dropout,
        num_levels=tcfg.num_feature_levels,
        enc_points=tcfg.enc_points,
        dec_points=tcfg.dec_points,
    )
    mh = config.mask_head
    channels = list(config.visual.channels)
    model = SgMg(
        visual_encoder=build_visual_encoder(config),
        visual_channels=channels,
        text_encoder=text_encoder,
        text_proj=TextProjection(in_dim=text_encoder.feat_dim, out_dim=dim, dropout=config.text_proj_dropout),
        sentence_proj=TextProjection(in_dim=text_encoder.feat_dim, out_dim=dim, dropout=config.text_proj_dropout),
        fusion=fusion,
        transformer=transformer,
        mask_head=ConditionalMaskHead(
            dim=dim, mask_channels=mh.mask_channels, num_layers=mh.controller_layers, rel_coord=mh.rel_coord
        ),
        refiner=MultiGranularityRefiner(
            mask_channels=mh.mask_channels,
            feat_channels_s4=channels[0],
            feat_channels_s8=channels[1],
            patch_size=mh.patch_size,
        ),
        hidden_dim=dim,
        num_queries=tcfg.num_queries,
        num_decoder_layers=tcfg.dec_layers,
    )
    model.config = config
    use_inference_linear(model)  # inference on CPU: a C++ kernel for few rows, oneDNN for the rest
    if config.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    return model


def _without_pretrained(config: SgMgConfig) -> SgMgConfig:
    """Same architecture, nothing read from disk or hub (the text encoder is built from its transformers config)."""
    import dataclasses

    text = config.text
    if text.pretrained:
        from transformers import AutoConfig

        arch = AutoConfig.from_pretrained(text.name).to_dict()
        text = dataclasses.replace(text, pretrained=False, arch=_arch_values(arch))
    visual = dataclasses.replace(config.visual, pretrained_path=None)
    return dataclasses.replace(config, text=text, visual=visual)


def _arch_values(arch: dict) -> dict:
    drop = {"architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "id2label", "label2id"}
    return {k: v for k, v in arch.items() if k not in drop}
