"""Multi-granularity segmentation optimizer (MSO) of SgMg (Miao et al., ICCV 2023, Sec. 3.4).

Two residual conv stages refine the 16-channel patch-mask logits with raw visual-encoder features, first at stride 8,
then (after bilinear upsampling) at stride 4; ``pixel_shuffle(4)`` then gives full-resolution mask logits
(github.com/bo-miao/SgMg ``models/decoder.py``; facts only). The ReLU also applies to the mask channels of the concat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiGranularityRefiner(nn.Module):
    """Residual refinement of patch masks at strides 8 and 4.

    Args:
        mask_channels: patch-mask channels (16).
        feat_channels_s4: visual-encoder channels at stride 4.
        feat_channels_s8: visual-encoder channels at stride 8.
        patch_size: pixel-shuffle factor of the output (4).
    """

    def __init__(self, *, mask_channels: int, feat_channels_s4: int, feat_channels_s8: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.conv1_s8 = nn.Conv2d(mask_channels + feat_channels_s8, mask_channels, kernel_size=3, padding=1)
        self.conv2_s8 = nn.Conv2d(mask_channels, mask_channels, kernel_size=3, padding=1)
        self.conv1_s4 = nn.Conv2d(mask_channels + feat_channels_s4, mask_channels, kernel_size=3, padding=1)
        self.conv2_s4 = nn.Conv2d(mask_channels, mask_channels, kernel_size=3, padding=1)

    def forward(self, patch_logits: Tensor, feats_s4: Tensor, feats_s8: Tensor) -> Tensor:
        """Refine.

        Args:
            patch_logits: ``[N, mask_channels, H/8, W/8]``.
            feats_s4: ``[N, C4, H/4, W/4]`` raw visual features.
            feats_s8: ``[N, C8, H/8, W/8]`` raw visual features.

        Returns:
            ``[N, H, W]`` mask logits at ``patch_size`` times the stride-4 size (full resolution for 4).
        """
        x = torch.cat([patch_logits, feats_s8], dim=1)
        m = patch_logits + self.conv2_s8(F.relu(self.conv1_s8(F.relu(x))))
        m = F.interpolate(m, size=feats_s4.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([m, feats_s4], dim=1)
        m = m + self.conv2_s4(F.relu(self.conv1_s4(F.relu(x))))
        return F.pixel_shuffle(m, self.patch_size).squeeze(1)  # [N, H, W]
