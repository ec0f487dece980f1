"""Numerical parity with the official SgMg code (github.com/bo-miao/SgMg), eval mode, Video-Swin-T.

The golden tensors in ``fixtures/golden_swin_t_small.pt`` were exported once by running the official code outside this
repository on the seeded official-layout weights of :mod:`official_weights` (Swin-T, 2-layer RoBERTa); see
``fixtures/README.md``. Here the same weights go through :func:`load_official_checkpoint`'s path
(:func:`model_from_official_state_dict`) and the outputs must match: scores and boxes within 1e-4, refined mask
probabilities within 1e-3, the same best query; a few intermediates are checked too so a failure points at a module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_weights import make_official_state_dict, make_parity_video  # noqa: E402

from sgmg.checkpoint.convert_official import model_from_official_state_dict  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden_swin_t_small.pt"

pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(not GOLDEN.is_file(), reason="golden parity fixtures not exported"),
]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def model(golden: dict[str, torch.Tensor]):
    seed, layers = int(golden["meta.seed"]), int(golden["meta.text_layers"])
    return model_from_official_state_dict(make_official_state_dict("video_swin_t", seed=seed, text_layers=layers))


@pytest.fixture(scope="module")
def video(golden: dict[str, torch.Tensor]) -> torch.Tensor:
    v = make_parity_video(*golden["video_args"].tolist())
    assert v.double().sum().item() == pytest.approx(golden["video_sum"].item(), abs=1e-6)
    assert v.double().abs().sum().item() == pytest.approx(golden["video_abs_sum"].item(), abs=1e-6)
    return v


@pytest.mark.parametrize("case", ["a", "b"])
def test_eval_outputs_match_official(model, golden: dict, video: torch.Tensor, case: str) -> None:
    h, w = golden[f"{case}.size"][0].tolist()
    captured: dict[str, object] = {}
    handles = [
        model.transformer.register_forward_hook(lambda m, i, o: captured.__setitem__("transformer", o)),
        model.fusion.register_forward_hook(lambda m, i, o: captured.__setitem__("fusion", o)),
    ]
    try:
        with torch.no_grad():
            out = model(video[..., :h, :w].contiguous(), golden["input_ids"], golden["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    g = {k[len(case) + 1 :]: v for k, v in golden.items() if k.startswith(f"{case}.")}

    # intermediates (looser diagnostics first, so a failure names the module)
    rows = g["frame_rows"]
    for lvl, x in enumerate(captured["fusion"]):
        torch.testing.assert_close(x[rows, :16], g[f"scf_level{lvl}"], atol=1e-4, rtol=1e-4, msg=f"fusion {lvl}")
    hs, _, init_ref, refs = captured["transformer"]
    torch.testing.assert_close(init_ref, g["init_reference"].flatten(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(hs, g["hs"].flatten(1, 2), atol=2e-4, rtol=1e-4, msg="decoder hs")
    torch.testing.assert_close(refs, g["inter_references"].flatten(1, 2), atol=1e-5, rtol=0)

    # outputs: scores and boxes within 1e-4, same best query, mask probabilities within 1e-3
    torch.testing.assert_close(out.pred_logits.sigmoid(), g["all_pred_logits"][-1].sigmoid(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.pred_boxes, g["all_pred_boxes"][-1], atol=1e-4, rtol=0)
    assert torch.equal(out.best_query, g["best_query"])
    assert out.pred_masks.shape == (2, 3, h, w)
    probs = g["pred_mask_logits"][..., :h, :w].sigmoid()
    torch.testing.assert_close(out.pred_masks.sigmoid(), probs, atol=1e-3, rtol=0)
    # the best query's stride-2 mask before refinement (pixel_shuffle of the 16-channel patch masks)
    low = out.layers[-1].pred_masks_low[torch.arange(2), :, g["best_query"]]  # [B, T, H/2, W/2]
    ref_low = torch.nn.functional.pixel_shuffle(g["best_patch_mask_logits"].flatten(0, 1), 4).view_as(low)
    torch.testing.assert_close(low.sigmoid(), ref_low.sigmoid(), atol=1e-3, rtol=0)


CRITERION_GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden_criterion.pt"


@pytest.mark.skipif(not CRITERION_GOLDEN.is_file(), reason="golden criterion fixtures not exported")
def test_train_branch_matches_official(model) -> None:
    """Training branch (dropout off): every decoder layer's outputs and the refined masks of the matched query."""
    g = torch.load(CRITERION_GOLDEN, weights_only=True)
    video = make_parity_video(*g["video_args"].tolist())
    assert video.double().sum().item() == pytest.approx(g["video_sum"].item(), abs=1e-6)
    matched = [g["aux_matched_query"][i] for i in range(3)] + [g["matched_query"]]
    seen = []

    def selector(layer: int, logits: torch.Tensor, boxes: torch.Tensor, masks_low: torch.Tensor) -> torch.Tensor:
        seen.append(masks_low)
        return matched[layer][:, None]

    model.train()
    for child in model.children():  # the top level takes the training branch, all dropout / drop-path off
        child.eval()
    try:
        with torch.no_grad():
            out = model(video, g["input_ids"], g["attention_mask"], query_selector=selector)
    finally:
        model.eval()
    assert len(out.layers) == 4
    torch.testing.assert_close(
        seen[-1].sigmoid(), g["matcher_pred_masks_all_queries"].float().sigmoid(), atol=1e-3, rtol=0
    )
    for i, layer in enumerate(out.layers):
        p = "" if i == 3 else f"aux{i}."
        torch.testing.assert_close(
            layer.pred_logits.sigmoid(), g[p + "pred_logits"][..., 0].sigmoid(), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(layer.pred_boxes, g[p + "pred_boxes"], atol=1e-4, rtol=0)
        rows = torch.arange(2)
        low = layer.pred_masks_low[rows, :, matched[i]]  # [B, T, H/2, W/2]
        torch.testing.assert_close(low.sigmoid(), g[p + "pred_masks_low"].float().sigmoid(), atol=1e-3, rtol=0)
        torch.testing.assert_close(
            layer.pred_masks[:, :, 0].sigmoid(), g[p + "pred_masks"].float().sigmoid(), atol=1e-3, rtol=0
        )
