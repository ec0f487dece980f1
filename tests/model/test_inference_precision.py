"""The opt-in bf16 inference precision: what it casts, that it still runs and agrees with fp32, and its guard rails."""

from __future__ import annotations

import copy

import pytest
import torch

from sgmg.model.precision import fast_layers, set_inference_precision
from sgmg.zoo import build_model


@pytest.fixture(scope="module")
def fp32_model():
    torch.manual_seed(0)
    return build_model("sgmg_tiny").eval()


def _inputs():
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(1, 2, 3, 96, 128, generator=gen)
    ids = torch.randint(1000, 2000, (1, 7), generator=gen)
    return video, ids, torch.ones_like(ids)


def test_bf16_casts_only_the_swin_blocks_and_encoder_ffns(fp32_model) -> None:
    model = set_inference_precision(copy.deepcopy(fp32_model), "bf16")
    cast = {id(p) for layer in fast_layers(model) for p in layer.parameters()}
    assert cast, "nothing to cast"
    for name, p in model.named_parameters():
        expected = torch.bfloat16 if id(p) in cast else torch.float32
        assert p.dtype == expected, name
    # what stays float32: the text encoder, the fusion, the deformable attention, the decoder, the heads, LayerNorms
    assert model.transformer.encoder.layers[0].self_attn.value_proj.weight.dtype == torch.float32
    assert model.visual_encoder.layers[0].blocks[0].norm1.weight.dtype == torch.float32
    attn = model.visual_encoder.layers[0].blocks[0].attn
    assert attn.qkv.weight.dtype == torch.bfloat16 and attn.relative_position_bias_table.dtype == torch.float32


def test_bf16_outputs_are_float32_and_agree_with_fp32(fp32_model) -> None:
    model = set_inference_precision(copy.deepcopy(fp32_model), "bf16")
    with torch.inference_mode():
        exact, fast = fp32_model(*_inputs()), model(*_inputs())
    assert fast.pred_masks.dtype == torch.float32 and fast.pred_logits.dtype == torch.float32
    torch.testing.assert_close(fast.pred_boxes, exact.pred_boxes, atol=0.05, rtol=0)
    agree = ((fast.pred_masks > 0) == (exact.pred_masks > 0)).float().mean().item()
    assert agree > 0.95, agree


def test_precision_guard_rails(fp32_model) -> None:
    assert set_inference_precision(fp32_model, "fp32") is fp32_model  # a no-op
    with pytest.raises(ValueError, match="expected one of fp32, bf16"):
        set_inference_precision(fp32_model, "fp16")
    model = set_inference_precision(copy.deepcopy(fp32_model), "bf16")
    with pytest.raises(ValueError, match="one-way: load its checkpoint again"):
        set_inference_precision(model, "fp32")
    assert set_inference_precision(model, "bf16") is model  # casting twice is harmless
