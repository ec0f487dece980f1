"""Window attention of the Video Swin blocks: ``softmax(Q K^T / sqrt(D) + bias + shift mask) V`` in every window.

Two implementations behind :func:`window_attention`, the same up to float rounding:

- in inference on CPU with AVX-512, 32-wide heads, float32 or bfloat16 (AVX-512 BF16): a C++ kernel
  (``csrc/window_attention_cpu.cpp``, :mod:`sgmg.model.ops.cpu_kernels`) that reads Q, K and V from the qkv
  projection's output and writes the layout the output projection reads, with float32 scores, bias and softmax. On a
  5 x 360 x 640 clip's stage-1 windows, 2 cores: float32 1.8x faster than ``scaled_dot_product_attention`` with the
  same error against float64 (3e-6); bfloat16 2.4x faster than it in bfloat16 and 3-4x closer to the float32 result,
  as it does not round the bias to bf16;
- everywhere else (training, CUDA, other CPUs, other head widths, the kernels off):
  ``F.scaled_dot_product_attention`` over all windows with the bias alone, then again, with bias + mask, over the
  few windows whose shift mask is not zero.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from sgmg.model.layers import records_grad
from sgmg.model.ops.cpu_kernels import cpu_kernels

HEAD_DIM = 32  # the kernel's head width (every Video Swin variant's)


def window_attention(qkv: Tensor, bias: Tensor, window_mask: Tensor, masks: Tensor) -> Tensor:
    """Attend within each window.

    Args:
        qkv: ``[W, N, 3, heads, D]`` queries, keys and values of ``W`` windows of ``N`` tokens (the qkv projection's
            output, viewed).
        bias: ``[heads, N, N]`` relative-position bias.
        window_mask: ``[W]`` int64, the index in ``masks`` of each window's shift mask, or -1 for none.
        masks: ``[K, N, N]`` additive shift masks (0 or -100).

    Returns:
        ``[W, N, heads * D]`` in ``qkv``'s dtype (heads concatenated, as the output projection reads them).
    """
    w, n, _, heads, d = qkv.shape
    kernels = _kernels_for(qkv)
    if kernels is not None:
        return kernels.window_attention(
            qkv.contiguous(), bias.float().contiguous(), window_mask, masks.float().contiguous(), d**-0.5
        )
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [W, heads, N, D]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None].to(q.dtype))  # [W, heads, N, D]
    rows = (window_mask >= 0).nonzero().flatten()  # [E]
    if len(rows):
        # bias + 0 is bias: only the windows with a non-zero mask are attended again, with bias + mask
        mask = (bias[None] + masks[window_mask[rows]][:, None]).to(q.dtype)  # [E, heads, N, N]
        edge = F.scaled_dot_product_attention(q[rows], k[rows], v[rows], attn_mask=mask)
        out = out.index_copy(0, rows, edge) if out.requires_grad else out.index_copy_(0, rows, edge)
    return out.transpose(1, 2).reshape(w, n, heads * d)


def _kernels_for(qkv: Tensor) -> ModuleType | None:
    """The C++ kernels if they take ``qkv``: CPU, float32 or bfloat16, 32-wide heads, no autograd, kernels built,
    and the CPU has AVX-512 (and AVX-512 BF16 for bfloat16); else None."""
    if qkv.device.type != "cpu" or qkv.dtype not in (torch.float32, torch.bfloat16) or qkv.shape[-1] != HEAD_DIM:
        return None
    if records_grad(qkv):
        return None
    kernels = cpu_kernels()
    if kernels is None or not kernels.avx512_supported(qkv.dtype == torch.bfloat16):
        return None
    return kernels
