"""Video-level "instance sequence" matching of SgMg (Miao et al., ICCV 2023, arXiv 2307.13537).

Upstream: ``models/matcher.py`` of github.com/bo-miao/SgMg (itself from ReferFormer / DETR). The same query index is
used in every frame of a clip, so a query is matched to a referred object by a cost summed over the whole clip:

* class: sigmoid-focal-style cost ``alpha (1-p)^g (-log p) - (1-alpha) p^g (-log(1-p))`` averaged over the frames
  where the object is visible;
* box: L1 and -GIoU on (cx, cy, w, h), averaged over *all* frames (invisible frames have zero boxes, as upstream);
* mask: sigmoid focal and -dice (+1 smoothing) between the stride-2 pre-refinement masks and the ground truth
  subsampled ``gt[..., 1::2, 1::2]``, over all T*H*W pixels.

With one referred object the match is the ``argmin`` over queries (upstream); with several (MeViS-style expressions)
the queries x objects cost goes through ``scipy.optimize.linear_sum_assignment``.

Axis legend: B videos, T frames, Q queries, O referred objects of a video, K object slots (``max O`` in the batch, at
least 1), H W padded input size, h w = H/2 W/2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sgmg.data.schema import VideoTarget
from sgmg.loss.box_ops import cxcywh_to_xyxy, generalized_box_iou

# Stand-in for non-finite costs, so a NaN prediction still yields a valid assignment (the loss then reports it).
_BAD_COST = 1e8


@dataclass
class VideoMatch:
    """Matching of one decoder layer for a batch.

    Attributes:
        query_index: long ``[B, K]``: the query matched to object ``k`` of video ``b``. Slots without a matched object
            repeat the first slot's query (or hold 0), so the model can still refine ``K`` queries per video.
        slot_valid: bool ``[B, K]``: slot ``k`` of video ``b`` holds a real, matched object (``k < O_b``).
    """

    query_index: Tensor
    slot_valid: Tensor


def fit_masks(masks: Tensor, height: int, width: int) -> Tensor:
    """Zero-pad ``[..., h, w]`` ground-truth masks at the bottom/right to ``[..., height, width]``.

    Raises:
        ValueError: if the masks are larger than the prediction grid (they must be on the padded input grid).
    """
    h, w = masks.shape[-2:]
    if h > height or w > width:
        raise ValueError(
            f"target masks of size {h}x{w} do not fit the prediction grid {height}x{width}; targets must be on the "
            "padded input grid of the batch (collate pads to a multiple of 32, as the model does)"
        )
    if (h, w) == (height, width):
        return masks
    return F.pad(masks, (0, width - w, 0, height - h))


def subsample_stride2(masks: Tensor, height: int, width: int) -> Tensor:
    """Ground truth ``[..., H, W]`` -> ``[..., height, width]`` on the stride-2 grid (upstream: ``[..., 1::2, 1::2]``).

    The masks are first zero-padded to ``2*height x 2*width``.
    """
    return fit_masks(masks, 2 * height, 2 * width)[..., 1::2, 1::2]


class InstanceSequenceMatcher:
    """Match one query sequence to every referred object of each video (no learnable state).

    Args:
        cost_class: weight of the focal-style class cost.
        cost_bbox: weight of the L1 box cost.
        cost_giou: weight of the -GIoU box cost.
        cost_mask: weight of the sigmoid-focal mask cost.
        cost_dice: weight of the -dice mask cost.
        focal_alpha: focal alpha of the class and mask costs.
        focal_gamma: focal gamma of the class and mask costs.

    Raises:
        ValueError: if a weight is negative or all weights are zero.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 2.0,
        cost_dice: float = 5.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        weights |= {"cost_mask": cost_mask, "cost_dice": cost_dice}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ValueError(f"matcher cost weights must be >= 0, got {bad}")
        if not any(weights.values()):
            raise ValueError("all matcher cost weights are 0; set at least one of " + ", ".join(weights))
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(
        self, pred_logits: Tensor, pred_boxes: Tensor, pred_masks_low: Tensor, target: VideoTarget
    ) -> Tensor:
        """Matching cost of every query against every referred object of one video (float32, no autocast).

        Args:
            pred_logits: ``[T, Q]`` score logits.
            pred_boxes: ``[T, Q, 4]`` (cx, cy, w, h) in [0, 1].
            pred_masks_low: ``[T, Q, h, w]`` stride-2 mask logits before refinement.
            target: the video's target; ``masks`` ``[O, T, H, W]`` on the padded grid (``H = 2h`` after padding).

        Returns:
            ``[Q, O]`` cost; lower is better.
        """
        with torch.autocast(pred_logits.device.type, enabled=False):
            return self._cost_matrix(pred_logits.float(), pred_boxes.float(), pred_masks_low.float(), target)

    def _cost_matrix(self, logits: Tensor, boxes: Tensor, masks_low: Tensor, target: VideoTarget) -> Tensor:
        t, q, h, w = masks_low.shape
        alpha, gamma = self.focal_alpha, self.focal_gamma
        valid = target.valid.to(logits.device, torch.float32)  # [O, T]
        num_obj = valid.shape[0]
        cost = logits.new_zeros(q, num_obj)

        if self.cost_class:
            prob = logits.sigmoid()  # [T, Q]
            pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
            neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
            per_frame = pos - neg  # [T, Q]
            # mean over the frames where the object is visible; 0 for an object never visible in the clip
            cost_class = (valid @ per_frame) / valid.sum(1, keepdim=True).clamp(min=1)  # [O, Q]
            cost = cost + self.cost_class * cost_class.T

        if self.cost_bbox or self.cost_giou:
            gt_boxes = target.boxes.to(boxes)[:, :, None]  # [O, T, 1, 4]
            if self.cost_bbox:
                cost_bbox = (boxes[None] - gt_boxes).abs().sum(-1).mean(1)  # [O, Q]
                cost = cost + self.cost_bbox * cost_bbox.T
            if self.cost_giou:
                giou = generalized_box_iou(cxcywh_to_xyxy(boxes)[None], cxcywh_to_xyxy(gt_boxes))  # [O, T, Q]
                cost = cost + self.cost_giou * -giou.mean(1).T

        if self.cost_mask or self.cost_dice:
            gt = subsample_stride2(target.masks.to(masks_low), h, w).reshape(num_obj, t * h * w)  # [O, T*h*w]
            pred = masks_low.transpose(0, 1).reshape(q, t * h * w)  # [Q, T*h*w]
            if self.cost_mask:
                # Focal cost against binary targets, split into its y=1 and y=0 parts so it is two matmuls
                # instead of a [Q, O, T*h*w] tensor.
                prob = pred.sigmoid()
                pos = alpha * (1 - prob) ** gamma * F.softplus(-pred)  # focal term where y = 1
                neg = (1 - alpha) * prob**gamma * F.softplus(pred)  # focal term where y = 0
                cost_mask = (pos @ gt.T + neg @ (1 - gt).T) / (t * h * w)  # [Q, O]
                cost = cost + self.cost_mask * cost_mask
            if self.cost_dice:
                prob = pred.sigmoid()
                numerator = 2 * prob @ gt.T + 1  # [Q, O]
                denominator = prob.sum(1, keepdim=True) + gt.sum(1)[None] + 1  # [Q, O]
                cost = cost + self.cost_dice * -(numerator / denominator)
        return cost

    @torch.no_grad()
    def __call__(
        self, pred_logits: Tensor, pred_boxes: Tensor, pred_masks_low: Tensor, targets: Sequence[VideoTarget]
    ) -> VideoMatch:
        """Match every video of a batch.

        Args:
            pred_logits: ``[B, T, Q]`` score logits.
            pred_boxes: ``[B, T, Q, 4]``.
            pred_masks_low: ``[B, T, Q, h, w]`` stride-2 mask logits.
            targets: one :class:`VideoTarget` per video.

        Returns:
            The :class:`VideoMatch` of the batch (on the predictions' device).
        """
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {pred_logits.shape[0]} videos")
        num_slots = max([1] + [int(tgt.valid.shape[0]) for tgt in targets])
        query_index = torch.zeros(len(targets), num_slots, dtype=torch.long)
        slot_valid = torch.zeros(len(targets), num_slots, dtype=torch.bool)
        for b, tgt in enumerate(targets):
            num_obj = int(tgt.valid.shape[0])
            if num_obj == 0:
                continue
            cost = self.cost_matrix(pred_logits[b], pred_boxes[b], pred_masks_low[b], tgt)
            cost = torch.nan_to_num(cost, nan=_BAD_COST, posinf=_BAD_COST, neginf=-_BAD_COST).cpu()
            if num_obj == 1:
                query_index[b, 0] = cost[:, 0].argmin()
                slot_valid[b, 0] = True
            else:
                queries, objects = linear_sum_assignment(cost.numpy())
                query_index[b, torch.as_tensor(objects)] = torch.as_tensor(queries, dtype=torch.long)
                slot_valid[b, torch.as_tensor(objects)] = True
            # unmatched slots (padding, or more objects than queries) repeat the first matched query
            first = query_index[b, slot_valid[b]][0]
            query_index[b, ~slot_valid[b]] = first
        device = pred_logits.device
        return VideoMatch(query_index.to(device), slot_valid.to(device))


