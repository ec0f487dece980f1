"""Key coverage of the official-checkpoint converter for Video Swin T, S and B.

State dicts are built from the official key lists (``fixtures/sgmg_official_keys_video_swin_{t,s,b}.txt``, generated
from the official model) with meta tensors, so the full models are checked without allocating their weights.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from sgmg.checkpoint import commands
from sgmg.checkpoint.convert_official import (
    IGNORED,
    KEY_MAP,
    load_official_checkpoint,
    map_official_key,
    model_from_official_state_dict,
)
from sgmg.checkpoint.io import CheckpointMismatchError, load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
MARKER = "# ---- full key list ----"


def official_specs(variant: str) -> list[tuple[str, tuple[int, ...], str]]:
    lines = (FIXTURES / f"sgmg_official_keys_{variant}.txt").read_text().splitlines()
    specs = []
    for line in lines[lines.index(MARKER) + 1 :]:
        if line.strip() and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            specs.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return specs


def meta_state(variant: str) -> dict[str, torch.Tensor]:
    dtypes = {"torch.float32": torch.float32, "torch.int64": torch.int64}
    return {k: torch.empty(s, dtype=dtypes[d], device="meta") for k, s, d in official_specs(variant)}


@pytest.mark.parametrize(
    ("variant", "n_keys", "embed"), [("video_swin_t", 698, 96), ("video_swin_s", 866, 96), ("video_swin_b", 866, 128)]
)
def test_every_official_key_is_consumed(variant: str, n_keys: int, embed: int) -> None:
    state = meta_state(variant)
    assert len(state) == n_keys
    ignored = [k for k in state if map_official_key(k) is None]
    assert ignored and all(k.startswith("transformer.decoder.bbox_embed.") for k in ignored)
    state["text_encoder.text_backbone.embeddings.position_ids"] = torch.empty(1, 514, dtype=torch.int64, device="meta")
    state["backbone.0.body.total_ops"] = torch.empty(1, device="meta")
    model = model_from_official_state_dict(state, variant)
    assert model.visual_encoder.patch_embed.proj.weight.shape == (embed, 3, 1, 4, 4)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in state.items() if v.dtype == torch.float32 and map_official_key(k) is not None
    )  # ignored keys (duplicates, total_ops, position_ids) excluded
    # every parameter came from the state dict (nothing left at random init on the meta device)
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())


def test_key_map_rules_are_all_used() -> None:
    keys = [k for k, _, _ in official_specs("video_swin_t")]
    for src, _dst in KEY_MAP:
        assert any(k.startswith(src) for k in keys), src
    assert all(reason for _, reason in IGNORED)


def test_wrong_shape_names_the_official_key() -> None:
    state = meta_state("video_swin_t")
    state["controller.layers.2.weight"] = torch.empty(100, 256, device="meta")
    with pytest.raises(CheckpointMismatchError, match=r"controller\.layers\.2\.weight"):
        model_from_official_state_dict(state, "video_swin_t")


def test_missing_and_unknown_keys_are_named() -> None:
    state = meta_state("video_swin_t")
    del state["mask_refine.conv1_1div8.weight"]
    state["some_new_head.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointMismatchError, match=r"some_new_head\.weight"):
        model_from_official_state_dict(state, "video_swin_t")
    state.pop("some_new_head.weight")
    with pytest.raises(CheckpointMismatchError, match=r"mask_refine\.conv1_1div8\.weight"):
        model_from_official_state_dict(state, "video_swin_t")


@pytest.mark.parametrize(("given", "actual"), [("video_swin_b", "video_swin_t"), ("video_swin_t", "video_swin_s")])
def test_wrong_variant(given: str, actual: str) -> None:
    with pytest.raises(CheckpointMismatchError, match=f"wrong variant '{given}'.*{actual}") as info:
        model_from_official_state_dict(meta_state(actual), given)
    assert "backbone.0.body" in str(info.value)


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-layout Swin-T file with a 1-layer text encoder; tensors are cheap expanded views of one zero."""
    one = torch.zeros(1)
    state = {}
    for key, shape, dtype in official_specs("video_swin_t"):
        if dtype == "torch.float32":
            m = re.match(r"text_encoder\.text_backbone\.encoder\.layer\.(\d+)\.", key)
            if m and int(m.group(1)) >= 1:
                continue  # a 1-layer text encoder: the converter reads the depth from the file
            state[key] = one.expand(shape)
    state["query_embed.weight"] = torch.arange(5 * 256, dtype=torch.float32).view(5, 256)
    path = tmp_path_factory.mktemp("official") / "sgmg_t.pth"
    torch.save({"model": state, "epoch": 3}, path)
    return path


def test_load_from_pth_file(official_pth: Path, tmp_path: Path) -> None:
    """The whole file path: torch.load(weights_only=True) of {'model': ...}."""
    model = load_official_checkpoint(official_pth, variant="video_swin_t")
    assert not model.training
    assert model.text_encoder.model.config.num_hidden_layers == 1
    assert torch.equal(model.query_embed.weight, torch.arange(5 * 256, dtype=torch.float32).view(5, 256))
    assert model.config.text.arch["num_hidden_layers"] == 1

    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "absent.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="'model'"):
        load_official_checkpoint(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="valid"):
        load_official_checkpoint(official_pth, variant="resnet50")


def test_convert_command(official_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    commands.configure(parser)
    out = tmp_path / "converted"
    assert commands.run(parser.parse_args([str(official_pth), str(out), "--variant", "video_swin_t"])) == 0
    assert "wrote" in capsys.readouterr().out
    model = load_checkpoint(out)
    assert torch.equal(model.query_embed.weight, torch.arange(5 * 256, dtype=torch.float32).view(5, 256))
    assert model.config.text.arch["num_hidden_layers"] == 1
    assert commands.run(parser.parse_args([str(official_pth), str(out), "--variant", "video_swin_b"])) == 1
    assert "wrong variant" in capsys.readouterr().err
