"""End-to-end tests of the SgMg model at the tiny size: shapes, gradients, determinism, padding, checkpointing."""

from __future__ import annotations

import pytest
import torch

from sgmg.model.outputs import SgMgOutput
from sgmg.model.sgmg import SgMg
from sgmg.zoo import build_model, list_models

B, T, H, W = 2, 2, 56, 72  # padded by the model to 64x80 (eval) / 64x96 (train)


@pytest.fixture(scope="module")
def model() -> SgMg:
    torch.manual_seed(0)
    return build_model("sgmg_tiny", **{"transformer.dec_layers": 2})


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    video = torch.randn(B, T, 3, H, W, generator=g)
    ids = torch.randint(1000, 20000, (B, 7), generator=g)
    mask = torch.ones(B, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return video, ids, mask


def test_list_and_unknown_name() -> None:
    assert {"sgmg_tiny", "sgmg_video_swin_t", "sgmg_video_swin_s", "sgmg_video_swin_b"} <= set(list_models())
    with pytest.raises(ValueError, match="sgmg_video_swin_t"):
        build_model("sgmg_video_swin_xl")
    with pytest.raises(ValueError, match="unknown field"):
        build_model("sgmg_tiny", **{"transformer.nope": 1})


def test_eval_shapes(model: SgMg, inputs: tuple) -> None:
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
    assert isinstance(out, SgMgOutput)
    q = model.num_queries
    assert out.pred_logits.shape == (B, T, q)
    assert out.pred_boxes.shape == (B, T, q, 4)
    assert out.best_query.shape == (B,) and out.best_query.dtype == torch.long
    assert out.pred_masks.shape == (B, T, H, W)
    assert ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
    expected_best = out.pred_logits.sigmoid().mean(1).argmax(-1)
    assert torch.equal(out.best_query, expected_best)
    last = out.layers[-1]
    assert last.pred_masks_low.shape == (B, T, q, 32, 40)
    assert torch.equal(last.refined_queries[:, 0], out.best_query)


def test_train_shapes_and_query_selector(model: SgMg, inputs: tuple) -> None:
    model.train()
    calls = []

    def selector(layer: int, logits: torch.Tensor, boxes: torch.Tensor, masks_low: torch.Tensor) -> torch.Tensor:
        calls.append((layer, logits.shape, boxes.shape, masks_low.shape, torch.is_grad_enabled()))
        return torch.tensor([[1], [0]])

    out = model(*inputs, query_selector=selector)
    q = model.num_queries
    assert len(out.layers) == 2
    assert [c[0] for c in calls] == [0, 1]
    assert calls[0][1:] == ((B, T, q), (B, T, q, 4), (B, T, q, 32, 48), False)
    for layer in out.layers:
        assert layer.pred_masks.shape == (B, T, 1, 64, 96)
        assert torch.equal(layer.refined_queries, torch.tensor([[1], [0]]))
    assert out.pred_masks is out.layers[-1].pred_masks
    out_all = model(*inputs)  # no selector: every query is refined
    assert out_all.layers[0].pred_masks.shape == (B, T, q, 64, 96)
    model.eval()


def test_selected_query_matches_all_queries(model: SgMg, inputs: tuple) -> None:
    """Refining query k alone equals the k-th slice of refining all queries."""
    model.eval()
    with torch.no_grad():
        ref = model(*inputs)
    model.train()
    try:
        with torch.no_grad():  # same seed: identical dropout / drop-path draws upstream of the refiner
            torch.manual_seed(5)
            sel = model(*inputs, query_selector=lambda *a: torch.tensor([[2, 0], [1, 2]]))
            torch.manual_seed(5)
            full = model(*inputs)
    finally:
        model.eval()
    torch.testing.assert_close(sel.pred_masks[0, :, 0], full.pred_masks[0, :, 2])
    torch.testing.assert_close(sel.pred_masks[1, :, 1], full.pred_masks[1, :, 2])
    # eval path of the same weights: best query masks, cropped
    best = ref.best_query
    assert ref.pred_masks.shape[-2:] == (H, W)
    assert torch.isfinite(ref.pred_masks).all() and best.shape == (B,)


def test_gradients_reach_trainable_and_not_frozen(model: SgMg, inputs: tuple) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    loss = sum(
        lo.pred_logits.sum() + lo.pred_boxes.sum() + lo.pred_masks_low.mean() + lo.pred_masks.mean()
        for lo in out.layers
    )
    loss.backward()
    model.eval()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("text_encoder.") for n, _ in frozen)
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, no_grad
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, bad
    assert all(p.grad is None for _, p in frozen)
    model.zero_grad(set_to_none=True)


