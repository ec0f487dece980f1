"""TrainConfig YAML loading and dotted overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sgmg.config_io import ConfigValueError, apply_overrides, flatten
from sgmg.train.config import LossConfig, OptimConfig, TrainConfig, load_train_config


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: sgmg_tiny\ndata: {root: /data, num_frames: 2}\noptim: {lr: 2.0e-5, lr_milestones: [1, 2]}\n"
    )
    cfg = load_train_config(
        path, ["loss.weight_dice=3", "optim.betas=[0.8, 0.9]", "model_overrides.text.freeze=false", "precision=bf16"]
    )
    assert cfg.data.root == "/data" and cfg.data.num_frames == 2 and cfg.data.batch_size == 1
    assert cfg.optim.lr == 2e-5 and cfg.optim.lr_milestones == (1, 2) and cfg.optim.betas == (0.8, 0.9)
    assert cfg.loss.weight_dice == 3.0 and cfg.loss.weight_score == 2.0
    assert cfg.model_overrides == {"text": {"freeze": False}}
    assert cfg.precision == "bf16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_steps = 3  # type: ignore[misc]
    # the checkpointed form loads back
    from sgmg.config_io import from_dict

    assert from_dict(TrainConfig, dataclasses.asdict(cfg)) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown config key\(s\) \['optim.lrr'\]"),
        ("max_steps=abc", "max_steps: expected an integer"),
        ("precision=fp8", "precision: expected one of"),
        ("loss.weight_dice=-1", r"loss.weight_dice: expected a number >= 0 .*, got -1.0"),
        ("optim.lr_milestones=[5, 3]", "increasing"),
        ("noequals", "dotted.key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_train_config(None, [override])


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_train_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="bad.yaml: expected a mapping"):
        load_train_config(bad)


def test_defaults_follow_the_official_recipe() -> None:
    loss, optim = LossConfig(), OptimConfig()
    assert (loss.weight_score, loss.weight_bbox, loss.weight_giou, loss.weight_mask, loss.weight_dice) == (
        2,
        5,
        2,
        2,
        5,
    )
    assert (loss.cost_class, loss.cost_bbox, loss.cost_giou, loss.cost_mask, loss.cost_dice) == (2, 5, 2, 2, 5)
    assert (optim.lr, optim.lr_visual_encoder, optim.lr_text_encoder, optim.weight_decay) == (1e-4, 5e-5, 1e-5, 5e-4)
    assert optim.clip_max_norm == 0.1 and optim.lr_gamma == 0.1
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("optim.lr=nan", "optim.lr", "a finite number"),
        ("optim.lr=.inf", "optim.lr", "a finite number"),
        ("optim.lr=0", "optim.lr", "a number > 0"),
        ("optim.lr_text_encoder=-1e-5", "optim.lr_text_encoder", "a number >= 0"),
        ("optim.betas=[0.9, 1.5]", "optim.betas", "two AdamW betas in [0, 1)"),
        ("optim.eps=0", "optim.eps", "a number > 0"),
        ("optim.lr_gamma=2", "optim.lr_gamma", "a factor in (0, 1]"),
        ("loss.focal_alpha=1.5", "loss.focal_alpha", "a probability in [0, 1]"),
        ("loss.weight_mask=nan", "loss.weight_mask", "a finite number"),
        ("data.batch_size=0", "data.batch_size", "an integer >= 1"),
        ("max_steps=0", "max_steps", "an integer >= 1"),
        ("seed=-3", "seed", "an integer >= 0"),
        ("model=sgmg_tinyy", "model", "one of ["),
        ("model_overrides.text.nope=1", "model_overrides", "fields of the sgmg_tiny model config"),
    ],
)
def test_every_value_is_checked_and_the_error_names_the_override(override: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigValueError) as info:
        load_train_config(None, ["max_steps=10", override])
    err = info.value
    assert err.key == key and expected in err.expected, str(err)
    assert err.origin == f"the command-line override {override!r}", str(err)
    assert str(err).startswith(f"{key}: ") and "; fix: " in str(err)


def test_a_bad_value_in_the_yaml_file_names_the_file_and_an_override_wins(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim: {lr: -1.0}\nloss: {weight_dice: 3}\n")
    with pytest.raises(ConfigValueError) as info:
        load_train_config(path, ["loss.weight_dice=4"])
    message = str(info.value)
    assert message.startswith("optim.lr: expected a number > 0") and "got -1.0" in message
    assert f"(from {path})" in message and f"correct optim.lr in {path}" in message and "optim.lr=0.0001" in message
    assert load_train_config(path, ["optim.lr=2e-5"]).optim.lr == 2e-5  # the override fixes it
    # an override of the whole section is the origin of the keys under it
    with pytest.raises(ConfigValueError, match=r"from the command-line override 'optim=\{lr: .nan\}'"):
        load_train_config(path, ["optim={lr: .nan}"])


def test_flatten_nested_overrides() -> None:
    assert flatten({"text": {"freeze": False}, "num_queries": 3}) == {"text.freeze": False, "num_queries": 3}
