"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) of SgMg's transformer.

Two implementations behind :func:`ms_deform_attn`, numerically the same as the CUDA kernel used by
github.com/bo-miao/SgMg (``models/ops``: bilinear sampling with zero padding, ``align_corners=False``):

- on CPU, float32: a C++ kernel (``csrc/ms_deform_attn_cpu.cpp``, :mod:`sgmg.model.ops.cpu_kernels`) that fuses the
  sampling with the attention weighting and the level sum, forward and backward (5x faster than the PyTorch
  formulation in eval and 4x in training at the Swin-T encoder's shapes on 2 cores);
- everywhere else (CUDA, float64, or the kernels off or unbuildable): :func:`ms_deform_attn_pytorch`, one
  ``F.grid_sample`` per level on ``[B*M, D, h, w]`` values whose points are weighted and summed at once, so the
  ``[B*M, D, Lq, L*P]`` stack of the reference implementation is never materialised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgmg.model.layers import records_grad
from sgmg.model.ops.cpu_kernels import cpu_kernels


def ms_deform_attn(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Sample multi-level values at fractional locations and take the attention-weighted sum.

    Args:
        value: ``[B, sum(h*w), M, D]`` per-head values (M heads, D channels per head).
        spatial_shapes: ``L`` pairs ``(h, w)`` of the levels, in the order they are concatenated in ``value``.
        sampling_locations: ``[B, Lq, M, L, P, 2]`` (x, y) in [0, 1] of each level's padded map.
        attention_weights: ``[B, Lq, M, L, P]``, normalised over ``L*P``.

    Returns:
        ``[B, Lq, M*D]``.
    """
    tensors = (value, sampling_locations, attention_weights)
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        kernels = cpu_kernels()
        if kernels is not None:
            shapes = torch.tensor(spatial_shapes, dtype=torch.long)  # [L, 2]
            return _CPUDeformAttn.apply(value, shapes, sampling_locations, attention_weights, kernels)
    return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)


class _CPUDeformAttn(torch.autograd.Function):
    """The C++ kernel's forward and backward as one autograd op (no gradient for the shapes)."""

    @staticmethod
    def forward(ctx, value, shapes, locations, weights, kernels):  # type: ignore[override]
        ctx.save_for_backward(value, shapes, locations, weights)
        ctx.kernels = kernels
        return kernels.forward(value, shapes, locations, weights)  # [B, Lq, M*D]

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        value, shapes, locations, weights = ctx.saved_tensors
        grad_value, grad_loc, grad_weights = ctx.kernels.backward(value, shapes, locations, weights, grad_out)
        return grad_value, None, grad_loc, grad_weights, None


def ms_deform_attn_pytorch(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """:func:`ms_deform_attn` in PyTorch ops (any device and dtype; same arguments and result)."""
    b, _, m, d = value.shape
    _, lq, _, _, p, _ = sampling_locations.shape
    grids = (2 * sampling_locations - 1).transpose(1, 2)  # [B, M, Lq, L, P, 2]
    weights = attention_weights.transpose(1, 2)  # [B, M, Lq, L, P]
    out = None
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(b * m, d, h, w)  # [B*M, D, h, w]
        start += h * w
        g = grids[:, :, :, lvl].reshape(b * m, lq, p, 2)  # [B*M, Lq, P, 2]
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*M, D, Lq, P]
        # weight the P points of this level and sum them right away (no [.., L*P] stack to materialise)
        contrib = (sampled * weights[:, :, :, lvl].reshape(b * m, 1, lq, p)).sum(-1)  # [B*M, D, Lq]
        out = contrib if out is None else out + contrib
    return out.view(b, m * d, lq).transpose(1, 2)  # [B, Lq, M*D]


def _samples_first(queries: int, heads: int, points: int, value_in: Tensor) -> bool:
    """Whether sampling ``value_in [B, S, C]`` before its projection is fewer multiplies: each (query, head) gathers
    ``points`` x 4 bilinear corners of all C channels and projects its sum to C / heads channels, against a C x C
    projection of all S values."""
    _, s, c = value_in.shape
    return queries * heads * (points * 4 + c // heads) < s * c


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L feature levels with P sampling points per head and level.

    Args:
        dim: model width C.
        num_levels: L.
        num_heads: M.
        num_points: P.

    Raises:
        ValueError: if ``dim`` is not divisible by ``num_heads``.
    """

    def __init__(self, *, dim: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets on a ring of directions (point k at distance k+1), uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value_in: Tensor,
        spatial_shapes: list[tuple[int, int]],
        pad_mask: Tensor | None,
    ) -> Tensor:
        """Attend.

        Args:
            query: ``[B, Lq, C]``.
            reference_points: ``[B, Lq, L, 2]`` (x, y) or ``[B, Lq, L, 4]`` boxes (cx, cy, w, h), in [0, 1] of each
                level's padded map.
            value_in: ``[B, sum(h*w), C]`` flattened levels.
            spatial_shapes: ``L`` pairs ``(h, w)``.
            pad_mask: bool ``[B, sum(h*w)]`` True at padding, or None.

        Returns:
            ``[B, Lq, C]`` float32 (the op always runs in float32, also under autocast).
        """
        with torch.autocast(device_type=query.device.type, enabled=False):  # float32, as the official op
            return self._forward(query.float(), reference_points.float(), value_in.float(), spatial_shapes, pad_mask)

    def _forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value_in: Tensor,
        spatial_shapes: list[tuple[int, int]],
        pad_mask: Tensor | None,
    ) -> Tensor:
        b, lq, _ = query.shape
        m, num_levels, p = self.num_heads, self.num_levels, self.num_points
        locations, weights = self._locations_and_weights(query, reference_points, spatial_shapes)
        # Few queries over many values (the decoder: Q per frame against every pixel of 4 levels): sample the
        # unprojected input first and project the samples when that is fewer multiplies than projecting every value.
        if not records_grad(query, value_in, *self.parameters()) and _samples_first(lq, m, num_levels * p, value_in):
            return self.output_proj(self._sample_then_project(value_in, pad_mask, spatial_shapes, locations, weights))
        value = self.value_proj(value_in)
        if pad_mask is not None:  # in place when nothing is recorded (value is this function's own tensor)
            fill = value.masked_fill if records_grad(value) else value.masked_fill_
            value = fill(pad_mask[..., None], 0.0)
        value = value.view(b, value.shape[1], m, self.dim // m)  # [B, sum(h*w), M, D]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))

    def _locations_and_weights(
        self, query: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Sampling locations ``[B, Lq, M, L, P, 2]`` and softmaxed attention weights ``[B, Lq, M, L, P]``."""
        b, lq, _ = query.shape
        m, num_levels, p = self.num_heads, self.num_levels, self.num_points
        lp2 = num_levels * p * 2
        offsets = self.sampling_offsets(query).view(b, lq, m, lp2)  # (x, y) of each level's points
        weights = self.attention_weights(query).view(b, lq, m, num_levels * p).softmax(-1)
        weights = weights.view(b, lq, m, num_levels, p)
        if reference_points.shape[-1] == 2:
            ref = reference_points[:, :, None, :, None, :]  # [B, Lq, 1, L, 1, 2]
            scale = torch.tensor(
                [[1.0 / w, 1.0 / h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device
            )[:, None, :]  # [L, 1, 2] as (1/w, 1/h)
        else:
            refs = reference_points[:, :, None, :, None]  # [B, Lq, 1, L, 1, 4]
            ref, scale = refs[..., :2], refs[..., 2:] * (0.5 / p)  # [B, Lq, 1, L, 1, 2] each
        # ref + offsets * scale as one fused multiply-add (the reference divides, then adds: the same up to the last
        # bit of the scale), with each (query, head)'s L*P*2 values innermost: ref and scale are expanded over the P
        # points first (the same values; broadcasting them over the 2-wide last dim was 7x slower)
        ref = ref.expand(b, lq, 1, num_levels, p, 2).reshape(b, lq, 1, lp2)
        scale = scale.expand(*scale.shape[:-3], num_levels, p, 2).reshape(*scale.shape[:-3], lp2)
        locations = torch.addcmul(ref, offsets, scale).view(b, lq, m, num_levels, p, 2)
        return locations, weights

    def _sample_then_project(
        self,
        value_in: Tensor,
        pad_mask: Tensor | None,
        spatial_shapes: list[tuple[int, int]],
        locations: Tensor,
        weights: Tensor,
    ) -> Tensor:
        """:func:`ms_deform_attn` of the projected values, computed by sampling ``value_in`` and projecting after.

        The value projection is affine and the sampling is a weighted sum, so for head ``m`` the sum of
        ``w_k * (x_k @ W_m.T + b_m)`` is ``(sum w_k x_k) @ W_m.T + (sum w_k) b_m``, where ``sum w_k`` counts only the
        bilinear corners inside the map (outside ones add zero), which sampling a map of ones (zeros at padding) gives.
        Every (query, head) pair samples the C input channels as one head of its own. The same value up to float
        summation order (at 5 x 360 x 640 the decoder's 4 value projections alone took 0.1 s; its 4 cross-attentions
        now take about 20 ms in all).

        ``value_in [B, S, C]``, ``locations [B, Lq, M, L, P, 2]``, ``weights [B, Lq, M, L, P]`` -> ``[B, Lq, M*D]``.
        """
        b, s, c = value_in.shape
        _, lq, m, num_levels, p, _ = locations.shape
        if pad_mask is None:
            x, valid = value_in, value_in.new_ones(b, s)
        else:  # padded rows add nothing, as the projected values are zeroed there
            x, valid = value_in.masked_fill(pad_mask[..., None], 0.0), (~pad_mask).to(value_in.dtype)
        locations = locations.reshape(b, lq * m, 1, num_levels, p, 2)  # each (query, head) as a query of one head
        weights = weights.reshape(b, lq * m, 1, num_levels, p)
        sums = ms_deform_attn(x.reshape(b, s, 1, c), spatial_shapes, locations, weights).view(b, lq, m, c)
        counts = ms_deform_attn(valid.view(b, s, 1, 1), spatial_shapes, locations, weights).view(b, lq, m, 1)
        w = self.value_proj.weight.view(m, c // m, c)  # [M, D, C]
        heads = torch.einsum("bqmc,mdc->bqmd", sums, w) + counts * self.value_proj.bias.view(m, c // m)  # [B,Lq,M,D]
        return heads.reshape(b, lq, c)
