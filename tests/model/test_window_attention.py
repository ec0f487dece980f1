"""The C++ window attention kernel (float32 and bfloat16) against float64 attention and scaled_dot_product_attention,
its use inside the Video Swin block, and the fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgmg.model.ops import cpu_kernels as ck
from sgmg.model.ops import window_attention as wa


def _kernels(bf16: bool):
    kernels = ck.cpu_kernels()
    assert kernels is not None, "the C++ kernels did not build: run `python -m sgmg.model.ops.cpu_kernels`"
    if not kernels.avx512_supported(bf16):
        pytest.skip(f"this CPU lacks AVX-512{' BF16' if bf16 else ''}: the window attention kernel is not used here")
    return kernels


def _inputs(windows: int, heads: int, n: int, masked: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(windows, n, 3, heads, 32, generator=gen)  # [W, N, 3, heads, 32]
    bias = 2 * torch.randn(heads, n, n, generator=gen)
    window_mask = torch.full((windows,), -1, dtype=torch.long)
    window_mask[windows - masked :] = torch.arange(masked)  # the last windows get a shift mask each
    masks = torch.where(torch.rand(masked, n, n, generator=gen) < 0.5, 0.0, -100.0)
    return qkv, bias, window_mask, masks


def _reference(qkv, bias, window_mask, masks):
    """float64 softmax(QK^T / sqrt(32) + bias + mask) V -> [W, N, heads * 32]."""
    w, n, _, heads, d = qkv.shape
    q, k, v = qkv.double().permute(2, 0, 3, 1, 4).unbind(0)
    full = bias.double()[None].repeat(w, 1, 1, 1)
    rows = (window_mask >= 0).nonzero().flatten()
    full[rows] += masks.double()[window_mask[rows]][:, None]
    scores = q @ k.transpose(-1, -2) / d**0.5 + full
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(w, n, heads * d)


# 245 tokens: a full 5 x 7 x 7 window; 37 and 1: fewer than one 16-key block, an odd count, a single token
CASES = [(7, 3, 245, 3), (5, 2, 37, 2), (3, 2, 1, 1), (4, 1, 64, 0)]


@pytest.mark.parametrize(("windows", "heads", "n", "masked"), CASES)
def test_float32_kernel_matches_float64_like_sdpa(windows: int, heads: int, n: int, masked: int) -> None:
    kernels = _kernels(bf16=False)
    qkv, bias, window_mask, masks = _inputs(windows, heads, n, masked)
    expected = _reference(qkv, bias, window_mask, masks)
    got = kernels.window_attention(qkv, bias, window_mask, masks, 32**-0.5)
    assert got.dtype == torch.float32 and got.shape == (windows, n, heads * 32)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    with torch.no_grad():  # the module's path: the same kernel
        torch.testing.assert_close(wa.window_attention(qkv, bias, window_mask, masks), got, atol=0, rtol=0)


@pytest.mark.parametrize(("windows", "heads", "n", "masked"), CASES)
def test_bfloat16_kernel_is_closer_to_float64_than_sdpa_in_bfloat16(
    windows: int, heads: int, n: int, masked: int
) -> None:
    kernels = _kernels(bf16=True)
    qkv, bias, window_mask, masks = _inputs(windows, heads, n, masked)
    qkv = qkv.bfloat16()
    expected = _reference(qkv, bias, window_mask, masks)  # of the same bf16 inputs
    got = kernels.window_attention(qkv, bias, window_mask, masks, 32**-0.5)
    assert got.dtype == torch.bfloat16 and got.shape == (windows, n, heads * 32)
    err = (got.double() - expected).abs()
    assert err.max() < 1.6e-2, err.max()  # bf16 output rounding (values of a few units) and bf16 probabilities
    # PyTorch's attention in bf16, on the bias rounded to bf16 as it must be
    sdpa = _sdpa_in_bf16(qkv, bias, window_mask, masks)
    assert err.mean() <= (sdpa.double() - expected).abs().mean(), "worse than scaled_dot_product_attention in bf16"


def _sdpa_in_bf16(qkv, bias, window_mask, masks):
    w, n, _, heads, d = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    full = bias[None].repeat(w, 1, 1, 1)
    rows = (window_mask >= 0).nonzero().flatten()
    full[rows] += masks[window_mask[rows]][:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=full.bfloat16()).transpose(1, 2).reshape(w, n, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_is_used_in_inference_only(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = _kernels(bf16=dtype == torch.bfloat16)
    calls = []
    monkeypatch.setattr(wa, "cpu_kernels", lambda: _Spy(kernels, calls))
    qkv, bias, window_mask, masks = _inputs(4, 2, 20, 1)
    qkv = qkv.to(dtype)
    with torch.inference_mode():
        wa.window_attention(qkv, bias, window_mask, masks)
    assert len(calls) == 1
    # autograd recording, or heads not 32 wide: scaled_dot_product_attention, with gradients
    leaf = qkv.detach().requires_grad_()
    wa.window_attention(leaf, bias, window_mask, masks).float().square().sum().backward()
    assert leaf.grad is not None and len(calls) == 1
    with torch.no_grad():
        wa.window_attention(qkv[..., :16].contiguous(), bias, window_mask, masks)
    assert len(calls) == 1


class _Spy:
    def __init__(self, kernels, calls: list, cpu_has_avx512: bool = True) -> None:
        self._kernels, self._calls, self._cpu_has_avx512 = kernels, calls, cpu_has_avx512

    def avx512_supported(self, bf16: bool) -> bool:
        return self._cpu_has_avx512 and self._kernels.avx512_supported(bf16)

    def window_attention(self, *args):
        self._calls.append(args)
        return self._kernels.window_attention(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_cpu_without_avx512_falls_back_to_sdpa(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = ck.cpu_kernels()
    assert kernels is not None, "the C++ kernels did not build: run `python -m sgmg.model.ops.cpu_kernels`"
    calls = []
    monkeypatch.setattr(wa, "cpu_kernels", lambda: _Spy(kernels, calls, cpu_has_avx512=False))
    qkv, bias, window_mask, masks = _inputs(6, 2, 30, 2)
    qkv = qkv.to(dtype)
    with torch.inference_mode():
        got = wa.window_attention(qkv, bias, window_mask, masks)
    assert not calls and got.dtype == dtype
    if dtype == torch.bfloat16:  # PyTorch's attention in bf16, exactly
        expected = _sdpa_in_bf16(qkv, bias, window_mask, masks)
    else:
        expected = _reference(qkv, bias, window_mask, masks).float()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_kernels_off_fall_back_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    qkv, bias, window_mask, masks = _inputs(6, 2, 30, 2)
    expected = _reference(qkv, bias, window_mask, masks)
    try:
        ck.cpu_kernels.cache_clear()
        monkeypatch.setenv(ck.ENV, "0")
        with torch.no_grad():
            got = wa.window_attention(qkv, bias, window_mask, masks)
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    finally:
        ck.cpu_kernels.cache_clear()


def test_bad_arguments_are_refused_by_name() -> None:
    kernels = _kernels(bf16=False)
    qkv, bias, window_mask, masks = _inputs(3, 2, 10, 1)
    with pytest.raises(RuntimeError, match="bias must be a contiguous float32"):
        kernels.window_attention(qkv, bias[:1], window_mask, masks, 1.0)
    with pytest.raises(RuntimeError, match="window_mask\\[2\\] = 5 out of range"):
        kernels.window_attention(qkv, bias, torch.tensor([-1, -1, 5]), masks, 1.0)
    with pytest.raises(RuntimeError, match="qkv must be a contiguous CPU float32 or bfloat16"):
        kernels.window_attention(qkv.double(), bias, window_mask, masks, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 20, 22, 64), (1, 10, 14, 15, 64)])
def test_swin_window_attention_with_the_kernel_equals_torchvision(shape: tuple, dtype: torch.dtype) -> None:
    """64 channels in 2 heads (32 wide: the kernel's case), shifted windows, a batch of 2 and a temporal window."""
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    from sgmg.model.visual_encoder import WindowAttention3d

    _kernels(bf16=dtype == torch.bfloat16)
    torch.manual_seed(0)
    ref = ShiftedWindowAttention3d(64, [8, 7, 7], [4, 3, 3], 2)
    ours = WindowAttention3d(64, [8, 7, 7], [4, 3, 3], 2)
    ours.load_state_dict(ref.state_dict())
    ours.qkv.to(dtype), ours.proj.to(dtype)  # as sgmg.model.precision's bf16 does
    x = torch.randn(shape)
    with torch.inference_mode():
        expected, got = ref(x), ours(x.to(dtype)).float()
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:  # bf16 weights and activations: 0.5 % of the output's scale here
        assert (got - expected).abs().max() < 0.01 * expected.abs().max()
