"""Distributed training on Ray Train: ``sgmg train --config job.yaml [key=value ...]`` (without ``--local``).

One ``TorchTrainer`` run: ``num_workers`` workers (one per GPU with ``use_gpu``; DDP over NCCL, or gloo on CPU) each
run the training recipe of ``sgmg train --local`` (:class:`sgmg.train.trainer.Trainer`) on its split of the clip
stream of an ingest (``pipelines.stream``: Ray Data reads, decodes and augments on the cluster's CPUs and feeds every
worker through ``get_dataset_shard`` + ``iter_torch_batches`` with prefetch). Everything else is the local trainer's:
the same :class:`TrainConfig` (``train:`` section: model, loss, optim, max_steps, accumulation, precision, ...), the
same checkpoint layout.

Checkpoints: every ``train.checkpoint_every`` optimizer steps rank 0 writes a training checkpoint
(:mod:`sgmg.train.checkpoint`: model safetensors + config, optimizer, scheduler, counters and the position in the
epoch) and reports it to Ray Train, which stores it as ``storage_path/name/step_NNNNNNN`` (a local folder or
``s3://``, the S3 endpoint from ``AWS_ENDPOINT_URL``) and keeps the newest ``train.keep_checkpoints``. Every rank calls
``ray.train.report`` at the same steps (it is a barrier).

Resume: ``failure_config.max_failures`` (``-1``: retry forever) restarts the worker group from the latest checkpoint
after a worker or node failure; rerunning the same job (same ``storage_path`` and ``name``) after a driver crash
resumes it too. Either way the run continues its epoch where the checkpoint left it: the first pass over the stream
after a restart is cut to what the epoch had left (clips are drawn with fresh randomness on every pass,
``ClipConfig(seed=None)``, as distributed loaders do). A checkpoint stored but not registered when a worker died (the
report barrier never completed) is overwritten when its step is trained again, and any left over is deleted when the
run ends, so ``keep_checkpoints`` holds.

Validation (``val_shards``): at every checkpoint every rank scores the same unaugmented clip of every (video,
expression) of its share of a held-out ingest with ``sgmg.train.step.validation_step``, and the sums are all-reduced:
``val_j``, ``val_f``, ``val_jf`` (what sweeps select on) and ``val_loss``, the same as one process gets, reported with
the checkpoint; rank 0's cost does not grow with the held-out set.

Tracking (``tracking:``): the driver opens the job's MLflow run before the workers start, or finds it again on a
rerun (``pipelines.tracking.open_run``, keyed by ``storage_path/name``), and ends it when ``fit`` returns or fails;
rank 0 logs params, metrics per ``log_every`` steps (a step replayed after a restart is not logged again: one value
per step) and the final checkpoint into it. The default is a sqlite DB in the working directory.

Ray: ``RAY_ADDRESS`` (a running cluster, KubeRay's included) or a local Ray started by the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.train_job import RayTrainJob, load_job, prepare_tracking, resource_problem, steps_per_epoch
from pipelines.train_worker import train_loop_per_worker

# ------------------------------------------------------------------------------------------------ driver


@dataclass(frozen=True)
class TrainRunResult:
    """What :func:`fit` returns.

    Attributes:
        metrics: the last reported metrics (rank 0).
        checkpoint: URI/path of the last checkpoint (None when none was reported).
        run_path: ``storage_path/name``.
        mlflow_run_id: the MLflow run (None when tracking is off).
        seconds: wall time of ``fit``.
    """

    metrics: dict[str, Any]
    checkpoint: str | None
    run_path: str
    mlflow_run_id: str | None
    seconds: float


# Ray Train V2 replaces ``print`` in its workers by a copy to the root logger (whose console handler writes to the
# worker's stderr) plus, because a Ray worker's ``sys.stdout`` is not ``sys.__stdout__``, the original print: every
# line a worker prints reached the driver twice (``log_to_driver``). Off: each printed line is forwarded once.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def ray_storage(uri: str) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray Train and Tune: ``bucket/key`` and this project's S3 filesystem
    (:func:`pipelines.storage.s3_filesystem`) for an ``s3://`` URI; the absolute path and None (Ray's default) for a
    local one."""
    from pipelines import storage

    loc = storage.resolve(uri)
    return (loc.path, loc.fs) if loc.is_s3 else (loc.uri, None)


