"""sgmg.model.ops.linear: the C++ few-rows linear kernel and oneDNN's linear against float64 and F.linear, where each
is used, channel_mix, the row-blocked feed_forward, and the models that get InferenceLinear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgmg.model.ops import cpu_kernels as ck
from sgmg.model.ops import linear as lin


def _kernels():
    kernels = ck.cpu_kernels()
    assert kernels is not None, "the C++ kernels did not build: run `python -m sgmg.model.ops.cpu_kernels`"
    if not kernels.avx512_supported(False):
        pytest.skip("this CPU lacks AVX-512: the few-rows linear kernel is not used here")
    return kernels


def _inputs(m: int, k: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    weight = torch.randn(n, k, generator=gen) / max(k, 1) ** 0.5
    bias = torch.randn(n, generator=gen)
    return x, weight, bias


# rows: 1, a partial and a whole 4-row block, a sentence (12), the decoder's 15, one pass (64) and more (70);
# K: under one 16-lane vector, a tail, the 256 chunk and past it; N: under, at and past the 6-row block
SHAPES = [(1, 768, 768), (3, 17, 5), (4, 256, 6), (12, 300, 7), (15, 256, 2048), (64, 1000, 13), (70, 16, 1)]


@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_matches_float64_as_closely_as_f_linear(m: int, k: int, n: int, with_bias: bool) -> None:
    kernels = _kernels()
    x, weight, bias = _inputs(m, k, n)
    bias = bias if with_bias else None
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    got = kernels.few_rows_linear(x, weight, bias)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    err = (got.double() - expected).abs().max().item()
    torch_err = (F.linear(x, weight, bias).double() - expected).abs().max().item()
    assert err <= max(2 * torch_err, 1e-6), (err, torch_err)


class _Spies:
    """The C++ kernels and oneDNN's linear, recording which one each call takes."""

    def __init__(self, kernels, avx512: bool = True) -> None:
        self.kernels, self.avx512, self.calls = kernels, avx512, []

    def avx512_supported(self, bf16: bool) -> bool:
        return self.avx512 and self.kernels.avx512_supported(bf16)

    def few_rows_linear(self, *args):
        self.calls.append("kernel")
        return self.kernels.few_rows_linear(*args)

    def onednn(self, *args):
        self.calls.append("onednn")
        return torch.ops.mkldnn._linear_pointwise(*args)

    def install(self, monkeypatch: pytest.MonkeyPatch, built: bool = True) -> None:
        monkeypatch.setattr(lin, "cpu_kernels", (lambda: self) if built else (lambda: None))
        monkeypatch.setattr(lin, "onednn_linear", lambda: self.onednn)


def _onednn():
    if lin.onednn_linear() is None:
        pytest.skip("this PyTorch has no oneDNN linear")


