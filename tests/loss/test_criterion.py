"""SgMgCriterion: hand-computed terms, multi-object / empty targets, gradients, error paths."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from sgmg.data.schema import VideoTarget
from sgmg.loss.criterion import SgMgCriterion
from sgmg.loss.matcher import InstanceSequenceMatcher
from sgmg.model.outputs import LayerOutput, SgMgOutput

LN2 = math.log(2)
EPS = 1e-6


def layer(logits, boxes, masks_low, refined_queries, masks) -> LayerOutput:
    return LayerOutput(
        pred_logits=logits,
        pred_boxes=boxes,
        pred_masks_low=masks_low,
        refined_queries=refined_queries,
        pred_masks=masks,
    )


def output_of(layers: list[LayerOutput]) -> SgMgOutput:
    last = layers[-1]
    return SgMgOutput(last.pred_logits, last.pred_boxes, last.refined_queries[:, 0], last.pred_masks, layers)


def hand_case() -> tuple[SgMgOutput, list[VideoTarget]]:
    """B=1, T=2, Q=2, 2x2 input; all logits 0 (p = 0.5); query 0 has the exact GT box in frame 0; frame 1 invisible."""
    logits = torch.zeros(1, 2, 2)
    boxes = torch.tensor([0.5, 0.5, 0.2, 0.2]).expand(1, 2, 1, 4).clone()
    boxes = torch.cat([boxes, torch.tensor([0.2, 0.2, 0.1, 0.1]).expand(1, 2, 1, 4)], 2)  # [1, 2, 2, 4]
    masks_low = torch.zeros(1, 2, 2, 1, 1)
    masks = torch.zeros(1, 2, 1, 2, 2)
    gt_masks = torch.zeros(1, 2, 2, 2)
    gt_masks[0, 0, 1, 1] = 1
    gt_boxes = torch.zeros(1, 2, 4)
    gt_boxes[0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.2])
    target = VideoTarget(gt_masks, gt_boxes, torch.tensor([[True, False]]), (2, 2))
    refined = torch.zeros(1, 1, dtype=torch.long)
    layers = [layer(logits, boxes, masks_low, refined, masks) for _ in range(2)]
    return output_of(layers), [target]


def test_each_term_equals_hand_computation() -> None:
    out, targets = hand_case()
    criterion = SgMgCriterion(matcher=InstanceSequenceMatcher())
    losses = criterion(out, targets)
    assert losses.num_boxes == 1.0
    assert losses.matches[-1].query_index.tolist() == [[0]]
    last = losses.layers[-1]
    # focal at p = 0.5: alpha_t * 0.5^2 * ln 2; one positive (alpha 0.25) and three negatives (0.75)
    assert float(last.score) == pytest.approx((0.25 * 0.25 + 3 * 0.75 * 0.25) * LN2, rel=1e-6)
    # L1: frame 0 exact, frame 1 against the zero box of the invisible frame (upstream keeps it)
    assert float(last.bbox) == pytest.approx(0.5 + 0.5 + 0.2 + 0.2, rel=1e-6)
    # GIoU with eps: frame 0 identical boxes (area 0.04); frame 1 pred [0.4, 0.6]^2 vs the point (0, 0)
    giou0 = 1 - EPS / (0.04 + EPS)
    giou1 = EPS / (0.04 + EPS) - (0.36 - 0.04 + EPS) / (0.36 + EPS)
    assert float(last.giou) == pytest.approx((1 - giou0) + (1 - giou1), rel=1e-5)
    # full-res masks: 8 pixels, one positive
    assert float(last.mask) == pytest.approx((0.25 * 0.25 + 7 * 0.75 * 0.25) * LN2 / 8, rel=1e-6)
    assert float(last.dice) == pytest.approx(1 - (2 * 0.5 + 1) / (4 + 1 + 1), rel=1e-6)
    # stride-2 masks: gt[..., 1::2, 1::2] keeps the positive pixel (1, 1); 2 pixels, one positive
    assert float(last.mask_low) == pytest.approx((0.25 * 0.25 + 0.75 * 0.25) * LN2 / 2, rel=1e-6)
    assert float(last.dice_low) == pytest.approx(1 - (2 * 0.5 + 1) / (1 + 1 + 1), rel=1e-6)
    # weighted total: 2 identical layers, default weights (score 2, L1 5, GIoU 2, mask 2 x2, dice 5 x2)
    per_layer = (
        2 * last.score
        + 5 * last.bbox
        + 2 * last.giou
        + 2 * (last.mask + last.mask_low)
        + 5 * (last.dice + last.dice_low)
    )
    assert float(losses.total) == pytest.approx(2 * float(per_layer), rel=1e-6)
    names = losses.as_dict()
    assert set(names) == {
        f"{k}{s}"
        for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_mask_low", "loss_dice_low")
        for s in ("", "_0")
    } | {"loss"}


def test_box_losses_on_valid_frames_only_switch() -> None:
    out, targets = hand_case()
    losses = SgMgCriterion(matcher=InstanceSequenceMatcher(), boxes_on_invalid_frames=False)(out, targets)
    assert float(losses.layers[-1].bbox) == pytest.approx(0.0, abs=1e-7)
    assert float(losses.layers[-1].giou) == pytest.approx(EPS / (0.04 + EPS), abs=1e-6)  # float32 near 1 - giou


def test_aux_loss_off_uses_last_layer_only() -> None:
    out, targets = hand_case()
    full = SgMgCriterion(matcher=InstanceSequenceMatcher())(out, targets)
    last_only = SgMgCriterion(matcher=InstanceSequenceMatcher(), aux_loss=False)(out, targets)
    assert len(last_only.layers) == 1
    assert float(last_only.total) == pytest.approx(float(full.total) / 2, rel=1e-6)


def random_batch(gen: torch.Generator, requires_grad: bool = False):
    """B=3: two objects (one invisible in a frame), no object, one object invisible everywhere."""
    b, t, q, h, w = 3, 3, 5, 8, 8
    logits = torch.randn(b, t, q, generator=gen)
    boxes = torch.rand(b, t, q, 4, generator=gen) * 0.4 + 0.1
    masks_low = torch.randn(b, t, q, h // 2, w // 2, generator=gen)
    targets = []
    for n, invisible in ((2, [(1, 0)]), (0, []), (1, [(0, 0), (0, 1), (0, 2)])):
        masks = (torch.rand(n, t, h, w, generator=gen) > 0.5).float()
        bx = torch.rand(n, t, 4, generator=gen) * 0.4 + 0.1
        valid = torch.ones(n, t, dtype=torch.bool)
        for o, f in invisible:
            masks[o, f], bx[o, f], valid[o, f] = 0, 0, False
        targets.append(VideoTarget(masks, bx, valid, (h, w)))
    match = InstanceSequenceMatcher()(logits, boxes, masks_low, targets)
    masks = torch.randn(b, t, match.query_index.shape[1], h, w, generator=gen)
    leaves = [x.requires_grad_(requires_grad) for x in (logits, boxes, masks_low, masks)]
    out = output_of([layer(*leaves[:3], match.query_index, leaves[3])])
    return out, targets, match, leaves


def test_multi_object_and_empty_targets_match_a_per_slot_loop() -> None:
    out, targets, match, _ = random_batch(torch.Generator().manual_seed(0))
    losses = SgMgCriterion(matcher=InstanceSequenceMatcher())(out, targets, [match])
    lay = out.layers[0]
    num_boxes = sum(float(t.valid.sum()) for t in targets)
    assert losses.num_boxes == num_boxes
    score_target = torch.zeros_like(lay.pred_logits)
    bbox = mask_low = dice = 0.0
    for i, tgt in enumerate(targets):
        for o in range(tgt.valid.shape[0]):
            k = int(match.query_index[i, o])
            score_target[i, tgt.valid[o], k] = 1
            bbox += float((lay.pred_boxes[i, :, k] - tgt.boxes[o]).abs().sum())
            x, y = lay.pred_masks_low[i, :, k].flatten(), tgt.masks[o][:, 1::2, 1::2].flatten()
            mask_low += float(sigmoid_focal_loss(x, y, reduction="mean"))
            p, y_full = lay.pred_masks[i, :, o].sigmoid().flatten(), tgt.masks[o].flatten()
            dice += 1 - float((2 * (p * y_full).sum() + 1) / (p.sum() + y_full.sum() + 1))
    terms = losses.layers[0]
    want_score = float(sigmoid_focal_loss(lay.pred_logits, score_target, reduction="sum")) / num_boxes
    assert float(terms.score) == pytest.approx(want_score, rel=1e-5)
    assert float(terms.bbox) == pytest.approx(bbox / num_boxes, rel=1e-5)
    assert float(terms.mask_low) == pytest.approx(mask_low / num_boxes, rel=1e-5)
    assert float(terms.dice) == pytest.approx(dice / num_boxes, rel=1e-5)
    assert all(torch.isfinite(v) for v in losses.as_dict().values())


def test_gradients_reach_matched_predictions_only() -> None:
    out, targets, match, (logits, boxes, masks_low, masks) = random_batch(torch.Generator().manual_seed(1), True)
    SgMgCriterion(matcher=InstanceSequenceMatcher())(out, targets, [match]).total.backward()
    assert logits.grad is not None and (logits.grad != 0).all()  # every score logit has a (focal) target
    for i in range(3):
        matched = set(match.query_index[i, match.slot_valid[i]].tolist())
        for k in range(5):
            has_grad = bool(boxes.grad[i, :, k].abs().sum() > 0) and bool(masks_low.grad[i, :, k].abs().sum() > 0)
            assert has_grad == (k in matched), (i, k)
        for slot in range(masks.shape[2]):
            assert bool(masks.grad[i, :, slot].abs().sum() > 0) == bool(match.slot_valid[i, slot])


def test_num_boxes_hook_and_clamp() -> None:
    out, targets, match, _ = random_batch(torch.Generator().manual_seed(2))
    seen = []

    def halve(x: torch.Tensor) -> torch.Tensor:
        seen.append(float(x))
        return x / 2

    losses = SgMgCriterion(matcher=InstanceSequenceMatcher(), reduce_num_boxes=halve)(out, targets, [match])
    assert seen == [5.0] and losses.num_boxes == 2.5
    invisible = [VideoTarget(t.masks * 0, t.boxes * 0, t.valid & False, t.size) for t in targets]
    assert SgMgCriterion(matcher=InstanceSequenceMatcher())(out, invisible, [match]).num_boxes == 1.0


def test_rejects_eval_output_and_mismatched_refinement() -> None:
    out, targets, match, _ = random_batch(torch.Generator().manual_seed(3))
    criterion = SgMgCriterion(matcher=InstanceSequenceMatcher())
    with pytest.raises(ValueError, match="training-mode output"):
        criterion(SgMgOutput(out.pred_logits, out.pred_boxes, out.best_query, out.pred_masks), targets)
    wrong = out.layers[0]
    wrong.refined_queries = (wrong.refined_queries + 1) % 5
    with pytest.raises(RuntimeError, match="query_selector"):
        criterion(out, targets, [match])
