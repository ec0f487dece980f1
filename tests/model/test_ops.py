"""The C++ CPU kernel of multi-scale deformable attention against its PyTorch formulation, and the blocked FFN."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgmg.model.ops import cpu_kernels as ck
from sgmg.model.ops.ms_deform_attn import (
    MultiScaleDeformableAttention,
    _CPUDeformAttn,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

SHAPES = [(7, 9), (4, 5), (2, 3)]


def _inputs(dtype=torch.float32, heads=3, channels=5, points=3, batch=2, queries=11):
    gen = torch.Generator().manual_seed(0)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, channels, generator=gen, dtype=dtype)
    # locations reach past every border, so the zero padding of out-of-map corners is exercised
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=gen, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=gen, dtype=dtype).softmax(-1)
    return value, loc, weights


def test_the_cpu_kernel_is_built_and_used(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ck.cpu_kernels() is not None, "the C++ kernels did not build: run `python -m sgmg.model.ops.cpu_kernels`"
    calls = []
    original = _CPUDeformAttn.apply
    monkeypatch.setattr(_CPUDeformAttn, "apply", lambda *a: calls.append(a) or original(*a))
    ms_deform_attn(*_with_shapes(_inputs()))
    assert len(calls) == 1


def _with_shapes(inputs):
    value, loc, weights = inputs
    return value, SHAPES, loc, weights


def test_cpu_kernel_forward_matches_the_pytorch_formulation() -> None:
    args = _with_shapes(_inputs())
    ours = ms_deform_attn(*args)
    assert ours.shape == (2, 11, 15)
    torch.testing.assert_close(ours, ms_deform_attn_pytorch(*args), atol=1e-6, rtol=1e-5)
    # float64 and autograd-free inputs of other dtypes take the PyTorch formulation
    args64 = _with_shapes(_inputs(torch.float64))
    torch.testing.assert_close(ms_deform_attn(*args64), ms_deform_attn_pytorch(*args64))


# head widths of the AVX-512 forward (16 to 256: the encoder's 32, the decoder's sampled 256-wide input) and others;
# 3 levels x 3 points, and 3 x 22 = 66 points a head (over its 64: the plain loop)
@pytest.mark.parametrize(("channels", "points"), [(16, 3), (32, 3), (256, 3), (48, 3), (32, 22), (1, 3)])
def test_cpu_kernel_forward_of_each_head_width_matches_the_pytorch_formulation(channels: int, points: int) -> None:
    args = _with_shapes(_inputs(heads=2, channels=channels, points=points, queries=37))
    kernels = ck.cpu_kernels()
    assert kernels is not None, "the C++ kernels did not build: run `python -m sgmg.model.ops.cpu_kernels`"
    value, shapes, loc, weights = args
    got = kernels.forward(value, torch.tensor(shapes), loc, weights)  # the op itself, [B, Q, M * D]
    torch.testing.assert_close(got, ms_deform_attn_pytorch(*args), atol=1e-6, rtol=1e-5)


def test_cpu_kernel_gradients_match_autograd_of_the_pytorch_formulation() -> None:
    value, loc, weights = _inputs()
    grad_out = torch.randn(2, 11, 15, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    ms_deform_attn(leaves[0], SHAPES, leaves[1], leaves[2]).backward(grad_out)
    ref = [t.double().requires_grad_(True) for t in (value, loc, weights)]
    ms_deform_attn_pytorch(ref[0], SHAPES, ref[1], ref[2]).backward(grad_out.double())
    for ours, expected, name in zip(leaves, ref, ("value", "locations", "weights"), strict=True):
        torch.testing.assert_close(ours.grad, expected.grad.float(), atol=1e-4, rtol=1e-4, msg=name)


def test_kernels_off_or_unbuildable_fall_back_to_pytorch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    args = _with_shapes(_inputs())
    expected = ms_deform_attn_pytorch(*args)
    try:
        ck.cpu_kernels.cache_clear()
        monkeypatch.setenv(ck.ENV, "0")
        assert ck.cpu_kernels() is None
        torch.testing.assert_close(ms_deform_attn(*args), expected, atol=0, rtol=0)

        ck.cpu_kernels.cache_clear()
        monkeypatch.setenv(ck.ENV, "1")

        def no_compiler(verbose: bool):
            raise RuntimeError("Error building extension: g++: not found")

        monkeypatch.setattr(ck, "_load", no_compiler)
        with caplog.at_level(logging.WARNING, logger=ck.__name__):
            assert ck.cpu_kernels() is None
        assert "g++: not found" in caplog.text and ck.ENV in caplog.text
        torch.testing.assert_close(ms_deform_attn(*args), expected, atol=0, rtol=0)
    finally:
        ck.cpu_kernels.cache_clear()


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kernels", ["1", "0"])
def test_few_queries_sample_the_input_then_project(padded: bool, kernels: str, monkeypatch: pytest.MonkeyPatch):
    """The decoder's case (5 queries over 4 levels): without autograd the attention samples the unprojected input and
    projects the samples; the same result as projecting every value first (the autograd path), padding included."""
    monkeypatch.setenv(ck.ENV, kernels)
    ck.cpu_kernels.cache_clear()
    try:
        torch.manual_seed(0)
        attn = MultiScaleDeformableAttention(dim=64, num_levels=3, num_heads=4, num_points=2)
        with torch.no_grad():
            for p in attn.parameters():
                p.normal_(0, 0.1)
        shapes = [(12, 16), (6, 8), (3, 4)]
        s = sum(h * w for h, w in shapes)
        query, value_in, refs = torch.randn(2, 3, 64), torch.randn(2, s, 64), torch.rand(2, 3, 3, 4) * 0.8 + 0.1
        pad = torch.zeros(2, s, dtype=torch.bool)
        pad[:, ::5] = True
        pad = pad if padded else None
        projected_first = attn(query, refs, value_in, shapes, pad)  # autograd recording: the projection first
        assert projected_first.requires_grad
        with torch.no_grad():
            sampled_first = attn(query, refs, value_in, shapes, pad)
        torch.testing.assert_close(sampled_first, projected_first.detach(), atol=1e-6, rtol=1e-5)
    finally:
        ck.cpu_kernels.cache_clear()


def test_mean_of_valid_conv_equals_the_average_pooled_conv() -> None:
    from sgmg.model.fusion import mean_of_valid_conv

    torch.manual_seed(0)
    for shape, bias in (((2, 6, 5, 9), True), ((1, 4, 3, 3), True), ((3, 5, 7, 4), False)):
        conv = nn.Conv2d(shape[1], 7, kernel_size=3, bias=bias)
        x = torch.randn(*shape)
        torch.testing.assert_close(mean_of_valid_conv(conv, x), conv(x).mean(dim=(2, 3)), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_equals_the_1x1_conv_and_its_gradients(bias: bool) -> None:
    from sgmg.model.fusion import pointwise_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, kernel_size=1, bias=bias)
    x = torch.randn(3, 6, 5, 7, requires_grad=True)
    torch.testing.assert_close(pointwise_conv(conv, x), conv(x), atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(pointwise_conv(conv, x).square().sum(), [x, *conv.parameters()])
    expected = torch.autograd.grad(conv(x).square().sum(), [x, *conv.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    fast = conv.to(torch.bfloat16)  # as sgmg.model.precision's bf16 casts the spectral blocks' convs
    with torch.inference_mode():
        torch.testing.assert_close(pointwise_conv(fast, x.detach().bfloat16()), fast(x.detach().bfloat16()))


# the mask features' resizes (stride 16 and 32 to 8, odd sizes), a downsize, 1-pixel maps, and no resize at all
@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((3, 4, 12, 16), (24, 32)),
        ((2, 3, 23, 40), (45, 80)),
        ((1, 2, 9, 7), (4, 5)),
        ((1, 1, 1, 3), (2, 1)),
        ((2, 5, 6, 8), (6, 8)),
    ],
)
def test_resize_bicubic_equals_f_interpolate_and_its_gradients(shape: tuple, size: tuple) -> None:
    from sgmg.model.layers import resize_bicubic

    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    got, expected = resize_bicubic(x, size), F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    grad = torch.randn_like(expected)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    (want_grad,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-5, rtol=1e-5)


def test_the_decoder_samples_first_and_the_encoder_never() -> None:
    from sgmg.model.ops.ms_deform_attn import _samples_first

    for s in (1020, 4820):  # 3 x 192 x 256 and 5 x 360 x 640: sum(h * w) of 4 levels
        value = torch.empty(1, s, 256)
        assert _samples_first(5, 8, 16, value)  # the decoder: 5 queries, 8 heads, 4 levels x 4 points
        assert not _samples_first(s, 8, 16, value)  # the encoder: every value is a query