class QuerySelector:
    """The ``query_selector`` the model calls once per decoder layer in training; it remembers every match.

    ``model(video, ids, mask, query_selector=selector)`` calls ``selector(layer_index, pred_logits, pred_boxes,
    pred_masks_low)`` and refines the returned ``[B, K]`` queries; ``selector.matches`` then holds one
    :class:`VideoMatch` per call, in call order (decoder layer order), for the criterion.

    Args:
        matcher: the matcher.
        targets: one :class:`VideoTarget` per video of the batch.
    """

    def __init__(self, matcher: InstanceSequenceMatcher, targets: Sequence[VideoTarget]) -> None:
        self.matcher = matcher
        self.targets = list(targets)
        self.matches: list[VideoMatch] = []
        self.layer_indices: list[int] = []

    def __call__(self, layer_index: int, pred_logits: Tensor, pred_boxes: Tensor, pred_masks_low: Tensor) -> Tensor:
        """Match one decoder layer.

        Args:
            layer_index: decoder layer (0-based).
            pred_logits: ``[B, T, Q]``.
            pred_boxes: ``[B, T, Q, 4]``.
            pred_masks_low: ``[B, T, Q, h, w]``.

        Returns:
            long ``[B, K]`` queries to refine.
        """
        match = self.matcher(pred_logits, pred_boxes, pred_masks_low, self.targets)
        self.matches.append(match)
        self.layer_indices.append(int(layer_index))
        return match.query_index


def make_query_selector(matcher: InstanceSequenceMatcher, targets: Sequence[VideoTarget]) -> QuerySelector:
    """A fresh :class:`QuerySelector` for one batch (build one per forward pass)."""
    return QuerySelector(matcher, targets)
