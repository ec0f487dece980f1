"""``sgmg train`` argument handling (no model is built)."""

from __future__ import annotations

import pytest

from sgmg.cli import main


def test_train_without_local_explains(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("pipelines.train") is not None:
        pytest.skip("the Ray launcher exists; sgmg train dispatches to it")
    assert main(["train"]) == 2
    assert "--local" in capsys.readouterr().err


def test_bad_override_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--local", "optim.lrr=3"]) == 2
    assert "unknown config key(s) ['optim.lrr']" in capsys.readouterr().err


def test_missing_config_file_is_reported(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--local", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