def test_eval_is_deterministic(model: SgMg, inputs: tuple) -> None:
    model.eval()
    with torch.no_grad():
        a = model(*inputs)
        b = model(*inputs)
    for x, y in ((a.pred_logits, b.pred_logits), (a.pred_boxes, b.pred_boxes), (a.pred_masks, b.pred_masks)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("training", [False, True])
def test_several_expressions_per_video_share_its_encoding(model: SgMg, inputs: tuple, training: bool) -> None:
    """``video_index``: N expressions over B videos give what N rows of repeated videos give, the backbone run B
    times (training mode without its random layers)."""
    video, ids, mask = inputs
    index = torch.tensor([0, 1, 1, 0])
    ids4, mask4 = torch.cat([ids, ids.flip(0)]), torch.cat([mask, mask.flip(0)])
    model.train(training)
    model.text_encoder.eval()  # Hugging Face attention dropout is not a module; the rest trains as it would
    random_layers = [(m, "p") for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    random_layers += [(m, "dropout") for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    random_layers += [(m, "drop_prob") for m in model.modules() if hasattr(m, "drop_prob")]
    saved = [getattr(m, name) for m, name in random_layers]
    for m, name in random_layers:
        setattr(m, name, 0.0)
    calls = []
    encode = model.encode_video
    try:
        model.encode_video = lambda v, p=None: calls.append(v.shape[0]) or encode(v, p)
        with torch.no_grad():
            shared = model(video, ids4, mask4, video_index=index)
            repeated = model(video[index], ids4, mask4)
    finally:
        del model.encode_video
        for (m, name), value in zip(random_layers, saved, strict=True):
            setattr(m, name, value)
    assert calls == [B, 4]
    assert shared.pred_logits.shape[0] == 4
    for x, y in ((shared.pred_logits, repeated.pred_logits), (shared.pred_masks, repeated.pred_masks)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="N=4"):
        model(video, ids, mask, video_index=index)


def test_padding_invariance(model: SgMg, inputs: tuple) -> None:
    video, ids, mask = inputs
    model.eval()
    padded = torch.zeros(B, T, 3, 64, 80)
    padded[..., :H, :W] = video
    pad_mask = torch.ones(B, 64, 80, dtype=torch.bool)
    pad_mask[:, :H, :W] = False
    with torch.no_grad():
        a = model(video, ids, mask)
        b = model(padded, ids, mask, pad_mask=pad_mask)
    torch.testing.assert_close(a.pred_logits, b.pred_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.best_query, b.best_query)
    torch.testing.assert_close(a.pred_masks, b.pred_masks[..., :H, :W], atol=1e-4, rtol=1e-4)


def test_declared_padding_is_used(model: SgMg, inputs: tuple) -> None:
    """Same pixels, but declared padding changes the valid region: outputs must differ (the mask is really used)."""
    video, ids, mask = inputs
    model.eval()
    pad_mask = torch.zeros(B, H, W, dtype=torch.bool)
    pad_mask[:, H - 24 :, :] = True
    with torch.no_grad():
        a = model(video, ids, mask)
        b = model(video, ids, mask, pad_mask=pad_mask)
    assert not torch.allclose(a.pred_logits, b.pred_logits)


def test_gradient_checkpointing_same_outputs_and_grads(inputs: tuple) -> None:
    torch.manual_seed(0)
    m = build_model("sgmg_tiny")
    m.train()
    results = []
    for enabled in (False, True):
        m.set_gradient_checkpointing(enabled)
        m.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        out = m(*inputs)
        loss = out.pred_masks.mean() + out.pred_boxes.sum() + out.pred_logits.sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        results.append((out.pred_masks.detach(), out.pred_logits.detach(), grads))
    assert m.visual_encoder.layers[0].gradient_checkpointing and m.transformer.gradient_checkpointing
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][2].keys() == results[1][2].keys()
    for name in results[0][2]:
        torch.testing.assert_close(results[0][2][name], results[1][2][name], atol=1e-5, rtol=1e-4, msg=name)


def test_rejects_bad_rank(model: SgMg, inputs: tuple) -> None:
    video, ids, mask = inputs
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model(video[0], ids, mask)
    with pytest.raises(ValueError, match="pad_mask"):
        model(video, ids, mask, pad_mask=torch.zeros(B, H, W + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="input_ids"):
        model(video, ids[:1], mask[:1])
    model.train()
    try:
        with pytest.raises(ValueError, match="query_selector"), torch.no_grad():
            model(video, ids, mask, query_selector=lambda *a: torch.tensor([0, 1]))
    finally:
        model.eval()


def test_init_quirks(model: SgMg) -> None:
    fresh = build_model("sgmg_tiny", **{"transformer.dec_layers": 2})
    assert torch.allclose(fresh.class_embed[0].bias, torch.tensor([-4.59512]), atol=1e-4)
    assert torch.equal(fresh.class_embed[0].weight, fresh.class_embed[1].weight)
    assert torch.equal(fresh.bbox_embed[0].layers[-1].weight, torch.zeros_like(fresh.bbox_embed[0].layers[-1].weight))
    assert torch.equal(fresh.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert torch.equal(fresh.bbox_embed[1].layers[-1].bias, torch.zeros(4))
    assert torch.equal(
        fresh.mask_head.controller.layers[0].bias, torch.zeros_like(fresh.mask_head.controller.layers[0].bias)
    )
    assert torch.equal(fresh.input_proj[0][0].bias, torch.zeros_like(fresh.input_proj[0][0].bias))
    attn = fresh.transformer.encoder.layers[0].self_attn
    assert torch.equal(attn.attention_weights.weight, torch.zeros_like(attn.attention_weights.weight))


def test_text_feature_cache_keeps_the_outputs(model: SgMg, inputs: tuple) -> None:
    """The same weights with a dropout-free frozen text encoder and its feature cache: the same outputs, cold and warm
    (the cached words are zeros at padding, which every consumer masks)."""
    cached = build_model(
        "sgmg_tiny", **{"transformer.dec_layers": 2, "text.frozen_dropout": False, "text.feature_cache": 8}
    )
    cached.load_state_dict(model.state_dict())
    model.eval(), cached.eval()
    with torch.no_grad():
        want = model(*inputs)
        for _ in range(2):
            got = cached(*inputs)
            torch.testing.assert_close(got.pred_logits, want.pred_logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got.pred_masks, want.pred_masks, atol=1e-4, rtol=1e-4)