def _run_config(job: RayTrainJob, callbacks: Sequence[Any] = ()) -> Any:
    import ray.train

    storage_path, filesystem = ray_storage(job.storage_path)
    return ray.train.RunConfig(
        name=job.name,
        callbacks=list(callbacks) or None,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.train.keep_checkpoints),
        failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
        worker_runtime_env={"env_vars": dict(WORKER_ENV)},
    )


def fit(
    job: RayTrainJob,
    *,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
    parent_run_id: str | None = None,
    run_params: dict[str, Any] | None = None,
    run_tags: dict[str, str] | None = None,
    end_run_on_error: bool = True,
) -> TrainRunResult:
    """Run the job on the current Ray cluster (``ray.init`` first); returns when training ends.

    The job's MLflow run is opened here, before the workers start (found again when the job was run before:
    :func:`pipelines.tracking.open_run`), and ended here: ``FINISHED``, or ``FAILED`` with the error. A driver killed
    outright leaves it ``RUNNING`` until the job is rerun.

    Args:
        job: the job (``name`` and ``storage_path`` are its identity: a rerun resumes it).
        log: progress lines.
        callbacks: ``ray.train.UserCallback`` objects for the run (a sweep passes Tune's ``TuneReportCallback``).
        parent_run_id: nest the MLflow run under this one (a sweep's trial).
        run_params: MLflow params of a new run (default: the flattened job).
        run_tags: more tags of a new run.
        end_run_on_error: end the MLflow run ``FAILED`` (``KILLED`` on Ctrl-C/SIGTERM) when ``fit`` raises; a sweep's
            trial leaves that to the sweep's driver, which knows whether the scheduler stopped it.

    Raises:
        pipelines.ingest.IngestError: ``job.shards`` is not a finished ingest.
        ray.train.TrainingFailedError: a worker failed more than ``max_failures`` times (the cause is attached).
    """
    from pipelines import ingested, storage, tracking

    started = time.perf_counter()
    manifest = ingested.load_manifest(job.shards)
    job = prepare_tracking(job)
    dataset = _train_dataset(job)
    spe = steps_per_epoch(int(manifest["num_samples"]), job)
    job = _with_max_epochs(job, spe, log)
    run_path = storage.join(job.storage_path, job.name)
    log(
        f"[train] {job.name}: {job.num_workers} worker(s), {manifest['num_videos']} videos / "
        f"{manifest['num_samples']} samples in {job.shards}, {spe} steps/epoch, checkpoints -> {run_path}"
    )
    job = _checked_inputs(job)
    run_id = None
    if job.tracking.enabled:
        run_id = tracking.open_run(
            job.tracking.tracking_uri,
            job.tracking.experiment,
            job.name,
            key=run_path,
            params=run_params
            if run_params is not None
            else {"job": dataclasses.asdict(job), "world_size": job.num_workers},
            tags={"sgmg.model": job.train.model, "sgmg.shards": job.shards, **(run_tags or {})},
            parent_run_id=parent_run_id,
        )
    trainer = _torch_trainer(job, spe, run_id, dataset, callbacks)
    result = _fit_tracked(trainer, job, run_id, end_run_on_error)
    remove_unregistered_checkpoints(run_path, [c.path for c, _ in result.best_checkpoints or []], log=log)
    if run_id is not None:
        tracking.end_run(job.tracking.tracking_uri, run_id, "FINISHED")
    return TrainRunResult(
        metrics=dict(result.metrics or {}),
        checkpoint=_checkpoint_uri(job, result.checkpoint),
        run_path=run_path,
        mlflow_run_id=run_id,
        seconds=time.perf_counter() - started,
    )


def _train_dataset(job: RayTrainJob) -> Any:
    """The job's clip stream (a Ray Dataset over ``job.shards``): clips drawn with fresh randomness on every pass
    (``seed=None``), the files shuffled per pass."""
    from pipelines import stream

    cfg = job.train
    clip = stream.ClipConfig(
        num_frames=cfg.data.num_frames,
        recipe=job.recipe,
        seed=None,
        anchored=False,
        max_size=cfg.data.max_size,
        expressions_per_clip=cfg.data.expressions_per_clip,
    )
    return stream.clip_dataset(job.shards, clip, num_cpus=job.data_cpus, shuffle_files=True)


