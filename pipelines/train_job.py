"""A Ray Train job's configuration: :class:`RayTrainJob` (the ``sgmg train`` YAML: the local trainer's ``train:``
section plus data, workers, storage and tracking), loaded and checked before Ray starts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
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
        val_batch_size: clips per forward pass of the validation (None: ``train.data.batch_size``); the metrics do
            not depend on it (measured on the demo's model, one CPU thread: 4 clips a pass take 3.5 s where 1 takes
            4.9 for the same 81 clips).
        val_loss: also compute ``val_loss`` (a second, train-mode forward of every clip: about half of the validation
            time); False: ``val_j``, ``val_f`` and ``val_jf`` only.
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
    val_batch_size: int | None = None
    val_loss: bool = True
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
        require(
            "val_batch_size",
            self.val_batch_size,
            self.val_batch_size is None or self.val_batch_size >= 1,
            "an integer >= 1, or null (the training batch size)",
        )


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
