"""Tests of the deterministic official-layout weight generator used by the parity fixtures."""

from __future__ import annotations

import pytest
import torch
from official_weights import (
    FIXTURES_DIR,
    _generate,
    make_official_state_dict,
    make_parity_tokens,
    make_parity_video,
    official_key_specs,
)


@pytest.fixture(scope="module")
def small_sd() -> dict[str, torch.Tensor]:
    return make_official_state_dict("video_swin_t", seed=0, text_layers=2)


def test_layout_matches_official_key_list(small_sd: dict[str, torch.Tensor]) -> None:
    specs = official_key_specs("video_swin_t")
    assert len(specs) == 698
    expected = [
        (k, s)
        for k, s, dt in specs
        if dt == "torch.float32"
        and not any(k.startswith(f"text_encoder.text_backbone.encoder.layer.{i}.") for i in range(2, 12))
    ]
    assert list(small_sd) == [k for k, _ in expected]  # same keys, same order
    for key, shape in expected:
        assert tuple(small_sd[key].shape) == shape, key
        assert small_sd[key].dtype == torch.float32
    assert not any(k.endswith("relative_position_index") for k in small_sd)


def test_shared_box_head_and_scales(small_sd: dict[str, torch.Tensor]) -> None:
    for key in [k for k in small_sd if k.startswith("bbox_embed.")]:
        assert torch.equal(small_sd[key], small_sd["transformer.decoder." + key])
    assert -2.5 < float(small_sd["class_embed.3.bias"]) < -1.5
    ln = small_sd["transformer.encoder.layers.0.norm1.weight"]
    assert 0.8 < float(ln.mean()) < 1.2
    w = small_sd["transformer.encoder.layers.0.linear1.weight"]  # (2048, 256): std ~ 1/16
    assert abs(float(w.std()) - 1 / 16) < 0.005


def test_deterministic_and_independent_of_text_layers(small_sd: dict[str, torch.Tensor]) -> None:
    again = make_official_state_dict("t", seed=0, text_layers=0)
    assert len(again) == len(small_sd) - 2 * 16  # two RoBERTa layers of 16 tensors dropped
    for key, value in again.items():
        assert torch.equal(value, small_sd[key]), key
    other = _generate("query_embed.weight", (5, 256), seed=1)
    assert not torch.equal(other, small_sd["query_embed.weight"])


def test_all_variants_and_bad_input() -> None:
    for variant, n in (("video_swin_s", 866), ("video_swin_b", 866)):
        assert len(official_key_specs(variant)) == n
    assert (FIXTURES_DIR / "sgmg_official_keys_video_swin_b.txt").is_file()
    with pytest.raises(ValueError, match="unknown SgMg variant"):
        official_key_specs("video_swin_l")
    with pytest.raises(ValueError, match="text_layers"):
        make_official_state_dict("t", text_layers=13)


def test_parity_inputs_are_reproducible() -> None:
    v = make_parity_video(2, 3, 144, 160, seed=2)
    assert v.shape == (2, 3, 3, 144, 160)
    assert torch.equal(v, v.half().float())  # on the float16 grid
    assert torch.equal(v, make_parity_video(2, 3, 144, 160, seed=2))
    ids, mask = make_parity_tokens([9, 6], seed=1)
    assert ids.shape == mask.shape == (2, 9)
    assert ids[1, 6:].tolist() == [1, 1, 1] and mask[1].tolist() == [1] * 6 + [0] * 3
    assert ids[0, 0] == 0 and ids[0, 8] == 2 and ids[1, 5] == 2


def test_golden_inputs_regenerate() -> None:
    golden = torch.load(FIXTURES_DIR / "golden_swin_t_small.pt", weights_only=True)
    v = make_parity_video(*golden["video_args"].tolist())
    assert torch.isclose(v.double().sum(), golden["video_sum"], rtol=0, atol=1e-6)
    assert torch.isclose(v.double().abs().sum(), golden["video_abs_sum"], rtol=0, atol=1e-6)
    ids, mask = make_parity_tokens([9, 6], seed=1)
    assert torch.equal(ids, golden["input_ids"]) and torch.equal(mask, golden["attention_mask"])
