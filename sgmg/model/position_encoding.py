"""Sine position embeddings (DETR / Deformable DETR normalisation), as used by SgMg (ICCV 2023).

Upstream: github.com/bo-miao/SgMg ``models/position_encoding.py`` (facts only; re-implemented).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(embed: Tensor) -> Tensor:
    """``[..., F] -> [..., F]`` with sin on even and cos on odd features, stacked then flattened (DETR order)."""
    return torch.stack((embed[..., 0::2].sin(), embed[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine2D(nn.Module):
    """2D sine embedding of a padded feature map, normalised to the valid region ``(cumsum - 0.5) / n * 2pi``.

    Args:
        num_feats: features per axis (output has ``2 * num_feats`` channels: y then x).
        temperature: frequency base.
    """

    def __init__(self, *, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, pad_mask: Tensor) -> Tensor:
        """Embed positions.

        Args:
            pad_mask: bool ``[N, H, W]``, True at padding.

        Returns:
            ``[N, 2*num_feats, H, W]`` float32.
        """
        not_mask = ~pad_mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = _frequencies(self.num_feats, self.temperature, pad_mask.device)
        pos_x = _interleave_sin_cos(x_embed[..., None] / dim_t)  # [N, H, W, F]
        pos_y = _interleave_sin_cos(y_embed[..., None] / dim_t)  # [N, H, W, F]
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [N, 2F, H, W]


class PositionEmbeddingSine1D(nn.Module):
    """1D sine embedding of a padded token sequence, normalised as ``cumsum / n * 2pi``.

    Args:
        num_feats: output channels.
        temperature: frequency base.
    """

    def __init__(self, *, num_feats: int = 256, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.scale = 2 * math.pi

    def forward(self, pad_mask: Tensor) -> Tensor:
        """Embed positions.

        Args:
            pad_mask: bool ``[B, S]``, True at padding.

        Returns:
            ``[B, S, num_feats]`` float32.
        """
        x_embed = (~pad_mask).cumsum(1, dtype=torch.float32)
        x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * self.scale
        dim_t = _frequencies(self.num_feats, self.temperature, pad_mask.device)
        return _interleave_sin_cos(x_embed[..., None] / dim_t)  # [B, S, C]
