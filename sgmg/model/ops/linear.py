"""Linear layers and 1x1 channel mixing at inference on CPU: a C++ kernel for few rows, oneDNN for the rest.

:func:`linear` is ``F.linear``; in inference on CPU (autograd not recording) it runs

- float32 inputs of at most :data:`MAX_ROWS` rows on AVX-512 CPUs: the C++ kernel
  (``csrc/few_rows_linear_cpu.cpp``). The text encoder multiplies one sentence's ~12 token rows by each of
  RoBERTa-base's weight matrices, the decoder a few dozen query rows: the matrices are read once per forward and
  PyTorch's GEMM spends more time packing them than multiplying; the kernel reads each weight row once in its
  ``nn.Linear`` layout (RoBERTa-base's linears on a 12-token sentence in half the time);
- other float32 and bfloat16 inputs: oneDNN's matrix multiply with the bias fused (``torch.ops.mkldnn``'s
  ``_linear_pointwise``, the op PyTorch's own compiler emits for CPU linears). PyTorch's float32 ``F.linear`` calls
  MKL's SGEMM, which on AMD CPUs runs its AVX2 code and first copies the bias into the output; oneDNN's AVX-512 code
  took 5-17 % less time on the model's shapes (2 cores, AMD EPYC Zen 4), and 3-10 % less in bfloat16.

Both are the same function up to float rounding (the summation order differs: the C++ kernel's error against float64
is within twice PyTorch's, oneDNN's within 1.5-4x; 1e-6 relative at these sizes). Everywhere else (training, CUDA,
other dtypes, the kernels off with ``SGMG_CPU_KERNELS=0``, a PyTorch built without oneDNN): ``F.linear``.

:func:`use_inference_linear` turns a model's ``nn.Linear`` layers (those of the transformers text encoder too) into
:class:`InferenceLinear`, which keeps their parameters and state-dict keys and changes only how the forward runs.
:func:`channel_mix` is a 1x1 convolution's ``W @ x`` per frame, through oneDNN the same way in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgmg.model.layers import records_grad
from sgmg.model.ops import cpu_kernels as ck
from sgmg.model.ops.cpu_kernels import cpu_kernels

MAX_ROWS = 64  # the C++ kernel was faster than PyTorch's GEMM up to 64 rows of RoBERTa-base's shapes (2 cores)
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def onednn_linear() -> Callable[..., Tensor] | None:
    """oneDNN's linear (``x [M, K], weight [N, K], bias [N] or None, "none", [], ""`` -> ``[M, N]``), or None when
    PyTorch lacks it or ``SGMG_CPU_KERNELS=0``."""
    if not ck.enabled() or not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``[..., K] -> [..., N]`` with ``weight [N, K]``, ``bias [N]`` or None."""
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    if rows and _cpu_inference(x, weight, bias):
        out = _cpu_linear(x.reshape(rows, k), weight, bias)
        if out is not None:
            return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def _cpu_inference(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Inputs of one dtype on CPU with autograd not recording: what the CPU paths of this module take."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and (bias is None or bias.dtype == x.dtype)
        and not records_grad(x, weight, *(() if bias is None else (bias,)))
    )


def _cpu_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor | None:
    """``[M, K] -> [M, N]`` by the C++ kernel or oneDNN, or None if neither takes it."""
    contiguous = weight.is_contiguous() and (bias is None or bias.is_contiguous())
    if x.dtype == torch.float32 and x.shape[0] <= MAX_ROWS and contiguous:
        kernels = cpu_kernels()
        if kernels is not None and kernels.avx512_supported(False):
            return kernels.few_rows_linear(x.contiguous(), weight, bias)
    op = onednn_linear() if x.dtype in ONEDNN_DTYPES else None
    return None if op is None else op(x, weight, bias, "none", [], "")


