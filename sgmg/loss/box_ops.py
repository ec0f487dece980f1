"""Box helpers for the SgMg matcher and criterion.

Boxes are (cx, cy, w, h) normalised to [0, 1]; conversions use ``torchvision.ops.box_convert``.

Why a GIoU of our own instead of ``torchvision.ops.generalized_box_iou``: the official SgMg code (inherited from
ReferFormer) adds ``eps = 1e-6`` to the IoU and to the enclosing-area term. Ground-truth boxes of frames where the
object is invisible are all zeros and still enter the box losses and matching costs, so they hit the degenerate case
where torchvision divides 0 by 0 (NaN) and the eps-regularised form gives a finite value. Keeping the eps also makes
the criterion match the official numbers to 1e-5. The function broadcasts, so one implementation serves both the
pairwise matcher cost (``a[:, None]`` vs ``b[None]``) and the element-wise loss.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x0, y0, x1, y1)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def generalized_box_iou(boxes_a: Tensor, boxes_b: Tensor, eps: float = 1e-6) -> Tensor:
    """Generalized IoU of broadcastable (x0, y0, x1, y1) boxes, with the official eps regularisation.

    ``giou = (inter + eps) / (union + eps) - (enclose - union + eps) / (enclose + eps)``.

    Args:
        boxes_a: ``[..., 4]`` boxes in xyxy format.
        boxes_b: ``[..., 4]`` boxes in xyxy format, broadcastable against ``boxes_a``.
        eps: regulariser; 1e-6 in the official code, 0 gives the textbook GIoU.

    Returns:
        ``[...]`` GIoU in [-1, 1] of every broadcast pair.
    """
    area_a = (boxes_a[..., 2] - boxes_a[..., 0]) * (boxes_a[..., 3] - boxes_a[..., 1])
    area_b = (boxes_b[..., 2] - boxes_b[..., 0]) * (boxes_b[..., 3] - boxes_b[..., 1])
    inter_wh = torch.minimum(boxes_a[..., 2:], boxes_b[..., 2:]) - torch.maximum(boxes_a[..., :2], boxes_b[..., :2])
    inter_wh = inter_wh.clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area_a + area_b - inter
    iou = (inter + eps) / (union + eps)
    enclose_wh = torch.maximum(boxes_a[..., 2:], boxes_b[..., 2:]) - torch.minimum(boxes_a[..., :2], boxes_b[..., :2])
    enclose_wh = enclose_wh.clamp(min=0)
    enclose = enclose_wh[..., 0] * enclose_wh[..., 1]
    return iou - (enclose - union + eps) / (enclose + eps)