def test_each_input_takes_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    _onednn()
    spies = _Spies(_kernels())
    spies.install(monkeypatch)
    torch.manual_seed(0)
    layer = lin.use_inference_linear(nn.Linear(40, 24))
    assert isinstance(layer, lin.InferenceLinear)
    x = torch.randn(2, 6, 40).transpose(0, 1)  # [6, 2, 40], not contiguous: 12 rows
    many = torch.randn(3, lin.MAX_ROWS, 40)
    with torch.inference_mode():
        got, got_many = layer(x), layer(many)
        assert spies.calls == ["kernel", "onednn"] and got.shape == (6, 2, 24) and got_many.shape == (3, 64, 24)
        torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_many, F.linear(many, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        fast = lin.use_inference_linear(nn.Linear(40, 24)).to(torch.bfloat16)
        expected = F.linear(x.bfloat16().double(), fast.weight.double(), fast.bias.double())
        torch.testing.assert_close(fast(x.bfloat16()).double(), expected, atol=2e-2, rtol=1e-2)  # bf16 output
        assert spies.calls[2:] == ["onednn"]  # bfloat16: oneDNN, whatever the rows
        assert layer(torch.randn(0, 40)).shape == (0, 24)  # no rows, and other dtypes: F.linear
        wide = lin.use_inference_linear(nn.Linear(40, 24)).double()
        torch.testing.assert_close(wide(x.double()), F.linear(x.double(), wide.weight, wide.bias), atol=0, rtol=0)
    assert len(spies.calls) == 3
    layer(x).sum().backward()  # autograd recording: F.linear, with gradients
    assert layer.weight.grad is not None and len(spies.calls) == 3


@pytest.mark.parametrize("built", [False, True])
def test_few_rows_without_the_kernel_take_onednn(built: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without AVX-512 (built=True) or kernels that did not build (built=False)."""
    _onednn()
    spies = _Spies(_kernels(), avx512=False)
    spies.install(monkeypatch, built=built)
    x, weight, bias = _inputs(5, 33, 9)
    with torch.inference_mode():
        got = lin.linear(x, weight, bias)
    assert spies.calls == ["onednn"]
    torch.testing.assert_close(got, F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


def test_kernels_off_take_f_linear_and_bmm_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ck.ENV, "0")
    ck.cpu_kernels.cache_clear()
    try:
        assert lin.onednn_linear() is None
        x, weight, bias = _inputs(5, 33, 9)
        frames = torch.randn(2, 33, 7)
        with torch.inference_mode():
            torch.testing.assert_close(lin.linear(x, weight, bias), F.linear(x, weight, bias), atol=0, rtol=0)
            expected = torch.baddbmm(bias.view(1, -1, 1), weight.expand(2, -1, -1), frames)
            torch.testing.assert_close(lin.channel_mix(weight, bias, frames), expected, atol=0, rtol=0)
    finally:
        ck.cpu_kernels.cache_clear()


@pytest.mark.parametrize(("m", "k", "n"), [(65, 256, 2048), (3060, 256, 256), (512, 2048, 256)])
def test_onednn_matches_float64_nearly_as_closely_as_f_linear(m: int, k: int, n: int) -> None:
    _onednn()
    x, weight, bias = _inputs(m, k, n)
    expected = F.linear(x.double(), weight.double(), bias.double())
    with torch.inference_mode():
        got = lin.linear(x, weight, bias)
    err = (got.double() - expected).abs().max().item()
    torch_err = (F.linear(x, weight, bias).double() - expected).abs().max().item()
    assert err <= 5 * torch_err, (err, torch_err)  # its longer accumulation chains: 1.5-4x here
    assert err <= 2e-6 * expected.abs().max().item() * k**0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_channel_mix_equals_the_batched_multiply(dtype: torch.dtype, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(12, 10, generator=gen) / 10**0.5).to(dtype)
    bias = torch.randn(12, generator=gen).to(dtype) if with_bias else None
    frames = torch.randn(3, 10, 35, generator=gen).to(dtype)
    batched = weight.expand(3, -1, -1)
    expected = torch.bmm(batched, frames) if bias is None else torch.baddbmm(bias.view(1, -1, 1), batched, frames)
    with torch.inference_mode():
        got = lin.channel_mix(weight, bias, frames)
    assert got.dtype == dtype and got.shape == (3, 12, 35)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_bad_arguments_are_refused_by_name() -> None:
    kernels = _kernels()
    x, weight, bias = _inputs(4, 8, 6)
    with pytest.raises(RuntimeError, match="x must be a contiguous CPU float32"):
        kernels.few_rows_linear(x.t(), weight, bias)
    with pytest.raises(RuntimeError, match="weight must be a contiguous CPU float32 \\[N, K\\] tensor with x's K = 8"):
        kernels.few_rows_linear(x, weight[:, :7].contiguous(), bias)
    with pytest.raises(RuntimeError, match="bias must be a contiguous CPU float32 \\[N\\] tensor with N = 6"):
        kernels.few_rows_linear(x, weight, bias[:5])


def test_use_inference_linear_keeps_parameters_and_state_dict_and_skips_subclasses() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    lin.use_inference_linear(model)
    assert type(model[0]) is lin.InferenceLinear and type(model[2]) is lin.InferenceLinear
    assert type(model[1].out_proj) is not lin.InferenceLinear  # MultiheadAttention reads its weights itself
    assert [id(p) for p in model.parameters()] == params
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_built_models_use_it_in_the_text_encoder_and_decoder() -> None:
    from sgmg.zoo import build_model

    model = build_model("sgmg_tiny")
    text_linears = [m for m in model.text_encoder.modules() if isinstance(m, nn.Linear)]
    assert text_linears and all(type(m) is lin.InferenceLinear for m in text_linears)
    layer = model.transformer.decoder.layers[0]
    assert type(layer.linear1) is lin.InferenceLinear and type(layer.cross_attn.sampling_offsets) is lin.InferenceLinear


def test_feed_forward_in_row_blocks_equals_one_pass() -> None:
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(6, 10), nn.Linear(10, 4)
    x = torch.randn(3, lin.FFN_BLOCK_ELEMENTS // 10 + 7, 6)  # more rows than a block (of a 10-wide hidden), one partial
    with torch.no_grad():
        plain = fc2(F.relu(fc1(x)))
        torch.testing.assert_close(lin.feed_forward(x, fc1, F.relu, fc2), plain, atol=1e-6, rtol=1e-6)
        fc2_nobias = nn.Linear(10, 4, bias=False)
        torch.testing.assert_close(
            lin.feed_forward(x, fc1, F.relu, fc2_nobias), fc2_nobias(F.relu(fc1(x))), atol=1e-6, rtol=1e-6
        )
    # with autograd recording: one plain pass, gradients flow
    out = lin.feed_forward(x, fc1, F.relu, fc2)
    out.sum().backward()
    assert fc1.weight.grad is not None and out.shape == (3, lin.FFN_BLOCK_ELEMENTS // 10 + 7, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feed_forward_with_norms_and_residual_equals_the_blocks_plain_code(dtype: torch.dtype) -> None:
    """The encoder's post-norm ``norm2(x + FFN(x))`` and the Swin block's ``x + MLP(norm2(x))``, with the FFN's
    weights in ``dtype`` (bf16: sgmg.model.precision's fast mode) and the rest float32, in row blocks."""
    torch.manual_seed(0)
    fc1, fc2, norm = nn.Linear(16, 40).to(dtype), nn.Linear(40, 16).to(dtype), nn.LayerNorm(16)
    x = torch.randn(2, lin.FFN_BLOCK_ELEMENTS // 40 + 9, 16)  # two blocks, one partial
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    with torch.no_grad():
        post = norm(x + fc2(F.relu(fc1(x.to(dtype)))).float())
        got = lin.feed_forward(x, fc1, F.relu, fc2, residual=True, post=norm)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, post, **tol)
        pre = x + fc2(F.gelu(fc1(norm(x).to(dtype)))).float()
        torch.testing.assert_close(lin.feed_forward(x, fc1, F.gelu, fc2, pre=norm, residual=True), pre, **tol)
    x.requires_grad_(True)  # autograd recording: the same composition in one pass, with gradients
    got = lin.feed_forward(x, fc1, F.relu, fc2, residual=True, post=norm)
    got.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(got.detach(), post, **tol)
