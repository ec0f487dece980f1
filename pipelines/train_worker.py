"""The Ray Train worker side of ``sgmg train``: :func:`train_loop_per_worker` runs the training recipe
(:class:`sgmg.train.trainer.Trainer`) on the worker's split of the clip stream, with the hooks for checkpoints reported
to Ray Train, MLflow logging on rank 0 and validation split across the ranks (see :mod:`pipelines.train`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.train_job import RayTrainJob, job_from_dict


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (see the module docstring); ``config = {"job": asdict(job), ...}``.

    The loop is :class:`sgmg.train.trainer.Trainer`'s; this function feeds it the worker's dataset shard and supplies
    the hooks (:func:`_log_step`, :func:`_validate`, :func:`_report`): MLflow logging (rank 0), validation (every rank
    scores its share) and ``ray.train.report`` with a checkpoint (every rank; rank 0 attaches the checkpoint).

    The hooks are module-level functions bound to a :class:`_Worker`: Ray pickles this function by reference, so what
    it calls must be importable from this module.
    """
    import ray.train
    import ray.train.torch

    from sgmg.allocator import tune_malloc
    from sgmg.data.tokenizer import load_tokenizer
    from sgmg.train.trainer import TrainerHooks

    tune_malloc()  # this worker's process: freed tensors are reused, not faulted in again
    job = job_from_dict(config["job"])
    cfg = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    spe = int(config["steps_per_epoch"])
    model, trainer = _build_trainer(job, device, spe, rank, world, checkpoint)
    tracker = _rank_tracker(job, config, rank, world)
    if checkpoint is not None:  # the restarts show in the run: the step each attempt continued from
        tracker.log_metrics({"resumed_from_step": trainer.step}, trainer.step)
    if world > 1:
        trainer.train_model = ray.train.torch.prepare_model(model, move_to_device=False)
    tokenizer = load_tokenizer(cfg.data.tokenizer or model.config.text.tokenizer_source)
    worker = _Worker(job, rank, world, device, model, tokenizer, trainer, tracker)
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
        epoch_batches=spe * cfg.accum_steps,
    )
    hooks = TrainerHooks(
        log=functools.partial(_log_step, worker),
        validate=functools.partial(_validate, worker),
        checkpoint=functools.partial(_report, worker),
    )
    trainer.fit(batches, hooks)


