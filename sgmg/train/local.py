"""Single-process training (``sgmg train --local``): the same :func:`~sgmg.train.step.train_step` the Ray workers run.

Reads a dataset folder (any format :func:`sgmg.data.datasets.open_dataset` detects, e.g. the synthetic Ref-YouTube-VOS
set of ``sgmg make-synthetic``), trains for ``max_steps`` optimizer steps, logs a rate line every ``log_every`` steps,
writes checkpoints to ``output_dir/step_NNNNNNN/`` and resumes from the newest one found there.

A checkpoint directory holds the model in this project's format (``model.safetensors`` + ``config.json``, written by
:func:`sgmg.checkpoint.io.save_checkpoint`), ``optimizer.pt`` (optimizer and GradScaler state; tensors, numbers and
lists only, read back with ``torch.load(weights_only=True)``) and ``trainer_state.json`` (step counters, scheduler,
non-finite counter, the training config). It is written under a temporary name and renamed when complete. A resumed
run restarts the saved epoch's (deterministic) clip order from its beginning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgmg.data.schema import ClipBatch
from sgmg.loss.criterion import SgMgCriterion
from sgmg.loss.matcher import InstanceSequenceMatcher
from sgmg.train.config import LossConfig, TrainConfig
from sgmg.train.optim import build_optimizer, reinit_score_heads
from sgmg.train.schedule import build_scheduler
from sgmg.train.step import NonFiniteGuard, StepMetrics, train_step

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
_STEP_PREFIX = "step_"


def build_criterion(
    cfg: LossConfig, reduce_num_boxes: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> SgMgCriterion:
    """The matcher and criterion of a :class:`LossConfig`.

    ``reduce_num_boxes``: see :class:`SgMgCriterion` (default: the all-reduce over data-parallel workers; pass an
    identity for a loss computed by one rank alone, e.g. validation on rank 0, which would otherwise wait forever).
    """
    matcher = InstanceSequenceMatcher(
        cost_class=cfg.cost_class,
        cost_bbox=cfg.cost_bbox,
        cost_giou=cfg.cost_giou,
        cost_mask=cfg.cost_mask,
        cost_dice=cfg.cost_dice,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
    )
    return SgMgCriterion(
        matcher=matcher,
        weight_score=cfg.weight_score,
        weight_bbox=cfg.weight_bbox,
        weight_giou=cfg.weight_giou,
        weight_mask=cfg.weight_mask,
        weight_dice=cfg.weight_dice,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
        boxes_on_invalid_frames=cfg.boxes_on_invalid_frames,
        aux_loss=cfg.aux_loss,
        reduce_num_boxes=reduce_num_boxes,
    )


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``.

    Raises:
        ValueError: if CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    return device


def amp_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for a precision setting on a device.

    ``auto``: bf16 on CUDA devices that support it, fp32 elsewhere (CPU included). ``fp16`` needs CUDA and a scaler.

    Raises:
        ValueError: for ``fp16`` off CUDA or an unknown setting.
    """
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return (torch.bfloat16 if bf16 else None), False
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision=fp16 needs a CUDA device (got {device}); use bf16 or fp32")
        return torch.float16, True
    raise ValueError(f"precision={precision!r}: expected auto, fp32, bf16 or fp16")


