"""pipelines.train: Ray Train (2 CPU workers, DDP over gloo) on an ingest, checkpoints in S3 (moto on loopback),
metrics in MLflow (sqlite). Resuming after failures: test_train_faults.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipelines import storage, tracking, train_job, train_worker
from pipelines import train as ray_train


def test_job_config_validation(tmp_path) -> None:
    job = train_job.load_job(None, ["shards=/data/x", "train.max_steps=3", "train.optim.lr=2e-5", "num_workers=4"])
    assert job.train.max_steps == 3 and job.train.optim.lr == 2e-5 and job.num_workers == 4
    assert train_job.job_from_dict(dataclasses.asdict(job)) == job  # what the workers rebuild
    with pytest.raises(ValueError, match="shards: expected the --dest of a finished `sgmg ingest`"):
        train_job.load_job(None, [])
    with pytest.raises(ValueError, match=r"train\.optim\.lr"):
        train_job.load_job(None, ["shards=x", "train.optim.lr=fast"])
    with pytest.raises(ValueError, match="recipe"):
        train_job.load_job(None, ["shards=x", "recipe=mosaic"])
    # every value is checked on the driver, before Ray starts; the error names the override it came from
    with pytest.raises(
        ValueError, match=r"train\.optim\.lr: expected a finite number, got 'nan' \(from the command-line "
    ):
        train_job.load_job(None, ["shards=x", "train.optim.lr=nan"])
    with pytest.raises(ValueError, match="cpus_per_worker: expected a number of CPUs > 0, got 0.0"):
        train_job.load_job(None, ["shards=x", "cpus_per_worker=0"])
    with pytest.raises(FileNotFoundError):
        train_job.load_job(tmp_path / "missing.yaml")
    assert train_job.steps_per_epoch(10, job) == 2  # 10 samples / (batch 1 x 4 workers)
    assert train_job.resource_problem(job, {"CPU": 5.0}) is None  # 4 workers x 1 + 1 decode
    assert "needs 5 CPUs" in train_job.resource_problem(job, {"CPU": 4.0})
    gpu_job = dataclasses.replace(job, use_gpu=True)
    assert "needs 4 GPUs" in train_job.resource_problem(gpu_job, {"CPU": 8.0, "GPU": 2.0})


def test_default_tracking_uri_is_resolved_on_the_driver(tmp_path, monkeypatch) -> None:
    """Workers run in Ray's session folder: they must get the driver's URI, not compute a default of their own."""
    monkeypatch.chdir(tmp_path)
    job = train_job.prepare_tracking(train_job.load_job(None, ["shards=/x"]))
    assert job.tracking.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and (tmp_path / "mlflow.db").is_file()
    off = train_job.load_job(None, ["shards=/x", "tracking.enabled=false"])
    assert train_job.prepare_tracking(off) == off and off.tracking.tracking_uri is None


def test_workers_print_each_line_once() -> None:
    """Train V2's print patch copies every worker print to the root logger as well as to stdout: lines came twice."""
    run_config = ray_train._run_config(train_job.load_job(None, ["shards=/x", "storage_path=/tmp/x"]))
    assert run_config.worker_runtime_env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"


@pytest.mark.parametrize("name", ["train.yaml", "train_tiny.yaml", "train_tiny_demo.yaml"])
def test_shipped_train_configs_are_valid(name: str) -> None:
    from pathlib import Path

    job = train_job.load_job(Path(ray_train.__file__).parent / "configs" / name)
    assert job.shards and job.train.max_steps > job.train.checkpoint_every


