"""Training losses of SgMg (Miao et al., ICCV 2023, arXiv 2307.13537).

Upstream: ``models/criterion.py`` and ``models/segmentation.py`` of github.com/bo-miao/SgMg (from ReferFormer / DETR).
For every decoder layer, with that layer's own video-level match (:mod:`sgmg.loss.matcher`):

* ``score``: sigmoid focal loss on all ``T*Q`` score logits; target 1 for the matched query in the frames where the
  object is visible, 0 elsewhere; summed and divided by ``num_boxes``.
* ``bbox`` / ``giou``: L1 and ``1 - GIoU`` of the matched query's boxes, summed over frames and divided by
  ``num_boxes``. Upstream includes the frames where the object is invisible (zero target boxes); that is the default
  here too and ``boxes_on_invalid_frames=False`` restricts both terms to visible frames.
* ``mask`` / ``dice``: sigmoid focal (mean over ``T*H*W``) and dice (+1 smoothing) of the refined full-resolution masks
  of the matched query, all frames, summed over objects and divided by ``num_boxes``.
* ``mask_low`` / ``dice_low``: the same on the stride-2 pre-refinement masks against ``gt[..., 1::2, 1::2]``.

``num_boxes`` is the number of (object, frame) pairs where the object is visible, averaged over the data-parallel
workers and clamped to >= 1. The weighted total sums every term of every layer with the same weights (upstream's
aux losses use the main weights).

Axis legend: B videos, T frames, Q queries, K object slots, N decoder layers, H W padded input size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from sgmg.data.schema import VideoTarget
from sgmg.loss.box_ops import cxcywh_to_xyxy, generalized_box_iou
from sgmg.loss.config import LossConfig
from sgmg.loss.matcher import InstanceSequenceMatcher, VideoMatch, fit_masks, subsample_stride2
from sgmg.model.outputs import LayerOutput, SgMgOutput

# term name -> upstream loss key (last layer; aux layer i gets the suffix ``_i``)
UPSTREAM_NAMES = {
    "score": "loss_ce",
    "bbox": "loss_bbox",
    "giou": "loss_giou",
    "mask": "loss_mask",
    "dice": "loss_dice",
    "mask_low": "loss_mask_low",
    "dice_low": "loss_dice_low",
}


@dataclass
class LayerLosses:
    """Unweighted loss terms of one decoder layer (scalar tensors)."""

    score: Tensor
    bbox: Tensor
    giou: Tensor
    mask: Tensor
    dice: Tensor
    mask_low: Tensor
    dice_low: Tensor


@dataclass
class LossOutput:
    """What :class:`SgMgCriterion` returns.

    Attributes:
        total: weighted sum of every term of every used layer (the tensor to back-propagate).
        layers: unweighted terms per decoder layer, last layer last (only the last layer without aux losses).
        num_boxes: the normaliser (visible object-frames, averaged over workers, >= 1).
        matches: the match of every decoder layer, last layer last.
    """

    total: Tensor
    layers: list[LayerLosses]
    num_boxes: float
    matches: list[VideoMatch]

    def as_dict(self) -> dict[str, Tensor]:
        """Every unweighted term under upstream's key (``loss_ce``, ``loss_dice_low_0``, ...) plus ``loss`` (total)."""
        out: dict[str, Tensor] = {}
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            suffix = "" if i == last else f"_{i}"
            for f in fields(layer):
                out[UPSTREAM_NAMES[f.name] + suffix] = getattr(layer, f.name)
        out["loss"] = self.total
        return out


