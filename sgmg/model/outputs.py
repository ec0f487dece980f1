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

    Eval mode (the public contract, stable; see ``sgmg/__init__.py``):
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


@dataclass
class VisualFeatures:
    """The text-independent half of a forward pass (:meth:`SgMg.encode_video`), reusable for several expressions.

    Axis legend as above; L feature levels of the transformer (strides 8, 16, 32, 64).

    Attributes:
        backbone: the 4 backbone maps ``[B*T, C_i, H/s, W/s]``, s = 4, 8, 16, 32 (the refiner reads s = 4, 8).
        srcs: L projected maps ``[B*T, C, h_l, w_l]``.
        masks: L padding masks ``[B*T, h_l, w_l]``, True at padding.
        poses: L sine position embeddings ``[B*T, C, h_l, w_l]``.
        image_size: ``[B, 2]`` unpadded (h, w) of each video.
        num_frames: T.
        input_size: ``(H, W)`` of the video before padding.
        padded_size: ``(H', W')`` after padding to the stride multiple.
    """

    backbone: list[Tensor]
    srcs: list[Tensor]
    masks: list[Tensor]
    poses: list[Tensor]
    image_size: Tensor
    num_frames: int
    input_size: tuple[int, int]
    padded_size: tuple[int, int]

    @property
    def num_videos(self) -> int:
        """B."""
        return self.image_size.shape[0]

    def select(self, video_index: Tensor) -> VisualFeatures:
        """The features of videos ``video_index [N]`` (repeats allowed): every ``[B*T, ...]`` map -> ``[N*T, ...]``."""
        t = self.num_frames

        def pick(x: Tensor) -> Tensor:
            return x.unflatten(0, (-1, t))[video_index].flatten(0, 1)

        return VisualFeatures(
            backbone=[pick(x) for x in self.backbone],
            srcs=[pick(x) for x in self.srcs],
            masks=[pick(x) for x in self.masks],
            poses=[pick(x) for x in self.poses],
            image_size=self.image_size[video_index],
            num_frames=t,
            input_size=self.input_size,
            padded_size=self.padded_size,
        )