def _build_trainer(
    job: RayTrainJob, device: Any, steps_per_epoch: int, rank: int, world: int, checkpoint: Any
) -> tuple[Any, Any]:
    """This rank's model and :class:`sgmg.train.trainer.Trainer`: the same initial weights on every rank (seeded;
    ``train.init_from`` when starting), or the state of ``checkpoint`` when Ray Train restarts the worker group.

    Returns:
        ``(model, trainer)``.
    """
    import torch

    from sgmg.train.trainer import Trainer, build_training_model

    cfg = job.train
    torch.manual_seed(cfg.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    # when resuming, the weights come from the checkpoint: do not load init_from
    with fetched_checkpoint(None if checkpoint else cfg.init_from) as init_from:
        model = build_training_model(dataclasses.replace(cfg, init_from=init_from)).to(device)
    trainer = Trainer(cfg, model, device=device, steps_per_epoch=steps_per_epoch, world_size=world)
    if checkpoint is not None:
        # a folder per rank: with as_directory() the ranks of a node share one download folder, and a rank could read
        # optimizer.pt while another was still writing it (seen here as a corrupt-zip error on resume)
        with tempfile.TemporaryDirectory(prefix=f"sgmg-resume-rank{rank}-") as folder:
            checkpoint.to_directory(folder)
            trainer.resume(Path(folder))
    return model, trainer


def _rank_tracker(job: RayTrainJob, config: dict[str, Any], rank: int, world: int) -> Any:
    """The MLflow tracker of this rank: the run the driver opened (the same on every attempt) on rank 0 when tracking
    is on; one that logs nothing otherwise."""
    from pipelines import tracking

    return tracking.RunTracker(
        job.tracking.tracking_uri if rank == 0 and job.tracking.enabled else None,
        job.tracking.experiment,
        job.name,
        run_id=config.get("mlflow_run_id"),  # opened by the driver: the same run on every attempt
        params={"job": config["job"], "world_size": world},
        tags={"sgmg.model": job.train.model, "sgmg.shards": job.shards},
    )


@dataclasses.dataclass(frozen=True)
class _Worker:
    """What the hooks of one rank work with."""

    job: RayTrainJob
    rank: int
    world: int
    device: Any
    model: Any
    tokenizer: Any
    trainer: Any  # sgmg.train.trainer.Trainer
    tracker: Any  # pipelines.tracking.RunTracker


def _metrics_row(w: _Worker, info: Any) -> dict[str, float]:
    """The metrics of a step (``info``: a :class:`sgmg.train.trainer.StepInfo`), as logged and reported."""
    metrics = info.metrics
    row = {"step": info.step, "epoch": info.epoch, "loss": metrics.loss, "lr": metrics.lr}
    row |= {f"loss/{k}": v for k, v in metrics.terms.items()}
    if metrics.grad_norm is not None:
        row["grad_norm"] = metrics.grad_norm
    if info.window is not None:
        row["clips_per_s"] = info.window.clips * w.world / info.window.seconds  # all workers: equal batches each
        row["data_wait_share"] = info.window.data_share  # this rank's: waiting for the clip stream
        row["nonfinite_total"] = w.trainer.guard.total
    return row


def _log_step(w: _Worker, info: Any) -> None:
    """The ``log`` hook: the step's metrics to MLflow (rank 0's tracker) and a progress line on rank 0."""
    row = _metrics_row(w, info)
    w.tracker.log_metrics(row, info.step)
    if w.rank == 0:
        print(
            f"[train] step {info.step}/{w.job.train.max_steps} epoch {info.epoch} loss {info.metrics.loss:.4f} "
            f"lr {info.metrics.lr:.2e} {row['clips_per_s']:.2f} clips/s data {row['data_wait_share']:.0%}",
            flush=True,
        )


def _all_reduce(w: _Worker, sums: Any) -> Any:
    """The sum over the ranks of every rank's ``sums`` (a tensor; every rank must call this)."""
    import torch.distributed as dist

    sums = sums.to(w.device)
    if w.world > 1:
        dist.all_reduce(sums)  # a sum over the ranks' shares
    return sums.cpu()


def _validate(w: _Worker, info: Any) -> dict[str, float]:
    """The ``validate`` hook: every rank scores its share of the held-out ingest; the sums are all-reduced."""
    job = w.job
    if not job.val_shards:
        return {}
    val = validation_metrics(
        job,
        w.model,
        w.tokenizer,
        w.device,
        rank=w.rank,
        world=w.world,
        all_reduce=functools.partial(_all_reduce, w),
    )
    w.tracker.log_metrics(val, info.step)
    if w.rank == 0:
        print(f"[train] step {info.step} validation J&F {val['val_jf']:.4f}", flush=True)
    return val


def _report(w: _Worker, info: Any, val: dict[str, float]) -> None:
    """The ``checkpoint`` hook: every rank reports (a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    metrics = _metrics_row(w, info) | val
    if w.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="sgmg-ckpt-") as tmp:
        path = w.trainer.save(tmp, keep=1, extra_state={"mlflow_run_id": w.tracker.run_id, "world_size": w.world})
        if info.final:
            w.tracker.log_artifacts(path, "checkpoint")
        # named by step: a checkpoint stored by an attempt that died before the barrier is overwritten when the
        # next attempt reaches its step (Ray's default name, checkpoint_<time>, would leave it behind for ever)
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)), checkpoint_dir_name=path.name
        )


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
    time), ``job.val_batch_size`` clips a forward pass; the loss sum stays 0 without ``job.val_loss``. Sums, so the
    ranks' shares add up to the whole set (:func:`validation_from_sums`).

    Read straight from the shards in this process: no second Ray Data execution competing for CPU slots with the
    training stream. The loss is computed without the criterion's all-reduce of ``num_boxes`` (the ranks' batches
    differ in number).
    """
    import torch

    from pipelines import ingested, shards, stream
    from sgmg.data.collate import collate_clips
    from sgmg.loss.criterion import build_criterion
    from sgmg.train.step import validation_step

    cfg = job.train
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]
    pending: list[Any] = []
    local_criterion = build_criterion(cfg.loss, reduce_num_boxes=lambda n: n) if job.val_loss else None
    batch_size = job.val_batch_size or cfg.data.batch_size
    val_cfg = stream.ClipConfig(
        num_frames=cfg.data.num_frames, recipe="none", seed=0, anchored=False, max_size=cfg.data.max_size
    )

    def flush() -> None:
        batch = collate_clips(pending, tokenizer, pad_multiple=32).to(device)
        m = validation_step(model, batch, local_criterion)
        sums[0] += sum(j for j, _ in m.per_video)
        sums[1] += sum(f for _, f in m.per_video)
        sums[2] += len(m.per_video)
        sums[3] += (m.loss or 0.0) * len(pending)
        sums[4] += len(pending)
        pending.clear()

    manifest = ingested.load_manifest(job.val_shards)
    share = max(1, min(shards.ROW_GROUP_ROWS, math.ceil(int(manifest["num_videos"]) / world)))
    ranges = ingested.row_ranges(job.val_shards, manifest, rows_per_range=share)[rank::world]
    for row in ingested.iter_rows(ranges, stream.CLIP_COLUMNS):
        for clip in stream.clips_of_row(row, val_cfg):
            pending.append(clip)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return torch.tensor(sums, dtype=torch.float64)


def validation_from_sums(sums: Any, where: str, *, with_loss: bool = True) -> dict[str, float]:
    """Mean J, F, J&F and (``with_loss``) loss from the sums of every rank (:func:`validation_sums`, all-reduced).

    Raises:
        ValueError: the validation ingest ``where`` gave no clip with ground truth.
    """
    sum_j, sum_f, pairs, sum_loss, clips = (float(x) for x in sums)
    if not pairs:
        raise ValueError(f"the validation ingest {where} gave no clip with ground truth")
    j, f = sum_j / pairs, sum_f / pairs
    out = {"val_j": j, "val_f": f, "val_jf": (j + f) / 2}
    return {**out, "val_loss": sum_loss / clips} if with_loss else out


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
    return validation_from_sums(sums, str(job.val_shards), with_loss=job.val_loss)