def flatten_overrides(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"text": {"freeze": False}}`` -> ``{"text.freeze": False}`` (the form ``build_model`` takes)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= flatten_overrides(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def build_training_model(cfg: TrainConfig) -> nn.Module:
    """The model of a run: the named variant, optionally initialised from ``init_from`` (score heads re-initialised
    when ``reinit_score_heads``), in train mode.

    Raises:
        ValueError / FileNotFoundError / CheckpointMismatchError: from the zoo or checkpoint loader.
    """
    from sgmg.checkpoint.io import load_checkpoint, load_strict
    from sgmg.zoo import build_model

    model = build_model(cfg.model, **flatten_overrides(cfg.model_overrides))
    if cfg.init_from:
        pretrained = load_checkpoint(cfg.init_from)
        load_strict(model, pretrained.state_dict(), str(cfg.init_from))
        if cfg.reinit_score_heads:
            names = reinit_score_heads(model)
            logger.info("re-initialised %d score-head tensors after loading %s", len(names), cfg.init_from)
    return model.train()


class ClipStream:
    """Endless training batches from a dataset folder, one shuffled pass over its (video, expression) pairs per epoch.

    Args:
        cfg: the run's config (``data`` section, ``seed``).
        tokenizer: the text encoder's tokenizer.

    Raises:
        DataError / ValueError: the folder cannot be read or holds no expression with ground truth.
    """

    def __init__(self, cfg: TrainConfig, tokenizer: Any) -> None:
        from sgmg.data.datasets import open_dataset

        data = cfg.data
        if not data.root:
            raise ValueError("data.root is empty; set it to a dataset folder (e.g. one made by `sgmg make-synthetic`)")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.reader = open_dataset("auto", data.root, data.split)
        records = self.reader.list_videos()
        self.pairs = [(r, e) for r in records for e in r.expressions]
        if not self.pairs:
            raise ValueError(f"{data.root} (split {data.split!r}) has no expression to train on")

    def __len__(self) -> int:
        """Batches per epoch (clips where the object never shows are skipped, so this is an upper bound)."""
        return max(1, len(self.pairs) // self.cfg.data.batch_size)

    def _clip(self, record: Any, exp: Any, rng: np.random.Generator) -> Any:
        from sgmg.data import transforms

        data = self.cfg.data
        video = self.reader.load_video(record).sample(exp)
        if video.masks.shape[0] == 0:
            return None
        if data.augment:
            return transforms.train_clip(video, rng, num_frames=data.num_frames, max_size=data.max_size)
        video = dataclasses.replace(video, expression=transforms.normalize_caption(video.expression))
        n = video.frames.shape[0]
        for _ in range(10):  # redraw the anchor until the object shows, as train_clip does
            idx = transforms.sample_clip_indices(n, int(rng.integers(n)), data.num_frames, rng, reverse_prob=0.0)
            clip = transforms.take_frames(video, idx)
            if clip.valid.any():
                return transforms.resize_short_side(clip, data.size, data.max_size)
        return None

    def batches(self, epoch: int) -> Iterator[ClipBatch]:
        """The batches of one epoch (deterministic in ``(seed, epoch)``)."""
        from sgmg.data.collate import collate_clips

        rng = np.random.default_rng([self.cfg.seed, epoch])
        order = rng.permutation(len(self.pairs))
        pending = []
        for i in order:
            clip = self._clip(*self.pairs[i], rng)
            if clip is None:
                continue
            pending.append(clip)
            if len(pending) == self.cfg.data.batch_size:
                yield collate_clips(pending, self.tokenizer, pad_multiple=32)
                pending = []

    def forever(self, start_epoch: int = 0) -> Iterator[tuple[int, ClipBatch]]:
        """``(epoch, batch)`` pairs from ``start_epoch`` on.

        Raises:
            ValueError: if a whole epoch yields no batch.
        """
        epoch = start_epoch
        while True:
            produced = False
            for batch in self.batches(epoch):
                produced = True
                yield epoch, batch
            if not produced:
                raise ValueError(f"{self.cfg.data.root}: an epoch gave no clip with a visible referred object")
            epoch += 1


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_STEP_PREFIX) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: p.name)