def channel_mix(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """A 1x1 convolution without groups as ``weight @ x[i] + bias`` for every frame: ``weight [C_out, C_in]``,
    ``x [N, C_in, P]`` -> ``[N, C_out, P]``.

    In inference on CPU in float32 each frame is oneDNN's linear of the weight's rows by the frame's transpose (a
    view), the bias added after: 0.7x the time of ``torch.baddbmm`` (MKL) for the spectral blocks' 512 x 512 weights
    at 3 x 192 x 256, 0.85x at 5 x 360 x 640. Else ``torch.baddbmm`` / ``torch.bmm`` (in bfloat16 that is oneDNN
    already, with the bias added before the one rounding to bfloat16).
    """
    op = onednn_linear()
    if op is not None and x.dtype == torch.float32 and _cpu_inference(x, weight, bias):
        out = torch.stack([op(weight, frame.t(), None, "none", [], "") for frame in x])  # [N, C_out, P]
        return out if bias is None else out.add_(bias.view(1, -1, 1))
    batched = weight.expand(x.shape[0], -1, -1)  # [N, C_out, C_in], no copy
    return torch.bmm(batched, x) if bias is None else torch.baddbmm(bias.view(1, -1, 1), batched, x)


class InferenceLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear` (the same parameters, state-dict keys and results)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def use_inference_linear(model: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` of ``model`` an :class:`InferenceLinear`, in place (subclasses such as
    ``nn.MultiheadAttention``'s output projection are left alone); returns ``model``."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = InferenceLinear
    return model


def feed_forward(
    x: Tensor,
    fc1: nn.Linear,
    activation: Callable[[Tensor], Tensor],
    fc2: nn.Linear,
    *,
    pre: Callable[[Tensor], Tensor] | None = None,
    residual: bool = False,
    post: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """A transformer block's FFN with what surrounds it: ``post(x + fc2(activation(fc1(pre(x)))))``, the residual
    ``x +`` only when ``residual``, ``pre`` and ``post`` row-wise (LayerNorms) or None; by :func:`linear` in row blocks
    when no gradient is being recorded.

    ``[..., C] -> [..., C_out]`` in ``x``'s dtype; ``fc1`` and ``fc2`` run in their weights' dtype (``pre(x)`` is cast
    to it: bfloat16 after ``sgmg.model.precision``'s ``"bf16"``). At inference the hidden activations of the whole
    input (e.g. ``[24500, 2048]`` floats, 200 MB, in the deformable encoder at 5 x 360 x 640) would be written,
    activated and read back from memory, and so would the normalised input, its bfloat16 copy, the output, its
    float32 copy and the residual sum; in blocks of :data:`FFN_BLOCK_ELEMENTS` hidden values all of them stay in
    cache. Each row is computed with the same operations, so the result is the same up to the matrix multiply's own
    float rounding, which can depend on the row count. ``activation`` may work in place. With autograd recording or
    autocast on, one plain pass. No dropout: callers in training mode apply theirs around a plain FFN.
    """
    if records_grad(x, fc1.weight, fc2.weight) or torch.is_autocast_enabled(x.device.type):
        return _ffn(x, fc1, activation, fc2, pre, residual, post, plain=True)
    rows = x.reshape(-1, x.shape[-1])  # [N, C]
    n = rows.shape[0]
    out = rows.new_empty(n, fc2.out_features)  # [N, C_out]
    step = max(64, FFN_BLOCK_ELEMENTS // fc1.out_features)  # rows a block
    for start in range(0, n, step):
        out[start : start + step] = _ffn(rows[start : start + step], fc1, activation, fc2, pre, residual, post)
    return out.view(*x.shape[:-1], fc2.out_features)


def _ffn(
    x: Tensor,
    fc1: nn.Linear,
    activation: Callable[[Tensor], Tensor],
    fc2: nn.Linear,
    pre: Callable[[Tensor], Tensor] | None,
    residual: bool,
    post: Callable[[Tensor], Tensor] | None,
    plain: bool = False,
) -> Tensor:
    """:func:`feed_forward` of ``x [..., C]`` in one pass: by the modules (``plain``) or by :func:`linear`."""
    h = (pre(x) if pre is not None else x).to(fc1.weight.dtype)
    if plain:
        y = fc2(activation(fc1(h)))
    else:
        y = linear(activation(linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    y = x + y if residual else y.to(x.dtype)  # float32 + bfloat16 adds in float32
    return post(y) if post is not None else y


FFN_BLOCK_ELEMENTS = 2**20  # hidden activations a block (4 MB in float32: 512 rows of a 2048-wide FFN)
