"""``sgmg train`` argument handling (no model is built)."""

from __future__ import annotations

import pytest

from sgmg.cli import main


def test_train_without_local_is_the_ray_job_and_validates_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2  # no shards given: refused before Ray starts
    assert "shards: expected the --dest of a finished `sgmg ingest`" in capsys.readouterr().err
    assert main(["train", "shards=/data/x", "train.optim.lrr=3"]) == 2
    assert "train.optim.lrr" in capsys.readouterr().err
    # a non-finite value is refused here, naming the override (it used to start Ray and kill the workers)
    assert main(["train", "shards=/data/x", "train.optim.lr=nan"]) == 2
    err = capsys.readouterr().err
    assert "train.optim.lr: expected a finite number, got 'nan'" in err
    assert "from the command-line override 'train.optim.lr=nan'" in err and "fix:" in err


def test_bad_override_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--local", "optim.lrr=3"]) == 2
    assert "unknown config key(s) ['optim.lrr']" in capsys.readouterr().err


def test_missing_config_file_is_reported(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--local", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


def test_register_is_for_the_ray_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--local", "--register", "sgmg", "max_steps=1"]) == 2
    assert "--register is for the Ray Train job" in capsys.readouterr().err
    assert main(["train", "--register", "sgmg", "shards=/x", "tracking.enabled=false"]) == 2
    assert "needs a model name and MLflow tracking" in capsys.readouterr().err
