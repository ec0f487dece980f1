"""Video-level matcher: costs against the literal upstream formulas, assignment against brute force, edge cases."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert
from torchvision.ops import generalized_box_iou as tv_giou

from sgmg.data.schema import VideoTarget
from sgmg.loss.matcher import InstanceSequenceMatcher, make_query_selector

ALPHA, GAMMA = 0.25, 2.0


def random_target(num_obj: int, t: int, h: int, w: int, gen: torch.Generator, invisible: tuple = ()) -> VideoTarget:
    """Random masks/boxes; (object, frame) pairs in ``invisible`` are empty with zero boxes."""
    masks = (torch.rand(num_obj, t, h, w, generator=gen) > 0.6).float()
    boxes = torch.cat(
        [torch.rand(num_obj, t, 2, generator=gen) * 0.5 + 0.25, torch.rand(num_obj, t, 2, generator=gen) * 0.3 + 0.05],
        -1,
    )
    valid = torch.ones(num_obj, t, dtype=torch.bool)
    for o, f in invisible:
        masks[o, f] = 0
        boxes[o, f] = 0
        valid[o, f] = False
    return VideoTarget(masks=masks, boxes=boxes, valid=valid, size=(h, w))


def random_preds(b: int, t: int, q: int, h: int, w: int, gen: torch.Generator):
    logits = torch.randn(b, t, q, generator=gen) * 2
    boxes = torch.rand(b, t, q, 4, generator=gen) * 0.5 + 0.1
    masks_low = torch.randn(b, t, q, h // 2, w // 2, generator=gen) * 3
    return logits, boxes, masks_low


def literal_cost(logits, boxes, masks_low, tgt: VideoTarget, weights: dict) -> torch.Tensor:
    """Upstream's cost, written term by term with loops (one query, one object at a time)."""
    t, q = logits.shape
    num_obj = tgt.valid.shape[0]
    gt_low = tgt.masks[..., 1::2, 1::2]
    cost = torch.zeros(q, num_obj)
    for o in range(num_obj):
        for k in range(q):
            frames = [f for f in range(t) if tgt.valid[o, f]]
            cls = 0.0
            for f in frames:
                p = logits[f, k].sigmoid()
                pos = ALPHA * (1 - p) ** GAMMA * -torch.log(p + 1e-8)
                neg = (1 - ALPHA) * p**GAMMA * -torch.log(1 - p + 1e-8)
                cls += float(pos - neg) / len(frames)
            l1 = float((boxes[:, k] - tgt.boxes[o]).abs().sum(-1).mean())
            pred_xyxy = box_convert(boxes[:, k], "cxcywh", "xyxy")
            gt_xyxy = box_convert(tgt.boxes[o], "cxcywh", "xyxy")
            giou = float(
                torch.stack([tv_giou(pred_xyxy[f : f + 1], gt_xyxy[f : f + 1])[0, 0] for f in range(t)]).mean()
            )
            x = masks_low[:, k].flatten()
            y = gt_low[o].flatten()
            prob = x.sigmoid()
            ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
            p_t = prob * y + (1 - prob) * (1 - y)
            focal = float(((ALPHA * y + (1 - ALPHA) * (1 - y)) * ce * (1 - p_t) ** GAMMA).mean())
            dice = float((2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1))
            cost[k, o] = (
                weights["cost_class"] * cls
                + weights["cost_bbox"] * l1
                - weights["cost_giou"] * giou
                + weights["cost_mask"] * focal
                - weights["cost_dice"] * dice
            )
    return cost


WEIGHTS = {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "cost_mask": 2.0, "cost_dice": 5.0}


@pytest.mark.parametrize("only", [None, "cost_class", "cost_bbox", "cost_giou", "cost_mask", "cost_dice"])
def test_cost_matrix_equals_literal_formulas(only: str | None) -> None:
    gen = torch.Generator().manual_seed(0)
    weights = WEIGHTS if only is None else {k: (1.0 if k == only else 0.0) for k in WEIGHTS}
    matcher = InstanceSequenceMatcher(**weights)
    logits, boxes, masks_low = random_preds(1, 4, 5, 8, 12, gen)
    tgt = random_target(2, 4, 8, 12, gen, invisible=((0, 1), (1, 3), (1, 0)))
    got = matcher.cost_matrix(logits[0], boxes[0], masks_low[0], tgt)
    want = literal_cost(logits[0], boxes[0], masks_low[0], tgt, weights)
    assert got.shape == (5, 2)
    # the eps of the official GIoU moves values by ~1e-5 against torchvision's eps-free GIoU
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_batched_assignment_equals_brute_force_over_all_queries() -> None:
    gen = torch.Generator().manual_seed(1)
    matcher = InstanceSequenceMatcher()
    b, t, q, h, w = 4, 3, 5, 8, 8
    logits, boxes, masks_low = random_preds(b, t, q, h, w, gen)
    targets = [random_target(n, t, h, w, gen, invisible=((0, 2),)) for n in (1, 2, 3, 1)]
    match = matcher(logits, boxes, masks_low, targets)
    assert match.query_index.shape == (b, 3) and match.slot_valid.shape == (b, 3)
    for i, tgt in enumerate(targets):
        n = tgt.valid.shape[0]
        cost = matcher.cost_matrix(logits[i], boxes[i], masks_low[i], tgt)
        best = min(itertools.permutations(range(q), n), key=lambda qs: sum(float(cost[k, o]) for o, k in enumerate(qs)))
        assert match.query_index[i, :n].tolist() == list(best)
        assert match.slot_valid[i].tolist() == [True] * n + [False] * (3 - n)
        # padded slots repeat the first matched query
        assert all(int(k) == int(best[0]) for k in match.query_index[i, n:])
        # batched == per-sample
        single = matcher(logits[i : i + 1], boxes[i : i + 1], masks_low[i : i + 1], [tgt])
        assert single.query_index[0, :n].tolist() == list(best)