def distributed_mean(value: Tensor) -> Tensor:
    """Average ``value`` over the workers of the default process group (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


@dataclass
class _PackedTargets:
    """Targets of a batch padded to K object slots."""

    valid: Tensor  # bool [B, K, T]
    boxes: Tensor  # float [B, K, T, 4]
    masks: Tensor  # float [B, K, T, H, W]


def _pack_targets(
    targets: Sequence[VideoTarget], num_slots: int, num_frames: int, height: int, width: int, device: torch.device
) -> _PackedTargets:
    batch = len(targets)
    valid = torch.zeros(batch, num_slots, num_frames, dtype=torch.bool, device=device)
    boxes = torch.zeros(batch, num_slots, num_frames, 4, device=device)
    masks = torch.zeros(batch, num_slots, num_frames, height, width, device=device)
    for b, tgt in enumerate(targets):
        num_obj = tgt.valid.shape[0]
        if num_obj == 0:
            continue
        if tgt.valid.shape[1] != num_frames:
            raise ValueError(f"target {b} has {tgt.valid.shape[1]} frames but the predictions have {num_frames}")
        valid[b, :num_obj] = tgt.valid.to(device, torch.bool)
        boxes[b, :num_obj] = tgt.boxes.to(device, torch.float32)
        masks[b, :num_obj] = fit_masks(tgt.masks.to(device, torch.float32), height, width)
    return _PackedTargets(valid, boxes, masks)


def _gather_queries(x: Tensor, query_index: Tensor) -> Tensor:
    """``[B, T, Q, ...]`` -> ``[B, K, T, ...]``: the matched query of every slot."""
    b, t = x.shape[:2]
    index = query_index[:, None, :].expand(b, t, -1)  # [B, T, K]
    index = index.reshape(b, t, -1, *([1] * (x.dim() - 3))).expand(b, t, -1, *x.shape[3:])  # [B, T, K, ...]
    return x.gather(2, index).transpose(1, 2)  # [B, K, T, ...]


def _mask_losses(logits: Tensor, target: Tensor, weight: Tensor, alpha: float, gamma: float) -> tuple[Tensor, Tensor]:
    """Focal (mean over pixels) and dice of ``[B, K, ...]`` mask logits, weighted per slot ``[B, K]`` and summed."""
    logits = logits.flatten(2)  # [B, K, T*H*W]
    target = target.flatten(2)
    focal = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none").mean(-1)  # [B, K]
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)  # [B, K]
    return (focal * weight).sum(), (dice * weight).sum()


class SgMgCriterion(nn.Module):
    """Matching + loss of SgMg (no learnable parameters).

    Args:
        matcher: the video-level matcher (also used to build the model's ``query_selector``).
        weight_score: weight of the score focal loss.
        weight_bbox: weight of the L1 box loss.
        weight_giou: weight of the GIoU loss.
        weight_mask: weight of the mask focal losses (full resolution and stride 2).
        weight_dice: weight of the dice losses (full resolution and stride 2).
        focal_alpha: alpha of the focal losses.
        focal_gamma: gamma of the focal losses.
        boxes_on_invalid_frames: include frames where the object is invisible (zero target boxes) in the box losses,
            as upstream does.
        aux_loss: add the losses of every decoder layer (upstream); otherwise only the last layer's.
        reduce_num_boxes: averages the ``num_boxes`` tensor over data-parallel workers; defaults to
            :func:`distributed_mean` (all-reduce when ``torch.distributed`` is initialised).

    Raises:
        ValueError: if a weight is negative.
    """

    def __init__(
        self,
        *,
        matcher: InstanceSequenceMatcher,
        weight_score: float = 2.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        weight_mask: float = 2.0,
        weight_dice: float = 5.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        boxes_on_invalid_frames: bool = True,
        aux_loss: bool = True,
        reduce_num_boxes: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.weights = {"score": weight_score, "bbox": weight_bbox, "giou": weight_giou}
        self.weights |= {"mask": weight_mask, "dice": weight_dice, "mask_low": weight_mask, "dice_low": weight_dice}
        bad = {k: v for k, v in self.weights.items() if v < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.boxes_on_invalid_frames = boxes_on_invalid_frames
        self.aux_loss = aux_loss
        self.reduce_num_boxes = reduce_num_boxes or distributed_mean

    def weighted_sum(self, terms: LayerLosses) -> Tensor:
        """``sum_i weight_i * term_i`` of one layer."""
        return sum(self.weights[f.name] * getattr(terms, f.name) for f in fields(terms))

    def num_boxes(self, targets: Sequence[VideoTarget], device: torch.device) -> float:
        """Visible (object, frame) pairs in the batch, averaged over workers, clamped to >= 1."""
        count = sum(float(t.valid.sum()) for t in targets)
        return float(self.reduce_num_boxes(torch.tensor([count], device=device)).clamp(min=1).item())

    def forward(
        self, output: SgMgOutput, targets: Sequence[VideoTarget], matches: Sequence[VideoMatch] | None = None
    ) -> LossOutput:
        """Compute every loss term of every decoder layer.

        Args:
            output: training-mode model output; ``output.layers`` holds one :class:`LayerOutput` per decoder layer.
            targets: one :class:`VideoTarget` per video.
            matches: the per-layer matches the model's query selector made (``QuerySelector.matches``); recomputed
                with ``self.matcher`` when None.

        Returns:
            A :class:`LossOutput`.

        Raises:
            ValueError: if ``output`` has no layers (eval-mode output) or the matches do not fit the layers.
            RuntimeError: if the model refined other queries than the match picks.
        """
        layers = output.layers
        if not layers:
            raise ValueError("SgMgCriterion needs a training-mode output (output.layers is empty); call model.train()")
        if matches is None:
            matches = [
                self.matcher(layer.pred_logits, layer.pred_boxes, layer.pred_masks_low, targets) for layer in layers
            ]
        if len(matches) != len(layers):
            raise ValueError(f"got {len(matches)} matches for {len(layers)} decoder layers")
        for i, (layer, match) in enumerate(zip(layers, matches, strict=True)):
            if not torch.equal(layer.refined_queries, match.query_index):
                raise RuntimeError(
                    f"decoder layer {i} refined queries {layer.refined_queries.tolist()} but the match picks "
                    f"{match.query_index.tolist()}; run the model with query_selector=make_query_selector(matcher, "
                    "targets) and pass selector.matches to the criterion"
                )

        last = layers[-1]
        b, t, _, h, w = last.pred_masks.shape
        device = last.pred_logits.device
        packed = _pack_targets(targets, matches[-1].query_index.shape[1], t, h, w, device)
        packed_low = subsample_stride2(packed.masks, *last.pred_masks_low.shape[-2:])  # [B, K, T, h, w]
        num_boxes = self.num_boxes(targets, device)

        used = list(zip(layers, matches, strict=True))
        if not self.aux_loss:
            used = used[-1:]
        terms = [self._layer_losses(layer, match, packed, packed_low, num_boxes) for layer, match in used]
        total = sum(self.weighted_sum(x) for x in terms)
        return LossOutput(total=total, layers=terms, num_boxes=num_boxes, matches=list(matches))

    def _layer_losses(
        self, layer: LayerOutput, match: VideoMatch, packed: _PackedTargets, packed_low: Tensor, num_boxes: float
    ) -> LayerLosses:
        alpha, gamma = self.focal_alpha, self.focal_gamma
        slot = match.slot_valid  # [B, K]
        slot_f = slot.float()
        logits = layer.pred_logits.float()  # [B, T, Q]
        num_queries = logits.shape[-1]

        # score: 1 for the matched query in the frames where its object is visible
        visible = packed.valid & slot[:, :, None]  # [B, K, T]
        onehot = F.one_hot(match.query_index, num_queries).float()  # [B, K, Q]
        score_target = (visible.float()[..., None] * onehot[:, :, None]).amax(1)  # [B, T, Q]
        score = sigmoid_focal_loss(logits, score_target, alpha=alpha, gamma=gamma, reduction="sum") / num_boxes

        # boxes of the matched query
        pred_boxes = _gather_queries(layer.pred_boxes.float(), match.query_index)  # [B, K, T, 4]
        box_weight = visible if not self.boxes_on_invalid_frames else slot[:, :, None].expand_as(visible)
        box_weight = box_weight.float()  # [B, K, T]
        l1 = (pred_boxes - packed.boxes).abs().sum(-1)  # [B, K, T]
        giou = generalized_box_iou(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(packed.boxes))  # [B, K, T]
        bbox = (l1 * box_weight).sum() / num_boxes
        giou_loss = ((1 - giou) * box_weight).sum() / num_boxes

        # refined full-resolution masks: already one per slot, [B, T, K, H, W]
        mask, dice = _mask_losses(layer.pred_masks.float().transpose(1, 2), packed.masks, slot_f, alpha, gamma)
        low = _gather_queries(layer.pred_masks_low.float(), match.query_index)  # [B, K, T, h, w]
        mask_low, dice_low = _mask_losses(low, packed_low, slot_f, alpha, gamma)
        return LayerLosses(
            score=score,
            bbox=bbox,
            giou=giou_loss,
            mask=mask / num_boxes,
            dice=dice / num_boxes,
            mask_low=mask_low / num_boxes,
            dice_low=dice_low / num_boxes,
        )


def build_criterion(
    cfg: LossConfig, reduce_num_boxes: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> SgMgCriterion:
    """The matcher and criterion of a :class:`~sgmg.loss.config.LossConfig`.

    ``reduce_num_boxes``: see :class:`SgMgCriterion` (default: the all-reduce over data-parallel workers; pass an
    identity for a loss computed by one rank alone, e.g. validation on rank 0, which would otherwise wait forever).
    """
    matcher = InstanceSequenceMatcher(
        cost_class=cfg.cost_class,
        cost_bbox=cfg.cost_bbox,
        cost_giou=cfg.cost_giou,
        cost_mask=cfg.cost_mask,
        cost_dice=cfg.cost_dice,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
    )
    return SgMgCriterion(
        matcher=matcher,
        weight_score=cfg.weight_score,
        weight_bbox=cfg.weight_bbox,
        weight_giou=cfg.weight_giou,
        weight_mask=cfg.weight_mask,
        weight_dice=cfg.weight_dice,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
        boxes_on_invalid_frames=cfg.boxes_on_invalid_frames,
        aux_loss=cfg.aux_loss,
        reduce_num_boxes=reduce_num_boxes,
    )
