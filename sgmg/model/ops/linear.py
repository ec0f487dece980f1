"""Linear layers for few rows: ``F.linear``, or a C++ kernel when the input has at most :data:`MAX_ROWS` rows.

At inference the text encoder multiplies about a dozen token rows (one sentence) by each of RoBERTa-base's weight
matrices, and the decoder a few dozen query rows: the matrices are read once per forward and PyTorch's GEMM spends
more time packing them than multiplying. The kernel (``csrc/few_rows_linear_cpu.cpp``) reads each weight row once in
its ``nn.Linear`` layout: on 2 cores RoBERTa-base's linears on a 12-token sentence take about half the time, and the
exact-mode forward at 3 x 192 x 256 about 5 % less (``README.md``, "Speed"). The same function up to float
rounding (the summation order differs).

:func:`use_few_rows_kernel` turns a model's ``nn.Linear`` layers (those of the transformers text encoder too) into
:class:`FewRowsLinear`, which keeps their parameters and state-dict keys and changes only how the forward runs: the
kernel in inference on AVX-512 CPUs, in float32, for at most :data:`MAX_ROWS` rows; ``F.linear`` everywhere else
(training, CUDA, bfloat16 weights, more rows, other CPUs, the kernels off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgmg.model.layers import records_grad
from sgmg.model.ops.cpu_kernels import cpu_kernels

MAX_ROWS = 64  # the kernel was faster than PyTorch's GEMM up to 64 rows of RoBERTa-base's shapes (2 cores)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``[..., K] -> [..., N]`` with ``weight [N, K]``, ``bias [N]`` or None."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if (
        0 < rows <= MAX_ROWS
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and weight.is_contiguous()
        and not records_grad(x, weight, *(() if bias is None else (bias,)))
    ):
        kernels = cpu_kernels()
        if kernels is not None and kernels.avx512_supported(False):
            out = kernels.few_rows_linear(x.reshape(rows, x.shape[-1]).contiguous(), weight, bias)  # [rows, N]
            return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear` (the same parameters, state-dict keys and results)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def use_few_rows_kernel(model: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`FewRowsLinear`, in place (subclasses such as
    ``nn.MultiheadAttention``'s output projection are left alone); returns ``model``."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear
    return model
