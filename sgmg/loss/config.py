"""Matcher costs and loss weights of :class:`~sgmg.loss.criterion.SgMgCriterion` (built by
:func:`~sgmg.loss.criterion.build_criterion`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sgmg.config_io import is_number, require


@dataclass(frozen=True)
class LossConfig:
    """Matcher costs and loss weights (official defaults; aux layers use the same weights).

    Attributes:
        weight_score: score (class) sigmoid focal loss (``cls_loss_coef``).
        weight_bbox: box L1 loss (``bbox_loss_coef``).
        weight_giou: box GIoU loss (``giou_loss_coef``).
        weight_mask: mask sigmoid focal loss, full resolution and stride 2 (``mask_loss_coef``).
        weight_dice: mask dice loss, full resolution and stride 2 (``dice_loss_coef``).
        cost_class / cost_bbox / cost_giou / cost_mask / cost_dice: matcher cost weights (``set_cost_*``).
        focal_alpha / focal_gamma: focal loss parameters (losses and matcher costs).
        boxes_on_invalid_frames: the box losses include frames where the object is invisible (zero target boxes), as
            upstream does; False restricts them to visible frames.
        aux_loss: add the losses of every decoder layer (upstream), not just the last.
    """

    weight_score: float = 2.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    weight_mask: float = 2.0
    weight_dice: float = 5.0
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_mask: float = 2.0
    cost_dice: float = 5.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    boxes_on_invalid_frames: bool = True
    aux_loss: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if is_number(value):
                require(f.name, value, value >= 0, "a number >= 0 (loss weights and matcher costs)")
        require("focal_alpha", self.focal_alpha, 0 <= self.focal_alpha <= 1, "a probability in [0, 1]")
