"""The C++ few-rows linear kernel against float64 and F.linear, where sgmg.model.ops.linear uses it, and the
models that get it."""

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


def test_the_module_path_uses_the_kernel_in_inference_only(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = _kernels()
    calls = []

    class Spy:
        def avx512_supported(self, bf16: bool) -> bool:
            return kernels.avx512_supported(bf16)

        def few_rows_linear(self, *args):
            calls.append(args)
            return kernels.few_rows_linear(*args)

    monkeypatch.setattr(lin, "cpu_kernels", lambda: Spy())
    layer = lin.use_few_rows_kernel(nn.Linear(40, 24))
    assert isinstance(layer, lin.FewRowsLinear)
    x = torch.randn(2, 6, 40).transpose(0, 1)  # [6, 2, 40], not contiguous: 12 rows
    with torch.inference_mode():
        got = layer(x)
    assert len(calls) == 1 and got.shape == (6, 2, 24)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    # autograd recording (with gradients), more rows than MAX_ROWS, bfloat16, no rows: F.linear
    layer(x).sum().backward()
    assert layer.weight.grad is not None
    with torch.inference_mode():
        layer(torch.randn(lin.MAX_ROWS + 1, 40))
        layer.to(torch.bfloat16)(x.bfloat16())
        assert layer.float()(torch.randn(0, 40)).shape == (0, 24)
    assert len(calls) == 1


@pytest.mark.parametrize("cpu_has_avx512", [False, True])
def test_other_cpus_and_the_kernels_off_take_f_linear(cpu_has_avx512: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = _kernels()
    calls = []

    class Spy:
        def avx512_supported(self, bf16: bool) -> bool:
            return False

        def few_rows_linear(self, *args):
            calls.append(args)
            return kernels.few_rows_linear(*args)

    monkeypatch.setattr(lin, "cpu_kernels", (lambda: None) if cpu_has_avx512 else (lambda: Spy()))
    x, weight, bias = _inputs(5, 33, 9)
    with torch.inference_mode():
        got = lin.linear(x, weight, bias)
    assert not calls
    torch.testing.assert_close(got, F.linear(x, weight, bias), atol=0, rtol=0)


def test_bad_arguments_are_refused_by_name() -> None:
    kernels = _kernels()
    x, weight, bias = _inputs(4, 8, 6)
    with pytest.raises(RuntimeError, match="x must be a contiguous CPU float32"):
        kernels.few_rows_linear(x.t(), weight, bias)
    with pytest.raises(RuntimeError, match="weight must be a contiguous CPU float32 \\[N, K\\] tensor with x's K = 8"):
        kernels.few_rows_linear(x, weight[:, :7].contiguous(), bias)
    with pytest.raises(RuntimeError, match="bias must be a contiguous CPU float32 \\[N\\] tensor with N = 6"):
        kernels.few_rows_linear(x, weight, bias[:5])


def test_use_few_rows_kernel_keeps_parameters_and_state_dict_and_skips_subclasses() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    lin.use_few_rows_kernel(model)
    assert type(model[0]) is lin.FewRowsLinear and type(model[2]) is lin.FewRowsLinear
    assert type(model[1].out_proj) is not lin.FewRowsLinear  # MultiheadAttention reads its weights itself
    assert [id(p) for p in model.parameters()] == params
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_built_models_use_it_in_the_text_encoder_and_decoder() -> None:
    from sgmg.zoo import build_model

    model = build_model("sgmg_tiny")
    text_linears = [m for m in model.text_encoder.modules() if isinstance(m, nn.Linear)]
    assert text_linears and all(type(m) is lin.FewRowsLinear for m in text_linears)
    layer = model.transformer.decoder.layers[0]
    assert type(layer.linear1) is lin.FewRowsLinear and type(layer.cross_attn.sampling_offsets) is lin.FewRowsLinear