def save_training_checkpoint(
    output_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    guard: NonFiniteGuard,
    step: int,
    epoch: int,
    cfg: TrainConfig,
    keep: int,
    extra_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``output_dir/step_{step:07d}`` atomically and keep only the ``keep`` newest checkpoints.

    ``extra_state`` (JSON values) is stored in ``trainer_state.json`` beside the counters, e.g. a tracking run id.
    """
    from sgmg.checkpoint.io import save_checkpoint

    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_STEP_PREFIX}{step:07d}"
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None},
        tmp / OPTIMIZER_NAME,
    )
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "milestones"}  # milestones come from the config
    state = {
        "step": step,
        "epoch": epoch,
        "scheduler": sched,
        "nonfinite": guard.state_dict(),
        "config": dataclasses.asdict(cfg),
        **dict(extra_state or {}),
    }
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    guard: NonFiniteGuard,
) -> dict[str, Any]:
    """Restore what :func:`save_training_checkpoint` wrote; returns the trainer state (``step``, ``epoch``, ...).

    Raises:
        ValueError: if the files are unreadable or do not fit the model/optimizer.
    """
    from safetensors.torch import load_file

    from sgmg.checkpoint.io import WEIGHTS_NAME, load_strict

    try:
        state = json.loads((path / STATE_NAME).read_text())
        load_strict(model, load_file(str(path / WEIGHTS_NAME)), str(path / WEIGHTS_NAME))
        extra = torch.load(path / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        sched = scheduler.state_dict()
        sched.update(state["scheduler"])
        scheduler.load_state_dict(sched)
        guard.load_state_dict(state["nonfinite"])
    except (OSError, KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"cannot resume from {path} ({exc}); delete that directory or point output_dir elsewhere"
        ) from exc
    return state


@dataclass
class LocalTrainResult:
    """Summary of :func:`train_local`.

    Attributes:
        steps: optimizer steps done in total (resumed ones included).
        resumed_from: the checkpoint the run continued from, if any.
        last_checkpoint: the newest checkpoint written.
        last_metrics: metrics of the last micro-batch.
        nonfinite_total: non-finite steps skipped so far.
        seconds: wall time of this invocation.
    """

    steps: int
    resumed_from: Path | None
    last_checkpoint: Path | None
    last_metrics: StepMetrics | None
    nonfinite_total: int
    seconds: float


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def train_local(
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] = logger.info,
    model: nn.Module | None = None,
    stream: Any = None,
) -> LocalTrainResult:
    """Train in this process.

    Args:
        cfg: the run.
        log: receives the rate lines and notices.
        model: a ready model (tests); built from ``cfg`` when None.
        stream: an object with ``__len__`` and ``forever(start_epoch)`` yielding ``(epoch, ClipBatch)`` (tests);
            a :class:`ClipStream` over ``cfg.data`` when None.

    Returns:
        :class:`LocalTrainResult`.

    Raises:
        FloatingPointError: after ``cfg.max_nonfinite_in_a_row`` non-finite steps in a row.
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = select_device(cfg.device)
    amp_dtype, use_scaler = amp_settings(cfg.precision, device)
    resume = checkpoint_dirs(cfg.output_dir)
    if model is None:
        # when resuming, the weights come from the checkpoint: do not load init_from
        model = build_training_model(dataclasses.replace(cfg, init_from=None) if resume else cfg)
    model.to(device).train()
    if stream is None:
        from sgmg.data.tokenizer import load_tokenizer

        stream = ClipStream(cfg, load_tokenizer(cfg.data.tokenizer or model.config.text.tokenizer_source))
    criterion = build_criterion(cfg.loss)
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = max(1, math.ceil(len(stream) / cfg.accum_steps))
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    guard = NonFiniteGuard(cfg.max_nonfinite_in_a_row)

    step, start_epoch, resumed_from = 0, 0, None
    if resume:
        resumed_from = resume[-1]
        state = load_training_checkpoint(
            resumed_from, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, guard=guard
        )
        step, start_epoch = int(state["step"]), int(state["epoch"])
        log(f"resumed from {resumed_from} at step {step}")
    if step >= cfg.max_steps:
        log(f"nothing to do: step {step} >= max_steps {cfg.max_steps}")
        return LocalTrainResult(step, resumed_from, resumed_from, None, guard.total, time.perf_counter() - started)

    log(
        f"training {cfg.model} on {device} ({amp_dtype or 'fp32'}), steps {step}->{cfg.max_steps}, "
        f"{steps_per_epoch} steps/epoch, output {cfg.output_dir}"
    )
    last_ckpt: Path | None = resumed_from
    metrics: StepMetrics | None = None
    window_start, window_steps, window_clips = time.perf_counter(), 0, 0
    micro = 0
    for epoch, batch in stream.forever(start_epoch):
        batch = batch.to(device)
        metrics = train_step(
            model,
            criterion,
            batch,
            optimizer,
            scaler=scaler,
            accum_steps=cfg.accum_steps,
            step_index=micro,
            clip_max_norm=cfg.optim.clip_max_norm,
            amp_dtype=amp_dtype,
            nonfinite=guard,
        )
        micro += 1
        window_clips += batch.video.shape[0]
        if (micro % cfg.accum_steps) != 0:
            continue
        step += 1
        window_steps += 1
        scheduler.step()  # per optimizer step, skipped ones included, so milestones stay aligned with `step`
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            elapsed = time.perf_counter() - window_start
            rate = window_steps / max(elapsed, 1e-9)
            eta = (cfg.max_steps - step) / max(rate, 1e-9)
            t = metrics.terms
            grad = f"{metrics.grad_norm:.3g}" if metrics.grad_norm is not None else "-"
            log(
                f"step {step}/{cfg.max_steps} epoch {epoch} loss {metrics.loss:.4f} "
                f"(score {t.get('loss_ce', float('nan')):.3f} dice {t.get('loss_dice', float('nan')):.3f} "
                f"mask {t.get('loss_mask', float('nan')):.4f}) lr {metrics.lr:.2e} "
                f"grad_norm {grad} nonfinite {guard.total} | {rate:.2f} step/s {window_clips / max(elapsed, 1e-9):.2f} "
                f"clips/s eta {_fmt_duration(eta)}"
            )
            window_start, window_steps, window_clips = time.perf_counter(), 0, 0
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            last_ckpt = save_training_checkpoint(
                cfg.output_dir,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                guard=guard,
                step=step,
                epoch=epoch,
                cfg=cfg,
                keep=cfg.keep_checkpoints,
            )
            log(f"saved {last_ckpt}")
        if step >= cfg.max_steps:
            break
    return LocalTrainResult(step, resumed_from, last_ckpt, metrics, guard.total, time.perf_counter() - started)