def _with_max_epochs(job: RayTrainJob, spe: int, log: Callable[[str], None]) -> RayTrainJob:
    """``job`` with ``train.max_steps`` set from ``max_epochs`` (``spe`` steps per epoch) when that is given."""
    if job.max_epochs is None:
        return job
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, max_steps=job.max_epochs * spe))
    log(f"[train] {job.name}: {job.max_epochs} epochs = {job.train.max_steps} steps")
    return job


def _checked_inputs(job: RayTrainJob) -> RayTrainJob:
    """Check on the driver what the workers would otherwise fail on later: the validation ingest is finished and
    ``train.init_from`` holds a model. Returns ``job`` with a local ``init_from`` made absolute (the workers' working
    directory is not the driver's).

    Raises:
        pipelines.ingest.IngestError: ``job.val_shards`` is not a finished ingest.
        FileNotFoundError: no ``model.safetensors`` in ``train.init_from``.
    """
    from pipelines import ingested, storage

    cfg = job.train
    if job.val_shards:
        ingested.load_manifest(job.val_shards)  # fail now rather than at the first checkpoint
    if cfg.init_from and not storage.is_file(storage.join(cfg.init_from, "model.safetensors")):
        raise FileNotFoundError(
            f"train.init_from: no model.safetensors in {cfg.init_from}; expected a checkpoint folder of this project "
            "(a step_NNNNNNN folder of a training run, or the output of `sgmg convert`)"
        )
    if cfg.init_from and not storage.is_s3(cfg.init_from):
        job = dataclasses.replace(job, train=dataclasses.replace(cfg, init_from=storage.resolve(cfg.init_from).path))
    return job


def _torch_trainer(job: RayTrainJob, spe: int, run_id: str | None, dataset: Any, callbacks: Sequence[Any]) -> Any:
    """The ``TorchTrainer`` of the job: ``num_workers`` workers running :func:`train_loop_per_worker` on ``dataset``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": dataclasses.asdict(job), "steps_per_epoch": spe, "mlflow_run_id": run_id},
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.num_workers,
            use_gpu=job.use_gpu,
            resources_per_worker={"CPU": job.cpus_per_worker} | ({"GPU": 1} if job.use_gpu else {}),
        ),
        run_config=_run_config(job, callbacks),
        datasets={"train": dataset},
    )


def _fit_tracked(trainer: Any, job: RayTrainJob, run_id: str | None, end_run_on_error: bool) -> Any:
    """``trainer.fit()``; when it raises (and ``end_run_on_error``), the MLflow run ``run_id`` is ended ``KILLED``
    (Ctrl-C, SIGTERM: a rerun resumes it) or ``FAILED`` with the error before the exception goes on."""
    from pipelines import tracking

    try:
        return trainer.fit()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: a rerun resumes it
        if run_id is not None and end_run_on_error:
            tracking.end_run(job.tracking.tracking_uri, run_id, "KILLED")
        raise
    except Exception as exc:
        if run_id is not None and end_run_on_error:
            tracking.end_run(job.tracking.tracking_uri, run_id, "FAILED", tags={tracking.ERROR_TAG: str(exc)[:5000]})
        raise


def _checkpoint_uri(job: RayTrainJob, checkpoint: Any) -> str | None:
    """The path of a Ray Train checkpoint, as an ``s3://`` URI when the job stores on S3 (Ray gives bucket/key)."""
    from pipelines import storage

    return storage.as_uri(job.storage_path, checkpoint.path) if checkpoint is not None else None


def remove_unregistered_checkpoints(
    run_path: str, registered: Sequence[str], *, log: Callable[[str], None] = print
) -> list[str]:
    """Delete the ``step_*`` folders of ``run_path`` that Ray Train does not hold (``registered``: its checkpoints'
    paths): one stored by a worker that died before the report barrier completed is never registered, so Ray never
    deletes it and ``keep_checkpoints`` would not hold.

    Returns:
        The names deleted.
    """
    from pipelines import storage

    kept = {posixpath.basename(str(p).rstrip("/")) for p in registered}
    try:
        names = storage.list_dir(run_path)
    except storage.StorageNotFoundError:
        return []
    stale = [n for n in names if n.startswith("step_") and n not in kept]
    for name in stale:
        storage.delete_tree(storage.join(run_path, name))
    if stale:
        log(f"[train] deleted checkpoints never registered by Ray Train (a worker died at the barrier): {stale}")
    return stale