@pytest.mark.integration
def test_train_two_workers_checkpoints_to_s3_and_resumes(small_ingest, s3_bucket, tmp_path) -> None:
    uri = tracking.default_tracking_uri(tmp_path)
    overrides = [
        f"shards={small_ingest}",
        f"val_shards={small_ingest}",
        f"storage_path=s3://{s3_bucket}/runs",
        "name=tiny",
        "num_workers=2",
        "cpus_per_worker=0.5",
        "data_cpus=0.5",
        "shuffle_buffer=0",
        f"tracking.tracking_uri={uri}",
        "train.model=sgmg_tiny",
        "train.data.num_frames=2",
        "train.data.max_size=96",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.keep_checkpoints=2",
    ]
    first = ray_train.fit(train_job.load_job(None, overrides), log=lambda m: None)
    assert (
        first.metrics["step"] == 4 and first.checkpoint and first.checkpoint.startswith(f"s3://{s3_bucket}/runs/tiny/")
    )
    assert storage.exists(storage.join(first.checkpoint, "model.safetensors"))
    history = tracking.run_metrics(uri, first.mlflow_run_id)
    assert [s for s, _ in history["loss"]] == [1, 2, 3, 4] and all(v > 0 for _, v in history["loss"])
    assert "clips_per_s" in history and "loss/loss_dice" in history
    assert [s for s, _ in history["val_jf"]] == [2, 4] and all(0.0 <= v <= 1.0 for _, v in history["val_jf"])
    assert 0.0 <= first.metrics["val_jf"] <= 1.0

    # the checkpoint's model files load as a plain model checkpoint
    import sgmg

    local = tmp_path / "ckpt"
    local.mkdir()
    for name in ("model.safetensors", "config.json"):
        (local / name).write_bytes(storage.read_bytes(storage.join(first.checkpoint, name)))
    assert sgmg.load_checkpoint(local).config == sgmg.build_model("sgmg_tiny").config
    state = json.loads(storage.read_bytes(storage.join(first.checkpoint, "trainer_state.json")))
    assert state["world_size"] == 2 and state["step"] == 4 and state["mlflow_run_id"] == first.mlflow_run_id

    # a rerun resuming from the last checkpoint: tests/pipelines/test_train_faults.py (driver killed, then rerun)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["job.train.max_steps"] == "4"
    assert run.data.tags[tracking.RUN_PATH_TAG] == f"s3://{s3_bucket}/runs/tiny"
    assert {a.path for a in client.list_artifacts(first.mlflow_run_id, "checkpoint")} >= {
        "checkpoint/model.safetensors",
        "checkpoint/config.json",
    }


@pytest.mark.integration
def test_validation_split_over_ranks_equals_one_process(small_ingest) -> None:
    """Each rank scores its share of the held-out ingest; the all-reduced sums give the single-process metrics."""
    import torch

    from sgmg.data.tokenizer import load_tokenizer
    from sgmg.zoo import build_model

    job = train_job.load_job(
        None,
        [f"shards={small_ingest}", f"val_shards={small_ingest}", "train.model=sgmg_tiny", "train.data.num_frames=2"],
    )
    torch.manual_seed(0)
    model = build_model("sgmg_tiny").eval()
    tokenizer = load_tokenizer(model.config.text.tokenizer_source)
    device = torch.device("cpu")
    whole = train_worker.validation_metrics(job, model, tokenizer, device)
    shares = [train_worker.validation_sums(job, model, tokenizer, device, rank=r, world=3) for r in range(3)]
    assert all(s[2] > 0 for s in shares[:2])  # the shares are real splits (4 videos over 3 ranks)
    split = train_worker.validation_metrics(
        job, model, tokenizer, device, rank=1, world=3, all_reduce=lambda mine: sum(shares)
    )
    # J and F are exact; the loss is a second forward in train mode (dropout, as upstream), so close, not equal
    assert {k: split[k] for k in ("val_j", "val_f", "val_jf")} == pytest.approx(
        {k: whole[k] for k in ("val_j", "val_f", "val_jf")}, rel=1e-9, abs=1e-12
    )
    assert split["val_loss"] == pytest.approx(whole["val_loss"], rel=0.05)
    assert 0.0 <= whole["val_jf"] <= 1.0

    # several clips a forward pass, without the loss's second forward: the same J and F, no val_loss
    batched = dataclasses.replace(job, val_batch_size=3, val_loss=False)
    fast = train_worker.validation_metrics(batched, model, tokenizer, device)
    assert set(fast) == {"val_j", "val_f", "val_jf"}
    assert fast == pytest.approx({k: whole[k] for k in fast}, rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="val_batch_size"):
        dataclasses.replace(job, val_batch_size=0)


def test_checkpoints_ray_train_never_registered_are_deleted(tmp_path) -> None:
    """A worker that dies between storing its checkpoint and the report barrier leaves a folder Ray Train does not
    hold (so never deletes): removed when the run ends, so keep_checkpoints holds."""
    run = tmp_path / "run"
    for name in ("step_0000002", "step_0000004", "step_0000006", "checkpoint_manager_snapshot.json"):
        (run / name).mkdir(parents=True) if name.startswith("step_") else (run / name).write_text("{}")
        if name.startswith("step_"):
            (run / name / "model.safetensors").write_bytes(b"x")
    lines: list[str] = []
    gone = ray_train.remove_unregistered_checkpoints(str(run), [str(run / "step_0000006")], log=lines.append)
    assert gone == ["step_0000002", "step_0000004"] and "never registered" in lines[0]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_manager_snapshot.json", "step_0000006"]
    assert ray_train.remove_unregistered_checkpoints(str(tmp_path / "missing"), []) == []
