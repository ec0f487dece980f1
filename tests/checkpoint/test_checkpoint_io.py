"""Round trip and error handling of the project's checkpoint format (safetensors + JSON config)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgmg.checkpoint.io import CheckpointMismatchError, load_checkpoint, save_checkpoint
from sgmg.config import SgMgConfig, config_from_dict, replace_nested
from sgmg.zoo import MODEL_CONFIGS, build_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    return build_model("sgmg_tiny")


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 2, 3, 48, 64, generator=g), torch.randint(100, 9000, (1, 5), generator=g), torch.ones(1, 5)


def test_config_dict_round_trip() -> None:
    for name, cfg in MODEL_CONFIGS.items():
        data = json.loads(json.dumps(dataclasses.asdict(cfg)))
        assert config_from_dict(data) == cfg, name
    with pytest.raises(ValueError, match="hidden_dim"):
        replace_nested(MODEL_CONFIGS["sgmg_tiny"], **{"transformer.hidden_dim": 48})
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({"visual": {"embed_dims": 3}})


def test_directory_round_trip_is_exact(tiny, tmp_path: Path) -> None:
    out = save_checkpoint(tiny, tmp_path / "ckpt")
    assert out == tmp_path / "ckpt" / "model.safetensors"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    assert isinstance(loaded.config, SgMgConfig) and loaded.config == tiny.config
    a, b = tiny.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [n for n, p in loaded.named_parameters() if not p.requires_grad] == [
        n for n, p in tiny.named_parameters() if not p.requires_grad
    ]
    tiny.eval()
    with torch.no_grad():
        x, y = tiny(*_inputs()), loaded(*_inputs())
    assert torch.equal(x.pred_masks, y.pred_masks) and torch.equal(x.pred_logits, y.pred_logits)


def test_file_pair_and_uri(tiny, tmp_path: Path) -> None:
    save_checkpoint(tiny, tmp_path / "m.safetensors")
    assert (tmp_path / "m.json").is_file()
    loaded = load_checkpoint(f"file://{tmp_path / 'm.safetensors'}")
    assert torch.equal(loaded.query_embed.weight, tiny.query_embed.weight)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_missing_files_and_bad_config(tiny, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(tiny, tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text('{"transformer": {"hidden_dim": 33}}')
    with pytest.raises(ValueError, match="config.json"):
        load_checkpoint(tmp_path / "c")


def test_mismatched_weights_name_the_keys(tiny, tmp_path: Path) -> None:
    save_checkpoint(tiny, tmp_path / "c")
    path = tmp_path / "c" / "model.safetensors"
    state = load_file(str(path))
    state.pop("query_embed.weight")
    state["refiner.conv1_s8.weight"] = torch.zeros(1)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(tmp_path / "c")
    msg = str(info.value)
    assert "query_embed.weight" in msg and "extra.weight" in msg and "refiner.conv1_s8.weight" in msg
    assert isinstance(info.value, ValueError)
    assert info.value.missing == ["query_embed.weight"]


def test_pretrained_local_text_encoder_round_trip(tmp_path: Path) -> None:
    """A text encoder loaded from a local folder is stored self-contained (architecture inlined, no folder needed)."""
    from sgmg.config import TextEncoderConfig
    from sgmg.data.tokenizer import BUNDLED_TOKENIZER, load_tokenizer
    from sgmg.model.text_encoder import minilm_folder

    text = TextEncoderConfig(name=str(minilm_folder()), pretrained=True)
    model = build_model("sgmg_tiny", text=text)
    assert model.text_encoder.feat_dim == 384
    save_checkpoint(model, tmp_path / "c")
    stored = json.loads((tmp_path / "c" / "config.json").read_text())["text"]
    assert stored["pretrained"] is False and stored["arch"]["model_type"] == "bert"
    loaded = load_checkpoint(tmp_path / "c")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tokens = load_tokenizer(BUNDLED_TOKENIZER)(["a red car"], return_tensors="pt")
    with torch.no_grad():
        out = loaded(torch.randn(1, 1, 3, 64, 96), tokens["input_ids"], tokens["attention_mask"])
    assert out.pred_masks.shape == (1, 1, 64, 96)
