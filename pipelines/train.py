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
import contextlib
import dataclasses
import json
import math
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgmg.config_io import require
from sgmg.data.sampler import RECIPES
from sgmg.train.config import TrainConfig


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking of the run.

    Attributes:
        enabled: log to MLflow (rank 0 only).
        tracking_uri: MLflow tracking URI; None: ``sqlite:///<cwd>/mlflow.db`` (one machine; on a cluster use a
            tracking server every node reaches, e.g. ``http://mlflow:5000``).
        experiment: experiment name (created when missing).
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "sgmg"

    def __post_init__(self) -> None:
        require("experiment", self.experiment, bool(self.experiment.strip()), "a non-empty experiment name")
        require("tracking_uri", self.tracking_uri, self.tracking_uri != "", "an MLflow tracking URI, or null")


@dataclass(frozen=True)
class RayTrainJob:
    """A Ray Train job.

    Attributes:
        shards: the output folder/URI of ``sgmg ingest`` to train on.
        train: the training run (``TrainConfig``: model, loss, optim, steps, ...; ``data.batch_size`` is per worker;
            ``output_dir`` and ``device`` are not used: checkpoints go to ``storage_path/name``, devices come from Ray).
        recipe: augmentation (:data:`sgmg.data.sampler.RECIPES`): ``video`` (Ref-YouTube-VOS/MeViS), ``image``
            (RefCOCO 1-frame clips), ``resize`` or ``none``.
        name: the Ray Train run name (rerunning a name resumes it).
        storage_path: where Ray Train keeps checkpoints: a local folder or ``s3://bucket/prefix``.
        num_workers: training workers (one per GPU with ``use_gpu``).
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved per training worker.
        data_cpus: CPUs per decode/augment task of the clip stream.
        max_failures: worker-group restarts from the latest checkpoint before the run fails (-1: no limit).
        max_epochs: train for this many epochs: ``train.max_steps`` becomes ``max_epochs`` x the steps per epoch
            (from the ingest's sample count, ``train.data.batch_size``, ``num_workers`` and ``train.accum_steps``),
            as the paper's recipes are given in epochs; None: ``train.max_steps`` as written.
        shuffle_buffer: clips in each worker's local shuffle buffer (0: none).
        val_shards: an ingest with ground truth to validate on at every checkpoint (every rank its share, summed
            with an all-reduce; one unaugmented clip per (video, expression), the same clips every time): ``val_j``,
            ``val_f``, ``val_jf`` (the selection metric of sweeps: unlike the loss it does not depend on the loss
            weights) and ``val_loss``.
        tracking: MLflow settings.
    """

    shards: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str = "video"
    name: str = "sgmg-train"
    storage_path: str = "runs/ray"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    data_cpus: float = 1.0
    max_failures: int = 0
    max_epochs: int | None = None
    shuffle_buffer: int = 64
    val_shards: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        require(
            "shards", self.shards, bool(self.shards), "the --dest of a finished `sgmg ingest` (folder or s3:// URI)"
        )
        require("recipe", self.recipe, self.recipe in RECIPES, f"one of {list(RECIPES)}")
        require("name", self.name, bool(self.name.strip()), "a non-empty run name")
        require("num_workers", self.num_workers, self.num_workers >= 1, "an integer >= 1")
        require("cpus_per_worker", self.cpus_per_worker, self.cpus_per_worker > 0, "a number of CPUs > 0")
        require("data_cpus", self.data_cpus, self.data_cpus > 0, "a number of CPUs > 0")
        require("max_failures", self.max_failures, self.max_failures >= -1, "an integer >= 0, or -1 (no limit)")
        require(
            "max_epochs", self.max_epochs, self.max_epochs is None or self.max_epochs >= 1, "an integer >= 1, or null"
        )
        require("shuffle_buffer", self.shuffle_buffer, self.shuffle_buffer >= 0, "an integer >= 0 (0: no shuffle)")
        require("val_shards", self.val_shards, self.val_shards != "", "an ingest folder/URI, or null")


def load_job(path: str | Path | None, overrides: Sequence[str] = ()) -> RayTrainJob:
    """Read a job YAML (optional) and dotted overrides (``train.optim.lr=2e-5``) into a :class:`RayTrainJob`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file and dotted key of a bad value.
    """
    from sgmg.config_io import load_config

    return load_config(RayTrainJob, path, overrides, "training job config")


def job_from_dict(data: dict[str, Any]) -> RayTrainJob:
    """Inverse of ``dataclasses.asdict(job)`` (what the workers receive)."""
    from sgmg.config_io import from_dict

    return from_dict(RayTrainJob, data)


