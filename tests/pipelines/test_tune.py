"""pipelines.tune: a Ray Tune sweep of Ray Train jobs (ASHA, 2 trials) that registers the best checkpoint in the
MLflow Model Registry as ``champion``; the registered model loads back as torch and as an MLflow pyfunc."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipelines import model_uris, storage, sweep_config, tracking, tune

SPACE = '{"train.optim.lr": {"grid": [1.0e-4, 1.0e-3]}}'


def tiny_job(shards: str, storage_path: object, tracking_uri: str, *, max_steps: int) -> list[str]:
    """``job.*`` overrides of a sweep whose trials are tiny Ray Train jobs that fit the session's 4-CPU cluster: one
    worker of ``sgmg_tiny`` on 2-frame clips of ``shards``, a checkpoint (a report to Tune) every step."""
    return [
        f"job.shards={shards}",
        f"job.storage_path={storage_path}",
        "job.num_workers=1",
        "job.cpus_per_worker=0.5",
        "job.data_cpus=0.5",
        "job.shuffle_buffer=0",
        f"job.tracking.tracking_uri={tracking_uri}",
        "job.train.model=sgmg_tiny",
        "job.train.data.num_frames=2",
        "job.train.data.max_size=96",
        f"job.train.max_steps={max_steps}",
        "job.train.checkpoint_every=1",
    ]


def test_sweep_config_validation() -> None:
    cfg = sweep_config.load_sweep(None, ["job.shards=/x", "job.val_shards=/y", f"space={SPACE}", "num_samples=1"])
    assert cfg.metric == "val_jf" and cfg.job.val_shards == "/y"
    job = sweep_config.trial_job(
        dataclasses.asdict(cfg.job), {"train.optim.lr": 3e-4, "train.loss.weight_dice": 3}, "t1"
    )
    assert job.train.optim.lr == 3e-4 and job.train.loss.weight_dice == 3.0 and job.name == "t1"
    with pytest.raises(ValueError, match="not a field"):
        sweep_config.trial_job(dataclasses.asdict(cfg.job), {"train.optim.lrr": 1.0}, "t1")
    with pytest.raises(ValueError, match="val_shards"):
        sweep_config.load_sweep(None, ["job.shards=/x", f"space={SPACE}"])
    with pytest.raises(ValueError, match="val_loss needs job.val_loss"):
        sweep_config.load_sweep(
            None, ["job.shards=/x", "job.val_shards=/y", f"space={SPACE}", "metric=val_loss", "job.val_loss=false"]
        )
    with pytest.raises(ValueError, match="space.train.optim.lr"):
        sweep_config.load_sweep(
            None, ["job.shards=/x", "job.val_shards=/y", 'space={"train.optim.lr": {"normal": [0, 1]}}']
        )
    with pytest.raises(ValueError, match="job: expected the base Ray Train job"):
        sweep_config.load_sweep(None, [f"space={SPACE}"])
    # the space is checked before any trial runs: bounds, and the jobs its extreme values make
    base = ["job.shards=/x", "job.val_shards=/y"]
    for space, message in (
        ('{"train.optim.lr": {"loguniform": [0, 1.0e-3]}}', "0 < low < high"),
        ('{"train.optim.lr": {"uniform": [1.0e-3, 1.0e-4]}}', "low < high"),
        ('{"train.optim.lr": {"uniform": [-1, 1.0e-3]}}', r"train.optim.lr: expected a number > 0"),
        ('{"train.loss.weight_dice": {"choice": [1, .nan]}}', "train.loss.weight_dice: expected a finite number"),
        ('{"train.optim.lrr": {"uniform": [1, 2]}}', "not a field of the job"),
    ):
        with pytest.raises(ValueError, match=message):
            sweep_config.load_sweep(None, [*base, f"space={space}"])


@pytest.mark.integration
def test_sweep_registers_the_best_trial_as_champion(small_ingest, tmp_path) -> None:
    uri = tracking.default_tracking_uri(tmp_path)
    cfg = sweep_config.load_sweep(
        None,
        [
            f"space={SPACE}",
            "num_samples=1",
            "grace_period=1",
            "name=sweep",
            *tiny_job(small_ingest, tmp_path / "runs", uri, max_steps=2),
            f"job.val_shards={small_ingest}",
        ],
    )
    result = tune.sweep(cfg, log=lambda m: None)
    assert sorted(p["train.optim.lr"] for p, _ in result.trials) == [1.0e-4, 1.0e-3]
    scores = [m["val_jf"] for _, m in result.trials]
    assert result.best_metrics["val_jf"] == max(scores)
    assert result.registered_version == "1" and result.best_checkpoint

    # the champion is the best trial's checkpoint, logged into that trial's MLflow run
    model = model_uris.load_registered_model(uri, "models:/sgmg@champion")
    from safetensors.torch import load

    best = load(storage.read_bytes(storage.join(result.best_checkpoint, "model.safetensors")))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("sgmg", "champion")
    state = json.loads(storage.read_bytes(storage.join(result.best_checkpoint, "trainer_state.json")))
    assert version.run_id == state["mlflow_run_id"] and version.tags["val_jf"] == str(result.best_metrics["val_jf"])
    # tagged with the validation set's identity, the sweep and the trial's config; champion because it is the first
    from pipelines import ingested

    assert version.tags["val_set"] == ingested.manifest_hash(small_ingest) and version.tags["source"] == "sweep:sweep"
    assert json.loads(version.tags["config"])["val_shards"] == small_ingest and result.registration.promoted

    # MLflow: one parent run for the sweep, one nested run per trial (params: the sampled values), all ended; the
    # results table and the plot on the parent
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[tracking.RUN_PATH_TAG].startswith("sweep:")
    children = tracking.child_runs(uri, result.mlflow_run_id)
    assert sorted(float(c.data.params["train.optim.lr"]) for c in children) == [1.0e-4, 1.0e-3]
    statuses = [
        (c.info.status, c.data.tags.get("sgmg.trial_status"), c.data.tags.get(tracking.ERROR_TAG)) for c in children
    ]
    assert all(s in (("FINISHED", "finished", None), ("KILLED", "stopped early", None)) for s in statuses), statuses
    assert version.run_id in {c.info.run_id for c in children}
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id, "sweep")} == {
        "sweep/results.csv",
        "sweep/results.md",
        "sweep/metric_vs_params.png",
    }
    table = client.download_artifacts(result.mlflow_run_id, "sweep/results.csv", str(tmp_path))
    lines = open(table).read().splitlines()
    assert lines[0].split(",")[:3] == ["trial", "status", "train.optim.lr"] and len(lines) == 3

    # and serves as an MLflow pyfunc: video folder + sentence -> RLE masks per frame
    import mlflow.pyfunc
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 56, 3), 40 * i, np.uint8)).save(frames / f"{i:05d}.jpg")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model("models:/sgmg@champion")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    out = pyfunc.predict([{"video": str(frames), "text": "the red box"}])
    assert len(out) == 1 and len(out[0]["masks"]) == 3 and out[0]["masks"][0]["size"] == [40, 56]
    assert len(out[0]["scores"]) == 3


def test_shipped_sweep_config_is_valid() -> None:
    from pathlib import Path

    cfg = sweep_config.load_sweep(Path(tune.__file__).parent / "configs" / "sweep.yaml")
    assert cfg.job.val_shards and len(cfg.space) == 5
    params = {"train.optim.lr": 1e-4, "train.loss.weight_dice": 5.0}
    assert sweep_config.trial_job(dataclasses.asdict(cfg.job), params, "t").train.loss.weight_dice == 5.0


@pytest.mark.integration
def test_killed_sweep_is_resumed_by_a_rerun(ray_cluster, small_ingest, tmp_path) -> None:
    """``sgmg sweep`` (a driver process on the session's cluster) SIGKILLed while its second trial runs, then the
    same command again: Tune restores the sweep, the finished trial is not rerun, the sweep completes with one
    parent run and no trial run left RUNNING."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import ray
    from mlflow.tracking import MlflowClient

    uri = tracking.default_tracking_uri(tmp_path)
    args = [
        'space={"train.optim.lr": {"grid": [1.0e-4, 1.0e-3]}}',
        "num_samples=1",
        "scheduler=fifo",
        "metric=loss",
        "mode=min",
        "register_as=null",
        "name=killed",
        *tiny_job(small_ingest, tmp_path / "runs", uri, max_steps=3),
        "job.train.log_every=1",
    ]
    env = os.environ | {
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "PYTHONPATH": os.pathsep.join([str(Path(tune.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "sgmg.cli", "sweep", *args]
    client = MlflowClient(tracking_uri=uri)

    def sweep_runs() -> list:
        experiments = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(experiments, filter_string="tags.`sgmg.kind` = 'sweep'") if experiments else []

    def trial_runs() -> list:
        parents = sweep_runs()
        return tracking.child_runs(uri, parents[0].info.run_id) if parents else []

    with (tmp_path / "first.log").open("w") as out:
        driver = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            runs = trial_runs()
            if len(runs) == 2 and sum(r.info.status == "FINISHED" for r in runs) == 1:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    (finished,) = [r for r in trial_runs() if r.info.status == "FINISHED"]

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming the interrupted sweep" in rerun.stdout
    assert len(sweep_runs()) == 1 and sweep_runs()[0].info.status == "FINISHED"
    runs = trial_runs()
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["sgmg.trial_id"] for r in runs}) == 2
    # the finished trial was not trained again. (Its run ends FINISHED a moment before Tune records the trial as
    # terminated; a kill in between makes the restored sweep start it again, and its Ray Train run then resumes from
    # its last checkpoint, at max_steps, and trains nothing.)
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "loss")] == [1, 2, 3]
    resumed = client.get_metric_history(finished.info.run_id, "resumed_from_step")
    assert all(m.value == 3 for m in resumed), [(m.step, m.value) for m in resumed]
