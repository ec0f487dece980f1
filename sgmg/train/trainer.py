"""The training recipe: one loop for ``sgmg train --local`` and the Ray Train workers (in the manner of torchtune's
recipes: one readable loop, small hooks for what differs).

:class:`Trainer` owns what every run does the same way: the criterion, optimizer, LR schedule, GradScaler and
non-finite guard of a :class:`~sgmg.train.config.TrainConfig`; the optimizer-step count, gradient accumulation
(:func:`~sgmg.train.step.train_step` steps every ``accum_steps`` micro-batches); the schedule stepped once per
optimizer step (skipped non-finite ones included, so milestones stay aligned with the step count); the logging cadence
(``log_every``, and the last step) with the throughput since the previous log; the validation and checkpoint cadence
(``checkpoint_every``, and the last step); checkpoint state (:mod:`sgmg.train.checkpoint`).

What differs between callers is passed in: where batches come from (an iterable of ``(epoch, ClipBatch)``), and
:class:`TrainerHooks` for who logs, what is validated and how a checkpoint is stored and reported.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from sgmg.data.schema import ClipBatch
from sgmg.loss.criterion import build_criterion
from sgmg.train.checkpoint import load_training_checkpoint, save_training_checkpoint
from sgmg.train.config import TrainConfig, flatten
from sgmg.train.optim import build_optimizer, reinit_score_heads
from sgmg.train.precision import amp_settings
from sgmg.train.schedule import build_scheduler
from sgmg.train.step import NonFiniteGuard, StepMetrics, train_step

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


def build_training_model(cfg: TrainConfig) -> nn.Module:
    """The model of a run: the named variant, optionally initialised from ``init_from`` (score heads re-initialised
    when ``reinit_score_heads``), in train mode.

    Raises:
        ValueError / FileNotFoundError / CheckpointMismatchError: from the zoo or checkpoint loader.
    """
    from sgmg.checkpoint.io import load_checkpoint, load_strict
    from sgmg.zoo import build_model

    model = build_model(cfg.model, **flatten(cfg.model_overrides))
    if cfg.init_from:
        pretrained = load_checkpoint(cfg.init_from)
        load_strict(model, pretrained.state_dict(), str(cfg.init_from))
        if cfg.reinit_score_heads:
            names = reinit_score_heads(model)
            logger.info("re-initialised %d score-head tensors after loading %s", len(names), cfg.init_from)
    return model.train()


@dataclass(frozen=True)
class Throughput:
    """What happened since the previous log step.

    Attributes:
        seconds: wall time (> 0).
        steps: optimizer steps.
        clips: clips trained on by this process.
        data_seconds: of ``seconds``, the time spent waiting for batches (the input pipeline; a large share means
            training is input-bound: more decode CPUs or prefetch).
    """

    seconds: float
    steps: int
    clips: int
    data_seconds: float = 0.0

    @property
    def data_share(self) -> float:
        """``data_seconds / seconds``."""
        return self.data_seconds / self.seconds


@dataclass(frozen=True)
class StepInfo:
    """One optimizer step, as the hooks see it.

    Attributes:
        step: optimizer steps done (this one included).
        epoch: the epoch of the step's last micro-batch.
        metrics: :class:`StepMetrics` of that micro-batch.
        window: throughput since the previous log step, on log steps only (None otherwise).
        final: the run ends with this step.
    """

    step: int
    epoch: int
    metrics: StepMetrics
    window: Throughput | None = None
    final: bool = False


def _no_validation(info: StepInfo) -> dict[str, float]:
    return {}


@dataclass(frozen=True)
class TrainerHooks:
    """What differs between the callers of :meth:`Trainer.fit`.

    Attributes:
        log: called on log steps (every ``log_every`` optimizer steps and the last one); ``info.window`` is set.
        validate: called on checkpoint steps, before ``checkpoint``; returns validation metrics (``{}``: none).
        checkpoint: called on checkpoint steps (every ``checkpoint_every`` optimizer steps and the last one) with the
            validation metrics; stores and reports a checkpoint (:meth:`Trainer.save`).
    """

    log: Callable[[StepInfo], None] = lambda info: None
    validate: Callable[[StepInfo], dict[str, float]] = _no_validation
    checkpoint: Callable[[StepInfo, dict[str, float]], None] = lambda info, val: None


class Trainer:
    """The optimization state of a run and the loop that advances it.

    Args:
        cfg: the run.
        model: the model, on ``device``, in train mode (checkpoints are written from it).
        device: where batches go.
        steps_per_epoch: optimizer steps per epoch (the schedule's milestones are in epochs).
        world_size: data-parallel workers (LR scaling of the optimizer).

    Attributes:
        train_model: what the step runs: ``model`` or a DDP wrapper of it (set it after :meth:`resume`, which loads
            into ``model``).
        amp_dtype: the autocast dtype (None: fp32).
        step / epoch: optimizer steps done and the current epoch (restored by :meth:`resume`).
        epoch_batches: micro-batches of ``epoch`` trained on so far: the data position a resumed run continues from
            (saved in checkpoints; a source of batches skips or shortens the rest of that epoch accordingly).

    Raises:
        ValueError: for a precision the device cannot do (``fp16`` off CUDA).
    """

    def __init__(
        self, cfg: TrainConfig, model: nn.Module, *, device: torch.device, steps_per_epoch: int, world_size: int = 1
    ) -> None:
        self.cfg, self.model, self.device = cfg, model, device
        self.train_model: nn.Module = model
        self.amp_dtype, use_scaler = amp_settings(cfg.precision, device)
        self.criterion = build_criterion(cfg.loss)
        self.optimizer = build_optimizer(model, cfg.optim, world_size=world_size)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self.guard = NonFiniteGuard(cfg.max_nonfinite_in_a_row)
        self.step, self.epoch, self.epoch_batches = 0, 0, 0

    @property
    def done(self) -> bool:
        """``max_steps`` is reached."""
        return self.step >= self.cfg.max_steps

    def resume(self, path: Path) -> dict[str, Any]:
        """Restore a checkpoint of :meth:`save` (weights, optimizer, scaler, schedule, guard, step, epoch and the
        position in it).

        Returns:
            The saved trainer state (``step``, ``epoch``, ``epoch_batches`` and the ``extra_state`` of :meth:`save`).

        Raises:
            ValueError: the checkpoint is unreadable or does not fit.
        """
        state = load_training_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            guard=self.guard,
        )
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.epoch_batches = int(state.get("epoch_batches", 0))  # 0 in checkpoints written before it was saved
        return state

    def save(self, output_dir: str | Path, *, keep: int, extra_state: dict[str, Any] | None = None) -> Path:
        """Write ``output_dir/step_NNNNNNN`` (:func:`~sgmg.train.checkpoint.save_training_checkpoint`)."""
        return save_training_checkpoint(
            output_dir,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            guard=self.guard,
            step=self.step,
            epoch=self.epoch,
            cfg=self.cfg,
            keep=keep,
            extra_state={"epoch_batches": self.epoch_batches, **dict(extra_state or {})},
        )

    def fit(self, batches: Iterable[tuple[int, ClipBatch]], hooks: TrainerHooks) -> StepMetrics | None:
        """Train until ``max_steps`` (or until ``batches`` ends).

        Args:
            batches: ``(epoch, batch)`` pairs; not read at all when ``max_steps`` is already reached.
            hooks: logging, validation and checkpoint callbacks.

        Returns:
            The metrics of the last micro-batch (None if none was trained on).

        Raises:
            FloatingPointError: after ``cfg.max_nonfinite_in_a_row`` non-finite steps in a row.
        """
        cfg = self.cfg
        metrics: StepMetrics | None = None
        if self.done:
            return metrics
        window_start, window_steps, window_clips = time.perf_counter(), 0, 0
        waited = [0.0]  # seconds spent in the batch iterator since window_start
        micro = 0
        for epoch, batch in _timed(batches, waited):
            if epoch != self.epoch:
                self.epoch, self.epoch_batches = epoch, 0
            self.epoch_batches += 1
            batch = batch.to(self.device)
            metrics = train_step(
                self.train_model,
                self.criterion,
                batch,
                self.optimizer,
                scaler=self.scaler,
                accum_steps=cfg.accum_steps,
                step_index=micro,
                clip_max_norm=cfg.optim.clip_max_norm,
                amp_dtype=self.amp_dtype,
                nonfinite=self.guard,
            )
            micro += 1
            window_clips += batch.video.shape[0]
            if micro % cfg.accum_steps:
                continue
            self.step += 1
            window_steps += 1
            self.scheduler.step()  # per optimizer step, skipped ones included, so milestones stay aligned with `step`
            info = StepInfo(self.step, epoch, metrics, final=self.done)
            if self.step % cfg.log_every == 0 or info.final:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                window = Throughput(elapsed, window_steps, window_clips, min(waited[0], elapsed))
                info = dataclasses.replace(info, window=window)
                hooks.log(info)
                window_start, window_steps, window_clips, waited[0] = time.perf_counter(), 0, 0, 0.0
            if self.step % cfg.checkpoint_every == 0 or info.final:
                hooks.checkpoint(info, hooks.validate(info))
            if info.final:
                break
        return metrics


def _timed(batches: Iterable[_T], waited: list[float]) -> Iterator[_T]:
    """``batches``, adding the seconds each ``next`` takes to ``waited[0]``."""
    it = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - start
        yield item