def steps_per_epoch(num_samples: int, job: RayTrainJob) -> int:
    """Optimizer steps per epoch: one clip per (video, expression) per epoch, split over the workers."""
    per_step = job.train.data.batch_size * job.num_workers * job.train.accum_steps
    return max(1, num_samples // per_step)


# ------------------------------------------------------------------------------------------------ worker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (see the module docstring); ``config = {"job": asdict(job), ...}``.

    The loop is :class:`sgmg.train.trainer.Trainer`'s; this function feeds it the worker's dataset shard and supplies
    the hooks: MLflow logging (rank 0), validation (rank 0) and ``ray.train.report`` with a checkpoint (every rank).
    """
    import ray.train
    import ray.train.torch
    import torch

    from pipelines import tracking
    from sgmg.data.tokenizer import load_tokenizer
    from sgmg.train.trainer import StepInfo, Trainer, TrainerHooks, build_training_model

    job = job_from_dict(config["job"])
    cfg = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    # when resuming, the weights come from the checkpoint: do not load init_from
    with fetched_checkpoint(None if checkpoint else cfg.init_from) as init_from:
        model = build_training_model(dataclasses.replace(cfg, init_from=init_from)).to(device)
    trainer = Trainer(cfg, model, device=device, steps_per_epoch=int(config["steps_per_epoch"]), world_size=world)
    if checkpoint is not None:
        # a folder per rank: with as_directory() the ranks of a node share one download folder, and a rank could read
        # optimizer.pt while another was still writing it (seen here as a corrupt-zip error on resume)
        with tempfile.TemporaryDirectory(prefix=f"sgmg-resume-rank{rank}-") as folder:
            checkpoint.to_directory(folder)
            trainer.resume(Path(folder))
    tracker = tracking.RunTracker(
        job.tracking.tracking_uri if rank == 0 and job.tracking.enabled else None,
        job.tracking.experiment,
        job.name,
        run_id=config.get("mlflow_run_id"),  # opened by the driver: the same run on every attempt
        params={"job": config["job"], "world_size": world},
        tags={"sgmg.model": cfg.model, "sgmg.shards": job.shards},
    )
    if checkpoint is not None:  # the restarts show in the run: the step each attempt continued from
        tracker.log_metrics({"resumed_from_step": trainer.step}, trainer.step)
    if world > 1:
        trainer.train_model = ray.train.torch.prepare_model(model, move_to_device=False)
    tokenizer = load_tokenizer(cfg.data.tokenizer or model.config.text.tokenizer_source)

    def row_of(info: StepInfo) -> dict[str, float]:
        metrics = info.metrics
        row = {"step": info.step, "epoch": info.epoch, "loss": metrics.loss, "lr": metrics.lr}
        row |= {f"loss/{k}": v for k, v in metrics.terms.items()}
        if metrics.grad_norm is not None:
            row["grad_norm"] = metrics.grad_norm
        if info.window is not None:
            row["clips_per_s"] = info.window.clips * world / info.window.seconds  # all workers: equal batches each
            row["nonfinite_total"] = trainer.guard.total
        return row

    def log(info: StepInfo) -> None:
        row = row_of(info)
        tracker.log_metrics(row, info.step)
        if rank == 0:
            print(
                f"[train] step {info.step}/{cfg.max_steps} epoch {info.epoch} loss {info.metrics.loss:.4f} "
                f"lr {info.metrics.lr:.2e} {row['clips_per_s']:.2f} clips/s",
                flush=True,
            )

    def all_reduce(sums: Any) -> Any:
        import torch.distributed as dist

        sums = sums.to(device)
        if world > 1:
            dist.all_reduce(sums)  # a sum over the ranks' shares
        return sums.cpu()

    def validate(info: StepInfo) -> dict[str, float]:
        """Every rank scores its share of the held-out ingest; the sums are all-reduced."""
        if not job.val_shards:
            return {}
        val = validation_metrics(job, model, tokenizer, device, rank=rank, world=world, all_reduce=all_reduce)
        tracker.log_metrics(val, info.step)
        if rank == 0:
            print(f"[train] step {info.step} validation J&F {val['val_jf']:.4f}", flush=True)
        return val

    def report(info: StepInfo, val: dict[str, float]) -> None:
        """Every rank reports (a barrier); rank 0 attaches the checkpoint."""
        metrics = row_of(info) | val
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="sgmg-ckpt-") as tmp:
            path = trainer.save(tmp, keep=1, extra_state={"mlflow_run_id": tracker.run_id, "world_size": world})
            if info.final:
                tracker.log_artifacts(path, "checkpoint")
            # named by step: a checkpoint stored by an attempt that died before the barrier is overwritten when the
            # next attempt reaches its step (Ray's default name, checkpoint_<time>, would leave it behind for ever)
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)), checkpoint_dir_name=path.name
            )

    if rank == 0:
        print(
            f"[train] {cfg.model} on {world} x {device} ({trainer.amp_dtype or 'fp32'}), "
            f"steps {trainer.step}->{cfg.max_steps}"
            + (f", resumed in epoch {trainer.epoch} after {trainer.epoch_batches} batches" if checkpoint else ""),
            flush=True,
        )
    batches = shard_epochs(
        job,
        tokenizer,
        rank,
        start_epoch=trainer.epoch,
        done_batches=trainer.epoch_batches,
        epoch_batches=int(config["steps_per_epoch"]) * cfg.accum_steps,
    )
    trainer.fit(batches, TrainerHooks(log=log, validate=validate, checkpoint=report))


@contextlib.contextmanager
def fetched_checkpoint(uri: str | None) -> Iterator[str | None]:
    """A local folder with the model files of the checkpoint at ``uri`` (a folder, ``file://`` or ``s3://``; copied
    into a temporary folder unless it is local already), for ``train.init_from``; None stays None."""
    from pipelines import storage

    if uri is None or not storage.resolve(uri).is_s3:
        yield storage.resolve(uri).path if uri else None
        return
    with tempfile.TemporaryDirectory(prefix="sgmg-init-") as tmp:
        for name in ("model.safetensors", "config.json"):
            (Path(tmp) / name).write_bytes(storage.read_bytes(storage.join(uri, name)))
        yield tmp


def shard_epochs(
    job: RayTrainJob, tokenizer: Any, rank: int, *, start_epoch: int, done_batches: int, epoch_batches: int
) -> Iterator[tuple[int, Any]]:
    """``(epoch, ClipBatch)`` pairs of this worker's split of the clip stream, epoch after epoch.

    A resumed run (``done_batches`` of ``start_epoch`` already trained on) first finishes that epoch: its pass is cut
    to the ``epoch_batches - done_batches`` batches it had left (every rank cuts at the same count, so the split's
    next pass starts together), and the epoch counter goes on as in a run that was never interrupted.

    Raises:
        ValueError: if an epoch gives this worker no full batch.
    """
    import ray.train

    from pipelines import stream

    shard = ray.train.get_dataset_shard("train")
    epoch = start_epoch
    left = epoch_batches - done_batches if done_batches else None  # None: a whole pass
    if left is not None and left <= 0:
        epoch, left = epoch + 1, None
    while True:
        produced = 0
        passing = stream.iter_clip_batches(
            shard,
            batch_size=job.train.data.batch_size,
            tokenizer=tokenizer,
            prefetch_batches=2,
            drop_last=True,  # equal step counts on every worker (the split is equal too)
            local_shuffle_buffer_size=job.shuffle_buffer or None,
        )
        with contextlib.closing(passing):  # a cut pass stops its prefetching before the next one starts
            for batch in passing:
                produced += 1
                yield epoch, batch
                if left is not None and produced >= left:
                    break
        if not produced:
            raise ValueError(
                f"an epoch of {job.shards} gave worker {rank} no full batch of {job.train.data.batch_size} clips; "
                "use a smaller train.data.batch_size or fewer workers"
            )
        epoch, left = epoch + 1, None


def validation_sums(job: RayTrainJob, model: Any, tokenizer: Any, device: Any, *, rank: int = 0, world: int = 1) -> Any:
    """This rank's share of the validation: ``float64 [sum J, sum F, (video, expression) pairs, sum of clip losses,
    clips]`` over the rows ``rank::world`` of ``job.val_shards`` (one unaugmented clip per pair, the same clips every
    time). Sums, so the ranks' shares add up to the whole set (:func:`validation_from_sums`).

    Read straight from the shards in this process: no second Ray Data execution competing for CPU slots with the
    training stream. The loss is computed without the criterion's all-reduce of ``num_boxes`` (the ranks' batches
    differ in number).
    """
    import torch

    from pipelines import ingest, shards, stream
    from sgmg.data.collate import collate_clips
    from sgmg.loss.criterion import build_criterion
    from sgmg.train.step import validation_step

    cfg = job.train
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]
    pending: list[Any] = []
    local_criterion = build_criterion(cfg.loss, reduce_num_boxes=lambda n: n)
    val_cfg = stream.ClipConfig(
        num_frames=cfg.data.num_frames, recipe="none", seed=0, anchored=False, max_size=cfg.data.max_size
    )

    def flush() -> None:
        batch = collate_clips(pending, tokenizer, pad_multiple=32).to(device)
        m = validation_step(model, batch, local_criterion)
        sums[0] += sum(j for j, _ in m.per_video)
        sums[1] += sum(f for _, f in m.per_video)
        sums[2] += len(m.per_video)
        sums[3] += m.loss * len(pending)
        sums[4] += len(pending)
        pending.clear()

    manifest = ingest.load_manifest(job.val_shards)
    share = max(1, min(shards.ROW_GROUP_ROWS, math.ceil(int(manifest["num_videos"]) / world)))
    ranges = ingest.row_ranges(job.val_shards, manifest, rows_per_range=share)[rank::world]
    for row in ingest.iter_rows(ranges, stream.CLIP_COLUMNS):
        for clip in stream.clips_of_row(row, val_cfg):
            pending.append(clip)
            if len(pending) == cfg.data.batch_size:
                flush()
    if pending:
        flush()
    return torch.tensor(sums, dtype=torch.float64)


def validation_from_sums(sums: Any, where: str) -> dict[str, float]:
    """Mean J, F, J&F and loss from the sums of every rank (:func:`validation_sums`, all-reduced).

    Raises:
        ValueError: the validation ingest ``where`` gave no clip with ground truth.
    """
    sum_j, sum_f, pairs, sum_loss, clips = (float(x) for x in sums)
    if not pairs:
        raise ValueError(f"the validation ingest {where} gave no clip with ground truth")
    j, f = sum_j / pairs, sum_f / pairs
    return {"val_j": j, "val_f": f, "val_jf": (j + f) / 2, "val_loss": sum_loss / clips}


def validation_metrics(
    job: RayTrainJob,
    model: Any,
    tokenizer: Any,
    device: Any,
    *,
    rank: int = 0,
    world: int = 1,
    all_reduce: Callable[[Any], Any] | None = None,
) -> dict[str, float]:
    """Validation J, F, J&F and loss over ``job.val_shards``, computed by every rank on its share and combined with
    ``all_reduce`` (a sum over the ranks; every rank must call it, and gets the same result), so no rank's cost grows
    with the whole held-out set. ``world=1`` without ``all_reduce``: one process does it all.

    Raises:
        ValueError: the validation ingest gave no clip with ground truth.
    """
    sums = validation_sums(job, model, tokenizer, device, rank=rank, world=world)
    if all_reduce is not None:
        sums = all_reduce(sums)
    return validation_from_sums(sums, str(job.val_shards))


def prepare_tracking(job: RayTrainJob) -> RayTrainJob:
    """On the driver: resolve the default tracking URI (``MLFLOW_TRACKING_URI``, else
    ``sqlite:///<driver cwd>/mlflow.db``) into the job and create the tracking tables and experiment once. The
    workers must get the resolved URI: their working directory is Ray's session folder, not the user's.
    """
    if not job.tracking.enabled:
        return job
    from pipelines import tracking

    uri = (
        job.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(os.getcwd())
    )
    tracking.prepare(uri, job.tracking.experiment)
    return dataclasses.replace(job, tracking=dataclasses.replace(job.tracking, tracking_uri=uri))


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


def _run_config(job: RayTrainJob, callbacks: Sequence[Any] = ()) -> Any:
    import ray.train

    from pipelines import storage

    loc = storage.resolve(job.storage_path)
    return ray.train.RunConfig(
        name=job.name,
        callbacks=list(callbacks) or None,
        storage_path=loc.path if loc.is_s3 else loc.uri,
        storage_filesystem=loc.fs if loc.is_s3 else None,
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
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines import ingest, storage, stream, tracking

    started = time.perf_counter()
    manifest = ingest.load_manifest(job.shards)
    job = prepare_tracking(job)
    cfg = job.train
    clip = stream.ClipConfig(
        num_frames=cfg.data.num_frames, recipe=job.recipe, seed=None, anchored=False, max_size=cfg.data.max_size
    )
    dataset = stream.clip_dataset(job.shards, clip, num_cpus=job.data_cpus, shuffle_files=True)
    spe = steps_per_epoch(int(manifest["num_samples"]), job)
    if job.max_epochs is not None:
        job = dataclasses.replace(job, train=dataclasses.replace(cfg, max_steps=job.max_epochs * spe))
        cfg = job.train
        log(f"[train] {job.name}: {job.max_epochs} epochs = {cfg.max_steps} steps")
    run_path = storage.join(job.storage_path, job.name)
    log(
        f"[train] {job.name}: {job.num_workers} worker(s), {manifest['num_videos']} videos / "
        f"{manifest['num_samples']} samples in {job.shards}, {spe} steps/epoch, checkpoints -> {run_path}"
    )
    if job.val_shards:
        ingest.load_manifest(job.val_shards)  # fail now rather than at the first checkpoint
    if cfg.init_from and not storage.is_file(storage.join(cfg.init_from, "model.safetensors")):
        raise FileNotFoundError(
            f"train.init_from: no model.safetensors in {cfg.init_from}; expected a checkpoint folder of this project "
            "(a step_NNNNNNN folder of a training run, or the output of `sgmg convert`)"
        )
    if cfg.init_from and not storage.is_s3(cfg.init_from):  # the workers' working directory is not the driver's
        job = dataclasses.replace(job, train=dataclasses.replace(cfg, init_from=storage.resolve(cfg.init_from).path))
        cfg = job.train
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
            tags={"sgmg.model": cfg.model, "sgmg.shards": job.shards, **(run_tags or {})},
            parent_run_id=parent_run_id,
        )
    trainer = TorchTrainer(
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
    try:
        result = trainer.fit()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM: a rerun resumes it
        if run_id is not None and end_run_on_error:
            tracking.end_run(job.tracking.tracking_uri, run_id, "KILLED")
        raise
    except Exception as exc:
        if run_id is not None and end_run_on_error:
            tracking.end_run(job.tracking.tracking_uri, run_id, "FAILED", tags={tracking.ERROR_TAG: str(exc)[:5000]})
        raise
    remove_unregistered_checkpoints(run_path, [c.path for c, _ in result.best_checkpoints or []], log=log)
    if run_id is not None:
        tracking.end_run(job.tracking.tracking_uri, run_id, "FINISHED")
    checkpoint = result.checkpoint
    path = checkpoint.path if checkpoint is not None else None
    if path is not None and storage.resolve(job.storage_path).is_s3 and not path.startswith("s3://"):
        path = "s3://" + path
    return TrainRunResult(
        metrics=dict(result.metrics or {}),
        checkpoint=path,
        run_path=run_path,
        mlflow_run_id=run_id,
        seconds=time.perf_counter() - started,
    )


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
    (``pipelines.tracking.register_candidate``).

    Returns:
        The ``pipelines.tracking.Registration`` (version, promoted, reason).
    """
    from pipelines import ingest, storage, tracking

    job = prepare_tracking(job)
    with tempfile.TemporaryDirectory(prefix="sgmg-register-") as tmp:
        for name in ("model.safetensors", "config.json", "trainer_state.json"):
            (Path(tmp) / name).write_bytes(storage.read_bytes(storage.join(str(checkpoint), name)))
        run_id = json.loads((Path(tmp) / "trainer_state.json").read_text()).get("mlflow_run_id")
        registration = tracking.register_candidate(
            job.tracking.tracking_uri,
            tmp,
            model_name,
            val_jf=metrics.get("val_jf"),
            val_set=ingest.manifest_hash(job.val_shards) if job.val_shards else None,
            source=source,
            config=dataclasses.asdict(job),
            run_id=run_id,
            tags={"checkpoint": str(checkpoint)},
        )
    state = f"now models:/{model_name}@champion" if registration.promoted else "champion not moved"
    log(f"[register] {model_name} version {registration.version}: {state} ({registration.reason})")
    return registration


def resource_problem(job: RayTrainJob, resources: dict[str, float]) -> str | None:
    """Why ``job`` cannot run on a cluster with ``resources`` (``ray.cluster_resources()``), or None.

    The workers hold ``num_workers x cpus_per_worker`` CPUs for the whole run and the clip stream needs at least one
    decode task of ``data_cpus`` beside them, or training waits forever for data.
    """
    need = job.num_workers * job.cpus_per_worker + job.data_cpus
    have = float(resources.get("CPU", 0))
    if need > have + 1e-9:
        return (
            f"the job needs {need:g} CPUs ({job.num_workers} workers x {job.cpus_per_worker:g} + {job.data_cpus:g} for "
            f"the clip stream) but the cluster has {have:g}; lower cpus_per_worker / data_cpus / num_workers"
        )
    gpus = float(resources.get("GPU", 0))
    if job.use_gpu and gpus < job.num_workers:
        return f"use_gpu with {job.num_workers} workers needs {job.num_workers} GPUs; the cluster has {gpus:g}"
    return None


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
