"""The model registry's champion only gets better: pipelines.registry.register_candidate / promote / rollback and the
``sgmg registry`` command, on MLflow with a sqlite store in a temp folder and a real tiny checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipelines import registry, tracking
from sgmg.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    import sgmg

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    sgmg.save_checkpoint(sgmg.build_model("sgmg_tiny"), folder)
    return folder


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return tracking.default_tracking_uri(tmp_path)


def _champion(uri: str) -> str:
    return registry.get_version(uri, "sgmg").version


def test_decide_promotion_rules() -> None:
    def champ(jf: float | None, val_set: str | None) -> registry.VersionInfo:
        return registry.VersionInfo("7", jf, val_set, "sweep:s", ("champion",), "2026-01-01T00:00:00+00:00", None, {})

    assert registry.decide_promotion(0.1, "A", None) == (True, "no champion yet; val_jf 0.1000")
    assert registry.decide_promotion(0.5, "A", champ(0.4, "A"))[0] is True
    assert registry.decide_promotion(0.4, "A", champ(0.4, "A"))[0] is False  # strictly higher only
    assert "another validation set" in registry.decide_promotion(0.9, "B", champ(0.4, "A"))[1]
    assert "no recorded val_jf" in registry.decide_promotion(0.9, "A", champ(None, "A"))[1]
    assert "no recorded val_jf" in registry.decide_promotion(0.9, "A", champ(0.1, None))[1]
    assert registry.decide_promotion(None, "A", None)[0] is False  # an unscored version never becomes champion alone


def test_champion_moves_only_to_a_better_version_on_the_same_validation_set(
    uri: str, checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipelines.registry")

    def register(jf: float | None, val_set: str | None) -> registry.Registration:
        return registry.register_candidate(
            uri, checkpoint, "sgmg", val_jf=jf, val_set=val_set, source="sweep:s1", config={"train": {"lr": 1e-4}}
        )

    first = register(0.30, "A")
    assert (first.version, first.promoted) == ("1", True) and "no champion yet" in first.reason
    worse = register(0.20, "A")  # e.g. the lr=1e-12, max_steps=1 sweep
    assert not worse.promoted and "0.2000 <= champion (version 1) 0.3000" in worse.reason
    assert "version 2 registered, champion not moved: val_jf 0.2000 <= champion" in caplog.text
    assert not register(0.30, "A").promoted  # a tie does not move it
    other_set = register(0.90, "B")
    assert not other_set.promoted and "another validation set" in other_set.reason
    better = register(0.40, "A")
    assert (better.version, better.promoted) == ("5", True) and _champion(uri) == "5"
    assert (
        "models:/sgmg@champion moved from version 1 to 5 by " in caplog.text and "automatic (sweep:s1)" in caplog.text
    )

    info = registry.get_version(uri, "sgmg", "5")
    assert info.val_jf == 0.40 and info.val_set == "A" and info.source == "sweep:s1" and info.aliases == ("champion",)
    assert json.loads(info.tags["config"]) == {"train": {"lr": 1e-4}}
    assert [v.version for v in registry.list_versions(uri, "sgmg")] == ["5", "4", "3", "2", "1"]
    # the replaced champion is remembered; rollback moves the alias back and forgets the move
    assert [h["version"] for h in registry.alias_history(uri, "sgmg")] == ["1"]
    assert registry.rollback(uri, "sgmg", why="regression in prod") == ("5", "1") and _champion(uri) == "1"
    assert registry.alias_history(uri, "sgmg") == []
    with pytest.raises(registry.RegistryError, match="no earlier version to roll back to"):
        registry.rollback(uri, "sgmg")


def test_a_champion_without_score_is_kept_until_promoted_by_hand(uri: str, checkpoint: Path) -> None:
    unscored = registry.register_candidate(uri, checkpoint, "sgmg", val_jf=None, val_set=None, source="run:r")
    assert not unscored.promoted and "promote it by hand" in unscored.reason
    assert registry.promote(uri, "sgmg", unscored.version, why="first model") is None
    scored = registry.register_candidate(uri, checkpoint, "sgmg", val_jf=0.9, val_set="A", source="run:r2")
    assert not scored.promoted and "no recorded val_jf" in scored.reason and _champion(uri) == "1"


def _artifact_file(uri: str, version: str, name: str) -> Path:
    """The stored file ``checkpoint/NAME`` of a version (sqlite store: artifacts in a local folder)."""
    from mlflow.tracking import MlflowClient

    root = MlflowClient(uri, uri).get_model_version_download_uri("sgmg", version)
    path = Path(root[len("file://") :]) / "artifacts" / "checkpoint" / name
    assert path.is_file(), path
    return path


def test_registry_command_list_show_promote_rollback(
    uri: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for jf in (0.5, 0.2, 0.1):
        registry.register_candidate(uri, checkpoint, "sgmg", val_jf=jf, val_set="f00d" * 16, source="sweep:s")
    opts = ["--tracking-uri", uri]
    assert main(["registry", "list", *opts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["version", "val_jf", "validation"] and len(lines) == 4
    assert lines[1].split()[:4] == ["3", "0.1000", "f00df00df00d", "-"]
    assert lines[3].split()[:4] == ["1", "0.5000", "f00df00df00d", "champion"]

    assert main(["registry", *opts, "show"]) == 0  # options before the action work too
    out = capsys.readouterr().out
    assert "model sgmg version 1" in out and "val_jf:         0.5000" in out and "checkpoint:     complete" in out

    # a version whose checkpoint files are gone is refused
    _artifact_file(uri, "2", "model.safetensors").unlink()
    assert main(["registry", "promote", "2", *opts]) == 2
    err = capsys.readouterr().err
    assert "version 2 of 'sgmg' cannot be loaded" in err and "model.safetensors" in err and _champion(uri) == "1"
    assert main(["registry", "show", "2", *opts]) == 0
    assert "MISSING model.safetensors" in capsys.readouterr().out

    # promote by hand (whatever the score), then roll back; each move is printed with who and why
    assert main(["registry", "promote", "3", "--reason", "canary", *opts]) == 0
    captured = capsys.readouterr()
    assert "models:/sgmg@champion -> version 3 (was 1)" in captured.out
    assert "moved from version 1 to 3 by " in captured.err and "manual promotion: canary" in captured.err
    assert main(["registry", "show", *opts]) == 0
    assert "version 1 until " in capsys.readouterr().out  # the history
    assert main(["registry", "rollback", *opts]) == 0
    assert "-> version 1 (rolled back from 3)" in capsys.readouterr().out and _champion(uri) == "1"
    assert main(["registry", "rollback", *opts]) == 2
    assert "no earlier version" in capsys.readouterr().err
    assert main(["registry", "promote", "99", *opts]) == 2
    assert "has no version '99'" in capsys.readouterr().err
    assert main(["registry", "list", "--name", "other", *opts]) == 2


def test_registry_command_default_uri_is_the_train_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import registry_cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert registry_cli.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert registry_cli.resolve_tracking_uri(None) == "http://mlflow:5000"
    assert registry_cli.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main(["registry", "list"]) == 2  # no database here: said so, nothing created
    assert "no MLflow database at" in capsys.readouterr().err and not (tmp_path / "mlflow.db").exists()
