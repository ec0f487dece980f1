"""Output dataclasses of the SgMg model.

Axis legend (see ``sgmg/model/__init__.py``): B videos, T frames, Q queries per frame, K refined queries per
video, N decoder layers, H W padded input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LayerOutput:
    """Predictions of one decoder layer (training mode keeps one per layer).

    Attributes:
        pred_logits: ``[B, T, Q]`` score logits of every query in every frame.
        pred_boxes: ``[B, T, Q, 4]`` boxes as (cx, cy, w, h) in [0, 1], relative to the unpadded input size.
        pred_masks_low: ``[B, T, Q, H/2, W/2]`` stride-2 mask logits of every query before multi-granularity
            refinement, on the padded input grid.
        refined_queries: ``[B, K]`` indices of the queries that went through the refiner.
        pred_masks: ``[B, T, K, H, W]`` refined mask logits at padded input resolution for ``refined_queries``.
    """

    pred_logits: Tensor
    pred_boxes: Tensor
    pred_masks_low: Tensor
    refined_queries: Tensor
    pred_masks: Tensor


@dataclass
class SgMgOutput:
    """What ``SgMg.forward`` returns.

    Eval mode (the public contract of DESIGN.md):
        pred_logits: ``[B, T, Q]`` score logits of all queries (last decoder layer).
        pred_boxes: ``[B, T, Q, 4]`` (cx, cy, w, h) in [0, 1].
        best_query: ``[B]`` the query chosen for the video (highest mean score over frames).
        pred_masks: ``[B, T, H, W]`` refined mask logits of ``best_query`` at input resolution (cropped to the
            unpadded input size).

    Training mode additionally fills ``layers`` with one :class:`LayerOutput` per decoder layer (last layer last);
    ``pred_masks`` then holds the last layer's refined masks ``[B, T, K, H, W]``.
    """

    pred_logits: Tensor
    pred_boxes: Tensor
    best_query: Tensor
    pred_masks: Tensor
    layers: list[LayerOutput] = field(default_factory=list)
