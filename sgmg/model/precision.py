"""Inference precision of SgMg: ``fp32`` (exact: the official numerics) or ``bf16`` (fast, opt-in).

``bf16`` casts the weights of the layers where bfloat16 is safe and most of the time goes, and those layers then run
in bfloat16 (matrix multiplies with float32 accumulation): every Video Swin block's window attention (its qkv and
output projections, and softmax(QK^T + bias)V on bf16 Q, K, V with float32 scores, by our C++ kernel on AVX-512 BF16
CPUs) and MLP, the FFN of every deformable encoder layer, and the two 1x1 convs of every spectral block that mix the
spectrum's real and imaginary parts. Everything whose error would move the masks stays float32: the Swin
relative-position bias tables, the LayerNorms and residual streams, the FFTs themselves, the deformable attention (its
value and output projections, sampling locations and weights), the text encoder, the decoder, the heads and the
refiner. Chosen block by block by the masks' agreement with fp32 at
5 x 360 x 640 (seeded official-layout Swin-T weights): the Swin blocks and encoder FFNs alone gave mask IoU 0.987,
adding the spectral convs 0.984-0.989 and 0.3 s less, adding the deformable value/output projections 0.981 and no
time gained (left float32). Measured agreement and speed: ``README.md`` ("Speed").

The cast is in place and one-way (the float32 weights of those layers are gone): load the checkpoint again for fp32.
For inference only: training keeps float32 weights (``TrainConfig.precision`` is autocast).
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


def fast_layers(model: nn.Module) -> list[nn.Module]:
    """The submodules that ``bf16`` casts: each Swin block's qkv and output projections and MLP, each encoder
    layer's FFN, each spectral block's 1x1 convs."""
    layers: list[nn.Module] = []
    for stage in model.visual_encoder.layers:
        for block in stage.blocks:
            layers += [block.attn.qkv, block.attn.proj, block.mlp]
    for layer in model.transformer.encoder.layers:
        layers += [layer.linear1, layer.linear2]
    for block in [*model.fusion.pre, *model.fusion.post]:
        layers += [block.conv1, block.conv2]
    return layers


def set_inference_precision(model: nn.Module, precision: str) -> nn.Module:
    """Put an :class:`~sgmg.model.sgmg.SgMg` in ``precision`` (``"fp32"`` or ``"bf16"``) for inference; returns it.

    Raises:
        ValueError: an unknown precision, or ``"fp32"`` asked of a model already cast to bf16 (reload it).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    layers = fast_layers(model)
    cast = any(p.dtype == torch.bfloat16 for layer in layers for p in layer.parameters())
    if precision == "fp32":
        if cast:
            raise ValueError("this model was cast to bf16, which is one-way: load its checkpoint again for fp32")
        return model
    for layer in layers:
        layer.to(torch.bfloat16)
    return model