def register_run(
    job: RayTrainJob,
    checkpoint: str,
    model_name: str,
    *,
    metrics: dict[str, Any],
    source: str,
    log: Callable[[str], None] = print,
) -> Any:
    """Register a finished run's checkpoint (local path or ``s3://`` URI) as a new version of ``model_name``: tagged
    with its ``val_jf``, the hash of ``job.val_shards``'s manifest, ``source`` and the job's config, logged into the
    run's MLflow run; the alias ``champion`` moves only when it beats the current champion on the same validation set
    (``pipelines.registry.register_candidate``).

    Returns:
        The ``pipelines.registry.Registration`` (version, promoted, reason).
    """
    from pipelines import ingested, registry, storage

    job = prepare_tracking(job)
    with tempfile.TemporaryDirectory(prefix="sgmg-register-") as tmp:
        for name in ("model.safetensors", "config.json", "trainer_state.json"):
            (Path(tmp) / name).write_bytes(storage.read_bytes(storage.join(str(checkpoint), name)))
        run_id = json.loads((Path(tmp) / "trainer_state.json").read_text()).get("mlflow_run_id")
        registration = registry.register_candidate(
            job.tracking.tracking_uri,
            tmp,
            model_name,
            val_jf=metrics.get("val_jf"),
            val_set=ingested.manifest_hash(job.val_shards) if job.val_shards else None,
            source=source,
            config=dataclasses.asdict(job),
            run_id=run_id,
            tags={"checkpoint": str(checkpoint)},
        )
    state = f"now models:/{model_name}@champion" if registration.promoted else "champion not moved"
    log(f"[register] {model_name} version {registration.version}: {state} ({registration.reason})")
    return registration


def run(args: argparse.Namespace) -> int:
    """``sgmg train`` without ``--local`` (the CLI entry; arguments from ``sgmg.train.commands``)."""
    try:
        job = load_job(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"sgmg train: {exc}", file=sys.stderr)
        return 2
    register = getattr(args, "register", None)
    if register is not None and (not register.strip() or not job.tracking.enabled):
        print(
            f"sgmg train: --register {register!r} needs a model name and MLflow tracking (tracking.enabled=true)",
            file=sys.stderr,
        )
        return 2
    if register and not job.val_shards:
        print(
            "sgmg train: note: without val_shards the registered version has no val_jf and never becomes the champion "
            "automatically (`sgmg registry promote` can)",
            file=sys.stderr,
        )
    import ray

    from pipelines import ingest
    from pipelines.cluster import ray_session

    try:
        with ray_session(log_to_driver=True) as local:
            problem = resource_problem(job, ray.cluster_resources()) if local else None
            if problem:  # a fixed local cluster would wait forever (an autoscaling one may still grow)
                print(f"sgmg train: {problem}", file=sys.stderr)
                return 2
            result = fit(job)
    except ingest.IngestError as exc:
        print(f"sgmg train: {exc}", file=sys.stderr)
        return 2
    loss = result.metrics.get("loss", math.nan)
    print(
        f"done: step {result.metrics.get('step')} loss {loss:.4f} in {result.seconds:.1f}s; "
        f"checkpoint {result.checkpoint}; MLflow run {result.mlflow_run_id}"
    )
    registration = None
    if register:
        if result.checkpoint is None:
            print("sgmg train: no checkpoint was reported; nothing registered", file=sys.stderr)
            return 1
        registration = register_run(job, result.checkpoint, register, metrics=result.metrics, source=f"run:{job.name}")
    if getattr(args, "summary", None):
        summary = {
            "name": job.name,
            "metrics": result.metrics,
            "checkpoint": result.checkpoint,
            "mlflow_run_id": result.mlflow_run_id,
            "tracking_uri": job.tracking.tracking_uri,
            "seconds": result.seconds,
            "registration": dataclasses.asdict(registration) if registration is not None else None,
        }
        write_summary(args.summary, summary)
    return 0


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    """Write a command's result as JSON (``--summary``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, path)
