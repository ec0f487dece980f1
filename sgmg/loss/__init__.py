"""Matching and losses of SgMg: :class:`InstanceSequenceMatcher` (video-level matching, also the model's training
``query_selector`` via :func:`make_query_selector`) and :class:`SgMgCriterion`."""

from sgmg.loss.criterion import LayerLosses, LossOutput, SgMgCriterion
from sgmg.loss.matcher import InstanceSequenceMatcher, QuerySelector, VideoMatch, make_query_selector

__all__ = [
    "InstanceSequenceMatcher",
    "LayerLosses",
    "LossOutput",
    "QuerySelector",
    "SgMgCriterion",
    "VideoMatch",
    "make_query_selector",
]