def test_single_object_is_argmin() -> None:
    gen = torch.Generator().manual_seed(2)
    matcher = InstanceSequenceMatcher()
    logits, boxes, masks_low = random_preds(1, 2, 7, 8, 8, gen)
    tgt = random_target(1, 2, 8, 8, gen)
    match = matcher(logits, boxes, masks_low, [tgt])
    assert int(match.query_index[0, 0]) == int(matcher.cost_matrix(logits[0], boxes[0], masks_low[0], tgt).argmin())


def test_empty_target_and_invisible_object() -> None:
    gen = torch.Generator().manual_seed(3)
    matcher = InstanceSequenceMatcher()
    logits, boxes, masks_low = random_preds(3, 3, 5, 8, 8, gen)
    empty = VideoTarget(torch.zeros(0, 3, 8, 8), torch.zeros(0, 3, 4), torch.zeros(0, 3, dtype=torch.bool), (8, 8))
    never = random_target(1, 3, 8, 8, gen, invisible=((0, 0), (0, 1), (0, 2)))
    normal = random_target(1, 3, 8, 8, gen)
    match = matcher(logits, boxes, masks_low, [empty, never, normal])
    assert match.query_index.shape == (3, 1)
    assert match.slot_valid.tolist() == [[False], [True], [True]]
    assert int(match.query_index[0, 0]) == 0
    # an object invisible in every frame has no class cost (no valid frame), only box/mask costs
    class_only = InstanceSequenceMatcher(cost_class=1, cost_bbox=0, cost_giou=0, cost_mask=0, cost_dice=0)
    assert torch.equal(class_only.cost_matrix(logits[1], boxes[1], masks_low[1], never), torch.zeros(5, 1))
    assert torch.isfinite(matcher.cost_matrix(logits[1], boxes[1], masks_low[1], never)).all()


def test_more_objects_than_queries_leaves_slots_unmatched() -> None:
    gen = torch.Generator().manual_seed(4)
    logits, boxes, masks_low = random_preds(1, 2, 2, 8, 8, gen)
    match = InstanceSequenceMatcher()(logits, boxes, masks_low, [random_target(3, 2, 8, 8, gen)])
    assert int(match.slot_valid.sum()) == 2
    assert sorted(match.query_index[0, match.slot_valid[0]].tolist()) == [0, 1]


def test_nonfinite_predictions_still_give_a_match() -> None:
    gen = torch.Generator().manual_seed(5)
    logits, boxes, masks_low = random_preds(1, 2, 4, 8, 8, gen)
    logits[0, :, 1] = float("nan")
    masks_low[0, :, 2] = float("inf")
    match = InstanceSequenceMatcher()(logits, boxes, masks_low, [random_target(2, 2, 8, 8, gen)])
    assert match.slot_valid.all() and ((match.query_index >= 0) & (match.query_index < 4)).all()


def test_query_selector_records_one_match_per_layer() -> None:
    gen = torch.Generator().manual_seed(6)
    logits, boxes, masks_low = random_preds(2, 2, 5, 8, 8, gen)
    targets = [random_target(1, 2, 8, 8, gen), random_target(1, 2, 8, 8, gen)]
    selector = make_query_selector(InstanceSequenceMatcher(), targets)
    for layer in range(3):
        picked = selector(layer, logits, boxes, masks_low)
        assert picked.dtype == torch.long and picked.shape == (2, 1)
    assert len(selector.matches) == 3 and selector.layer_indices == [0, 1, 2]


def test_masks_bigger_than_prediction_grid_are_rejected() -> None:
    gen = torch.Generator().manual_seed(7)
    logits, boxes, masks_low = random_preds(1, 2, 3, 8, 8, gen)
    with pytest.raises(ValueError, match="padded input grid"):
        InstanceSequenceMatcher()(logits, boxes, masks_low, [random_target(1, 2, 16, 8, gen)])


def test_rejects_all_zero_weights() -> None:
    with pytest.raises(ValueError, match="all matcher cost weights are 0"):
        InstanceSequenceMatcher(cost_class=0, cost_bbox=0, cost_giou=0, cost_mask=0, cost_dice=0)
