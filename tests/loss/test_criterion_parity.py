"""Matcher and criterion against golden outputs of the official SgMg matcher + SetCriterion.

The fixture (``tests/parity/fixtures/golden_criterion.pt``, see the README there) holds the official training-branch
predictions of 4 decoder layers for 2 videos (T=3, Q=5, 160x160; video 0 is invisible in frame 1), the official
matching cost and matched queries, and the 28 unweighted loss terms. Every term must match to 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgmg.data.schema import VideoTarget
from sgmg.loss.criterion import SgMgCriterion
from sgmg.loss.matcher import InstanceSequenceMatcher, VideoMatch
from sgmg.model.outputs import LayerOutput, SgMgOutput

GOLDEN = Path(__file__).resolve().parents[1] / "parity" / "fixtures" / "golden_criterion.pt"

pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(not GOLDEN.is_file(), reason=f"golden file {GOLDEN} not present"),
]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN, weights_only=True)


def targets_of(g: dict[str, torch.Tensor]) -> list[VideoTarget]:
    return [
        VideoTarget(
            masks=g["target_masks"][b][None].float(),  # [1, T, H, W]
            boxes=g["target_boxes"][b][None],  # [1, T, 4]
            valid=g["target_valid"][b][None].bool(),  # [1, T]
            size=tuple(int(x) for x in g["size"][b]),
        )
        for b in range(g["target_masks"].shape[0])
    ]


def layer_of(g: dict[str, torch.Tensor], prefix: str, query: torch.Tensor, all_low: torch.Tensor | None) -> LayerOutput:
    """The official per-layer outputs in our LayerOutput form (K = 1 refined query per video)."""
    logits = g[prefix + "pred_logits"][..., 0]  # [B, T, Q]
    b, t, q = logits.shape
    low_matched = g[prefix + "pred_masks_low"].float()  # [B, T, h, w], matched query only
    if all_low is None:
        # aux layers store only the matched query's low masks: put them at the matched index
        low = torch.zeros(b, t, q, *low_matched.shape[-2:])
        low[torch.arange(b), :, query] = low_matched
    else:
        low = all_low
        torch.testing.assert_close(low[torch.arange(b), :, query], low_matched, rtol=0, atol=0)
    return LayerOutput(
        pred_logits=logits,
        pred_boxes=g[prefix + "pred_boxes"],
        pred_masks_low=low,
        refined_queries=query[:, None],
        pred_masks=g[prefix + "pred_masks"].float()[:, :, None],  # [B, T, 1, H, W]
    )


def test_matcher_reproduces_official_costs_and_choice(golden: dict[str, torch.Tensor]) -> None:
    matcher = InstanceSequenceMatcher()
    all_low = golden["matcher_pred_masks_all_queries"].float()
    targets = targets_of(golden)
    for b, tgt in enumerate(targets):
        cost = matcher.cost_matrix(golden["pred_logits"][b, ..., 0], golden["pred_boxes"][b], all_low[b], tgt)
        torch.testing.assert_close(cost[:, 0], golden["matcher_cost"][b], rtol=1e-5, atol=1e-5)
    match = matcher(golden["pred_logits"][..., 0], golden["pred_boxes"], all_low, targets)
    assert match.query_index[:, 0].tolist() == golden["matched_query"].tolist()


def test_criterion_reproduces_all_28_official_terms(golden: dict[str, torch.Tensor]) -> None:
    targets = targets_of(golden)
    layers, matches = [], []
    for i in range(3):
        query = golden["aux_matched_query"][i]
        layers.append(layer_of(golden, f"aux{i}.", query, None))
        matches.append(VideoMatch(query[:, None], torch.ones(len(query), 1, dtype=torch.bool)))
    query = golden["matched_query"]
    layers.append(layer_of(golden, "", query, golden["matcher_pred_masks_all_queries"].float()))
    matches.append(VideoMatch(query[:, None], torch.ones(len(query), 1, dtype=torch.bool)))
    last = layers[-1]
    output = SgMgOutput(last.pred_logits, last.pred_boxes, query, last.pred_masks, layers)

    losses = SgMgCriterion(matcher=InstanceSequenceMatcher())(output, targets, matches)
    assert losses.num_boxes == 5.0
    ours = losses.as_dict()
    official = {k[len("loss.") :]: v for k, v in golden.items() if k.startswith("loss.")}
    assert len(official) == 28 and set(official) | {"loss"} == set(ours)
    for name, want in official.items():
        torch.testing.assert_close(ours[name], want, rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(losses.total, golden["loss_total_weighted"], rtol=1e-5, atol=1e-5)
    for name, weight in ((k[len("weight.") :], v) for k, v in golden.items() if k.startswith("weight.")):
        term = name.removeprefix("loss_").rsplit("_", 1)[0] if name[-1].isdigit() else name.removeprefix("loss_")
        key = {"ce": "score"}.get(term, term)
        assert SgMgCriterion(matcher=InstanceSequenceMatcher()).weights[key] == float(weight), name


def test_last_layer_match_recomputed_inside_the_criterion(golden: dict[str, torch.Tensor]) -> None:
    """Without explicit matches the criterion re-runs the matcher and must land on the official query."""
    query = golden["matched_query"]
    layer = layer_of(golden, "", query, golden["matcher_pred_masks_all_queries"].float())
    output = SgMgOutput(layer.pred_logits, layer.pred_boxes, query, layer.pred_masks, [layer])
    losses = SgMgCriterion(matcher=InstanceSequenceMatcher())(output, targets_of(golden))
    torch.testing.assert_close(losses.layers[0].dice_low, golden["loss.loss_dice_low"], rtol=1e-5, atol=1e-5)
