"""Deformable transformer encoder-decoder of SgMg (Miao et al., ICCV 2023), after Deformable DETR (ICLR 2021).

Post-norm layers; every frame is an independent batch element (``B*T``), there is no temporal attention. The decoder
does iterative box refinement with the per-layer box heads passed in by the caller (references detached between
layers). Upstream: github.com/bo-miao/SgMg ``models/deformable_transformer.py`` (facts only; re-implemented).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from sgmg.model.layers import refine_boxes
from sgmg.model.ops.linear import feed_forward
from sgmg.model.ops.ms_deform_attn import MultiScaleDeformableAttention


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention + FFN, post-norm.

    Args:
        dim: model width C.
        ffn_dim: FFN width.
        dropout: dropout.
        num_levels: L.
        num_heads: heads.
        num_points: P.
    """

    def __init__(
        self, *, dim: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int, num_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            dim=dim, num_levels=num_levels, num_heads=num_heads, num_points=num_points
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        ref_points: Tensor,
        spatial_shapes: list[tuple[int, int]],
        pad_mask: Tensor | None,
    ) -> Tensor:
        """``src [B*T, sum(h*w), C]`` -> same shape."""
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, ref_points, src, spatial_shapes, pad_mask)))
        if self.training:
            ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
            return self.norm2(src + self.dropout3(ffn))
        # norm2(src + FFN(src)) in row blocks; the FFN in its weights' dtype (bfloat16 after sgmg.model.precision's
        # "bf16"), the rest in src's
        relu = functools.partial(F.relu, inplace=True)
        return feed_forward(src, self.linear1, relu, self.linear2, residual=True, post=self.norm2)


class DeformableDecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention and FFN, post-norm.

    Args:
        dim: model width C.
        ffn_dim: FFN width.
        dropout: dropout.
        num_levels: L.
        num_heads: heads.
        num_points: P.
    """

    def __init__(
        self, *, dim: int, ffn_dim: int, dropout: float, num_levels: int, num_heads: int, num_points: int
    ) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(
            dim=dim, num_levels=num_levels, num_heads=num_heads, num_points=num_points
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        ref_points: Tensor,
        memory: Tensor,
        spatial_shapes: list[tuple[int, int]],
        pad_mask: Tensor | None,
    ) -> Tensor:
        """``tgt [B*T, Q, C]`` -> same shape."""
        q = tgt + query_pos
        attn = self.self_attn(q, q, tgt, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        cross = self.cross_attn(tgt + query_pos, ref_points, memory, spatial_shapes, pad_mask)
        tgt = self.norm1(tgt + self.dropout1(cross))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


def _valid_ratios(mask: Tensor) -> Tensor:
    """``[B*T, h, w]`` padding mask -> ``[B*T, 2]`` (w, h) fraction of valid columns/rows."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


def _encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Pixel centres of every level, normalised to the valid region -> ``[B*T, sum(h*w), L, 2]``."""
    refs = []
    device = valid_ratios.device
    for lvl, (h, w) in enumerate(spatial_shapes):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    ref = torch.cat(refs, 1)  # [B*T, sum(h*w), 2]
    return ref[:, :, None] * valid_ratios[:, None]


class DeformableTransformer(nn.Module):
    """Deformable encoder over L levels and a decoder with iterative box refinement.

    Args:
        dim: model width C.
        num_heads: heads.
        enc_layers: encoder layers.
        dec_layers: decoder layers N.
        ffn_dim: FFN width.
        dropout: dropout.
        num_levels: L.
        enc_points: encoder sampling points.
        dec_points: decoder sampling points.
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        num_heads: int = 8,
        enc_layers: int = 4,
        dec_layers: int = 4,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        num_levels: int = 4,
        enc_points: int = 4,
        dec_points: int = 4,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(
                dim=dim,
                ffn_dim=ffn_dim,
                dropout=dropout,
                num_levels=num_levels,
                num_heads=num_heads,
                num_points=enc_points,
            )
            for _ in range(enc_layers)
        )
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            DeformableDecoderLayer(
                dim=dim,
                ffn_dim=ffn_dim,
                dropout=dropout,
                num_levels=num_levels,
                num_heads=num_heads,
                num_points=dec_points,
            )
            for _ in range(dec_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
        self.reference_points = nn.Linear(dim, 2)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier on every matrix, then the deformable-attention init, reference head xavier/0, level embed N(0,1)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def _run(self, layer: nn.Module, *args: object) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        tgt: Tensor,
        query_pos: Tensor,
        box_heads: nn.ModuleList,
    ) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """Encode the levels and decode the queries.

        Args:
            srcs: per level ``[B*T, C, h, w]``.
            masks: per level bool ``[B*T, h, w]``, True at padding.
            pos_embeds: per level ``[B*T, C, h, w]``.
            tgt: ``[B*T, Q, C]`` query content (the sentence feature).
            query_pos: ``[B*T, Q, C]`` query position embedding.
            box_heads: N box MLPs (``[..., C] -> [..., 4]``) used to refine the references after every layer.

        Returns:
            ``hs [N, B*T, Q, C]``; memory of the first ``L-1`` levels as ``[B*T, C, h, w]`` maps; initial reference
            points ``[B*T, Q, 2]``; detached per-layer references ``[N, B*T, Q, 4]`` (boxes after layer n).
        """
        spatial_shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # [B*T, sum(h*w), C]
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)  # [B*T, sum(h*w)]
        attn_mask = mask_flat if bool(mask_flat.any()) else None  # nothing to zero in the values without padding
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)],
            1,
        )  # [B*T, sum(h*w), C]
        valid_ratios = torch.stack([_valid_ratios(m) for m in masks], 1)  # [B*T, L, 2]

        enc_ref = _encoder_reference_points(spatial_shapes, valid_ratios)
        memory = src_flat
        for layer in self.encoder.layers:
            memory = self._run(layer, memory, pos_flat, enc_ref, spatial_shapes, attn_mask)

        ref = self.reference_points(query_pos).sigmoid()  # [B*T, Q, 2]
        init_ref = ref
        output = tgt
        hs, refs = [], []
        for lid, layer in enumerate(self.decoder.layers):
            if ref.shape[-1] == 4:
                ref_in = ref[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_in = ref[:, :, None] * valid_ratios[:, None]
            output = self._run(layer, output, query_pos, ref_in, memory, spatial_shapes, attn_mask)
            delta = box_heads[lid](output)  # [B*T, Q, 4]
            ref = refine_boxes(delta, ref).detach()  # [B*T, Q, 4]
            hs.append(output)
            refs.append(ref)

        bt, _, c = memory.shape
        maps = []
        start = 0
        for h, w in spatial_shapes[:-1]:
            maps.append(memory[:, start : start + h * w].transpose(1, 2).reshape(bt, c, h, w))  # [B*T, C, h, w]
            start += h * w
        return torch.stack(hs), maps, init_ref, torch.stack(refs)
