"""The Serve config and settings, checked before Ray starts: the shipped serve.yaml, planted mistakes, the command
line's overrides, and ``sgmg serve`` refusing bad input with exit 2 (no Ray started)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml

from pipelines.serve.cli import DEFAULT_CONFIG, load_serve_config
from pipelines.serve.settings import AppSettings, Limits, ModelSettings, SettingsError, serve_config_problems
from sgmg.cli import main

SHIPPED = yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_shipped_config_passes_rays_schema_and_the_strict_check() -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(SHIPPED)
    assert serve_config_problems(SHIPPED) == []
    app = SHIPPED["applications"][0]
    assert app["import_path"] == "pipelines.serve.app:build_app"
    assert AppSettings.from_dict(app["args"]).limits == Limits()  # the file states the defaults
    model = next(d for d in app["deployments"] if d["name"] == "SgMgModel")
    assert model["max_ongoing_requests"] >= ModelSettings.from_dict(model["user_config"]).max_batch_size


def _planted(edit) -> list[str]:
    config = copy.deepcopy(SHIPPED)
    edit(config)
    return serve_config_problems(config)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(proxy_locaton="EveryNode"), "proxy_locaton"),
        (lambda c: c["http_options"].update(prot=8000), "prot"),
        (lambda c: c["applications"][0].update(import_paht="x:y"), "import_paht"),
        (lambda c: c["applications"][0]["deployments"][1].update(max_replica=3), "max_replica"),
        (lambda c: c["applications"][0]["deployments"][1]["ray_actor_options"].update(num_gpu=1), "num_gpu"),
        (lambda c: c["applications"][0]["deployments"][1]["autoscaling_config"].update(max_replicas="four"),
         "autoscaling_config"),
        (lambda c: c["applications"][0]["deployments"][1].update(max_ongoing_requests=2), "batches could never fill"),
        (lambda c: c["applications"][0]["deployments"][1]["user_config"].update(precision="fp8"), "precision"),
        (lambda c: c["applications"][0]["deployments"][1]["user_config"].update(max_batchsize=4), "max_batchsize"),
        (lambda c: c["applications"][0]["args"]["limits"].update(max_frames=0), "limits.max_frames"),
        (lambda c: c["applications"][0]["args"]["limits"].update(allowed_uri_prefixes=["http://x/"]), "prefixes"),
        (lambda c: c["applications"][0]["args"].update(windw=12), "windw"),
        (lambda c: c["applications"][0]["args"].update(reload_interval_s=float("nan")), "reload_interval_s"),
        (lambda c: c["applications"][0]["deployments"][0].update(name="Ingress"), "must be one of"),
        (lambda c: c["http_options"].update(port="eighty"), "not a valid Serve config"),
    ],
)  # fmt: skip
def test_each_planted_mistake_is_caught(edit, needle: str) -> None:
    problems = _planted(edit)
    assert problems and any(needle in p for p in problems), problems


def test_command_line_overrides_land_where_they_belong(tmp_path: Path) -> None:
    config = load_serve_config(
        DEFAULT_CONFIG,
        model="models:/other@staging",
        host="0.0.0.0",
        port=9000,
        tracking_uri="sqlite:///x.db",
        overrides=["limits.max_frames=100", "window=12", "SgMgModel.user_config.max_batch_size=1",
                   "SgMgModel.ray_actor_options.num_gpus=1", "http_options.request_timeout_s=60"],
    )  # fmt: skip
    app = config["applications"][0]
    assert app["args"]["model_uri"] == "models:/other@staging" and app["args"]["tracking_uri"] == "sqlite:///x.db"
    assert app["args"]["limits"]["max_frames"] == 100 and app["args"]["window"] == 12
    model = next(d for d in app["deployments"] if d["name"] == "SgMgModel")
    assert model["user_config"]["max_batch_size"] == 1 and model["ray_actor_options"]["num_gpus"] == 1
    assert config["http_options"] == {"host": "0.0.0.0", "port": 9000, "request_timeout_s": 60}
    assert load_serve_config(DEFAULT_CONFIG) == SHIPPED  # the file itself is not changed


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["limits.max_frames=-1"], "limits.max_frames"),
        (["SgMgModel.user_config.precision=fp8"], "precision"),
        (["windw=3"], "windw"),
        (["--model", "models:/sgmg"], "models:/NAME@ALIAS"),
        (["--model", "/nonexistent/checkpoint"], "not a checkpoint"),
        (["--config", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_sgmg_serve_refuses_bad_input_before_ray(
    args: list[str], needle: str, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.cluster

    def no_ray(**_):
        raise AssertionError("sgmg serve started Ray for a request it should have refused")

    monkeypatch.setattr(pipelines.cluster, "ray_session", no_ray)
    argv = ["serve", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args]
    if "--model" not in args:
        argv += ["--model", str(tmp_path)]  # a folder: only reached when the config is fine
    started = time.perf_counter()
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert time.perf_counter() - started < 10


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(SettingsError, match="request_timeout_s"):
        Limits(request_timeout_s=0)
    with pytest.raises(SettingsError, match="unknown key"):
        AppSettings.from_dict({"model_uri": "x", "limit": {}})
    with pytest.raises(SettingsError, match="max_batch_size"):
        ModelSettings(max_batch_size=0)
    assert AppSettings.from_dict(AppSettings().to_dict()) == AppSettings()
