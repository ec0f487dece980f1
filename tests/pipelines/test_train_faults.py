"""pipelines.train under injected faults: a ``RayTrainWorker`` process killed with SIGKILL before the first
checkpoint and again after one, and a ``sgmg train`` driver process killed and rerun. The job must finish at
``max_steps`` in one MLflow run (``FINISHED``, one value per step, the epoch counter going on as in an uninterrupted
run) and keep ``keep_checkpoints`` checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines import storage, tracking, train_job
from pipelines import train as ray_train


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 120.0, every: float = 0.1) -> object:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def train_worker_pids() -> list[int]:
    """The pids of the live ``RayTrainWorker`` actors (Ray's state API)."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,  # not "auto": other clusters may run on this machine
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        detail=True,
    )
    return sorted(a.pid for a in actors if a.pid)


def job_run(uri: str, run_path: str) -> object | None:
    """The MLflow run of the job at ``run_path`` (None until the driver opened it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{tracking.RUN_PATH_TAG}` = '{run_path}'",
    )
    assert len(runs) <= 1, f"{len(runs)} MLflow runs for one job"
    return runs[0] if runs else None


def logged_steps(uri: str, run_id: str, name: str = "loss") -> list[tuple[int, float]]:
    """``(step, wall time in s)`` of every logged value of a metric, in logging order."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, name)
    return sorted(((m.step, m.timestamp / 1000) for m in history), key=lambda x: x[1])


def registered_steps(run_path: str | Path) -> list[int]:
    """The steps of the checkpoints Ray Train registered (its ``checkpoint_manager_snapshot.json``)."""
    import re

    try:
        text = storage.read_bytes(storage.join(str(run_path), "checkpoint_manager_snapshot.json")).decode()
    except OSError:
        return []
    return sorted({int(m) for m in re.findall(r"step_(\d{7})", text)})


def checkpoint_names(run_path: str | Path) -> list[str]:
    try:
        return [n for n in storage.list_dir(str(run_path)) if n.startswith("step_")]
    except storage.StorageNotFoundError:
        return []


def overrides(small_ingest: str, uri: str, storage: Path, **extra: object) -> list[str]:
    base = {
        "shards": small_ingest,
        "storage_path": storage,
        "name": "faults",
        "num_workers": 2,
        "cpus_per_worker": 0.5,
        "data_cpus": 0.5,
        "shuffle_buffer": 0,
        "max_failures": 2,
        "tracking.tracking_uri": uri,
        "train.model": "sgmg_tiny",
        "train.data.num_frames": 2,
        "train.data.max_size": 96,
        "train.max_steps": 10,
        "train.checkpoint_every": 4,
        "train.log_every": 1,
        "train.keep_checkpoints": 1,
    }
    return [f"{k}={v}" for k, v in (base | extra).items()]


def assert_one_clean_history(uri: str, run_id: str, max_steps: int, steps_per_epoch: int) -> None:
    """One value per step for every metric, and the epoch of every step as in an uninterrupted run."""
    history = tracking.run_metrics(uri, run_id)
    for name in ("loss", "epoch", "lr", "loss/loss_dice"):
        assert [s for s, _ in history[name]] == list(range(1, max_steps + 1)), name
    assert [int(e) for _, e in history["epoch"]] == [(s - 1) // steps_per_epoch for s in range(1, max_steps + 1)]


@pytest.mark.integration
def test_worker_killed_before_and_after_a_checkpoint(small_ingest, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines import ingested

    uri = tracking.default_tracking_uri(tmp_path)
    job = train_job.load_job(None, overrides(small_ingest, uri, tmp_path / "runs", **{"train.max_steps": 24}))
    run_path = tmp_path / "runs" / "faults"
    spe = train_job.steps_per_epoch(int(ingested.load_manifest(small_ingest)["num_samples"]), job)
    assert 1 < spe < 12  # the run crosses epochs, so the epoch counter is checked
    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = ray_train.fit(job, log=lambda m: None)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            box["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    run = wait_for("the driver to open the MLflow run", lambda: job_run(uri, str(run_path)))
    run_id = run.info.run_id

    # 1. before the first checkpoint: a worker dies at step >= 1
    wait_for("step 1", lambda: logged_steps(uri, run_id))
    assert checkpoint_names(run_path) == [], "the first kill must come before the first checkpoint"
    first_pids = train_worker_pids()
    os.kill(first_pids[-1], signal.SIGKILL)

    # 2. after a checkpoint of the restarted group that Ray Train registered (its snapshot lists it): kill again
    wait_for("a restarted worker group", lambda: set(train_worker_pids()).isdisjoint(first_pids), every=0.5)
    restored = wait_for("a registered checkpoint", lambda: registered_steps(run_path), timeout=180, every=0.05)[-1]
    watermark = max(s for s, _ in logged_steps(uri, run_id))
    killed_at = time.time()
    second_pids = train_worker_pids()
    os.kill(second_pids[0], signal.SIGKILL)
    assert watermark < 24, "the second kill must come before the end"

    thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not end"
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.metrics["step"] == 24 and result.mlflow_run_id == run_id
    first_new = min(t for s, t in logged_steps(uri, run_id) if s > watermark)
    print(
        f"restore: {first_new - killed_at:.1f}s from the SIGKILL to step {watermark + 1} logged "
        f"(restored at step {restored}, steps {restored + 1}-{watermark} trained again but not logged)"
    )

    # one MLflow run, FINISHED, one value per step; epochs as if never interrupted; params of the job
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["job.train.max_steps"] == "24" and run.data.params["world_size"] == "2"
    assert_one_clean_history(uri, run_id, 24, spe)
    assert (restored, float(restored)) in tracking.run_metrics(uri, run_id)["resumed_from_step"]
    # keep_checkpoints=1 holds, whatever the kills left behind
    assert checkpoint_names(run_path) == ["step_0000024"]


@pytest.mark.integration
def test_train_command_killed_and_rerun_resumes(ray_cluster, small_ingest, s3_bucket, tmp_path) -> None:
    """``sgmg train`` (a driver process on the session's cluster, through ``RAY_ADDRESS``; checkpoints in S3) killed
    with SIGKILL after a checkpoint; the same command again resumes from that checkpoint into the same MLflow run."""
    import ray

    uri = tracking.default_tracking_uri(tmp_path)
    run_path = f"s3://{s3_bucket}/runs/faults"
    args = overrides(
        small_ingest, uri, f"s3://{s3_bucket}/runs", **{"train.checkpoint_every": 3, "train.max_steps": 12}
    )
    env = os.environ | {
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "PYTHONPATH": os.pathsep.join([str(Path(ray_train.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "sgmg.cli", "train", *args]
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        restored = wait_for("a registered checkpoint", lambda: registered_steps(run_path), timeout=240, every=0.05)[-1]
        run_id = job_run(uri, run_path).info.run_id
        driver.kill()
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    wait_for("the killed driver's workers to go", lambda: not train_worker_pids(), timeout=60, every=0.5)
    before = max(s for s, _ in logged_steps(uri, run_id))
    assert before < 12, log.read_text()[-3000:]

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"MLflow run {run_id}" in rerun.stdout and "done: step 12" in rerun.stdout
    # from the checkpoint, not from step 0
    assert tracking.run_metrics(uri, run_id)["resumed_from_step"] == [(restored, float(restored))]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FINISHED"
    from pipelines import ingested

    spe = train_job.steps_per_epoch(
        int(ingested.load_manifest(small_ingest)["num_samples"]), train_job.load_job(None, args)
    )
    assert_one_clean_history(uri, run_id, 12, spe)
    assert checkpoint_names(run_path) == ["step_0000012"]
