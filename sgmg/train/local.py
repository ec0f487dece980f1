"""Single-process training (``sgmg train --local``): the :class:`~sgmg.train.trainer.Trainer` recipe the Ray workers
run too, fed from a dataset folder.

Reads a dataset folder (any format :func:`sgmg.data.datasets.open_dataset` detects, e.g. the synthetic Ref-YouTube-VOS
set of ``sgmg make-synthetic``), trains for ``max_steps`` optimizer steps, logs a rate line every ``log_every`` steps,
writes checkpoints (:mod:`sgmg.train.checkpoint`) to ``output_dir/step_NNNNNNN/`` and resumes from the newest one found
there. A resumed run continues the saved epoch's (deterministic) clip order where the checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgmg.data.schema import ClipBatch
from sgmg.train.checkpoint import checkpoint_dirs
from sgmg.train.config import TrainConfig
from sgmg.train.precision import select_device
from sgmg.train.step import StepMetrics
from sgmg.train.trainer import StepInfo, Trainer, TrainerHooks, build_training_model

logger = logging.getLogger(__name__)


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

    def _clip(self, record: Any, exp: Any, rng: np.random.Generator, referral_rng: np.random.Generator) -> Any:
        from sgmg.data import sampler

        data = self.cfg.data
        also = sampler.pick_referrals(record.expressions, exp, data.expressions_per_clip - 1, referral_rng)
        video = self.reader.load_video(record).sample(exp, also)
        if video.masks.shape[0] == 0:
            return None
        if data.augment:
            return sampler.train_clip(video, rng, num_frames=data.num_frames, max_size=data.max_size)
        return sampler.sample_clip(  # redraw the anchor until the object shows, as train_clip does
            video.frames.shape[0],
            lambda idx: sampler.take_frames(video, idx),
            rng,
            num_frames=data.num_frames,
            recipe="resize",
            reverse_prob=0.0,
            size=data.size,
            max_size=data.max_size,
        )

    def batches(self, epoch: int) -> Iterator[ClipBatch]:
        """The batches of one epoch (deterministic in ``(seed, epoch)``)."""
        from sgmg.data.collate import collate_clips

        rng = np.random.default_rng([self.cfg.seed, epoch])
        referral_rng = np.random.default_rng([self.cfg.seed, epoch, 1])  # the clips' draws do not depend on them
        order = rng.permutation(len(self.pairs))
        pending = []
        for i in order:
            clip = self._clip(*self.pairs[i], rng, referral_rng)
            if clip is None:
                continue
            pending.append(clip)
            if len(pending) == self.cfg.data.batch_size:
                yield collate_clips(pending, self.tokenizer, pad_multiple=32)
                pending = []

    def forever(self, start_epoch: int = 0, skip: int = 0) -> Iterator[tuple[int, ClipBatch]]:
        """``(epoch, batch)`` pairs from ``start_epoch`` on, without the first ``skip`` batches of ``start_epoch``
        (a resumed run's position: they are drawn again, as the clip order is, and dropped).

        Raises:
            ValueError: if a whole epoch yields no batch.
        """
        epoch = start_epoch
        while True:
            produced = False
            for i, batch in enumerate(self.batches(epoch)):
                produced = True
                if epoch == start_epoch and i < skip:
                    continue
                yield epoch, batch
            if not produced:
                raise ValueError(f"{self.cfg.data.root}: an epoch gave no clip with a visible referred object")
            epoch += 1


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
        stream: an object with ``__len__`` and ``forever(start_epoch, skip)`` yielding ``(epoch, ClipBatch)`` (tests);
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
    resume = checkpoint_dirs(cfg.output_dir)
    if model is None:
        # when resuming, the weights come from the checkpoint: do not load init_from
        model = build_training_model(dataclasses.replace(cfg, init_from=None) if resume else cfg)
    model.to(device).train()
    if stream is None:
        from sgmg.data.tokenizer import load_tokenizer

        stream = ClipStream(cfg, load_tokenizer(cfg.data.tokenizer or model.config.text.tokenizer_source))
    steps_per_epoch = max(1, math.ceil(len(stream) / cfg.accum_steps))
    trainer = Trainer(cfg, model, device=device, steps_per_epoch=steps_per_epoch)
    resumed_from = None
    if resume:
        resumed_from = resume[-1]
        trainer.resume(resumed_from)
        log(f"resumed from {resumed_from} at step {trainer.step}")
    if trainer.done:
        log(f"nothing to do: step {trainer.step} >= max_steps {cfg.max_steps}")
        return LocalTrainResult(
            trainer.step, resumed_from, resumed_from, None, trainer.guard.total, time.perf_counter() - started
        )

    log(
        f"training {cfg.model} on {device} ({trainer.amp_dtype or 'fp32'}), steps {trainer.step}->{cfg.max_steps}, "
        f"{steps_per_epoch} steps/epoch, output {cfg.output_dir}"
    )
    last_ckpt: Path | None = resumed_from

    def log_rate(info: StepInfo) -> None:
        window, metrics, t = info.window, info.metrics, info.metrics.terms
        rate = window.steps / window.seconds
        eta = (cfg.max_steps - info.step) / max(rate, 1e-9)
        grad = f"{metrics.grad_norm:.3g}" if metrics.grad_norm is not None else "-"
        log(
            f"step {info.step}/{cfg.max_steps} epoch {info.epoch} loss {metrics.loss:.4f} "
            f"(score {t.get('loss_ce', float('nan')):.3f} dice {t.get('loss_dice', float('nan')):.3f} "
            f"mask {t.get('loss_mask', float('nan')):.4f}) lr {metrics.lr:.2e} "
            f"grad_norm {grad} nonfinite {trainer.guard.total} | {rate:.2f} step/s "
            f"{window.clips / window.seconds:.2f} clips/s data {window.data_share:.0%} eta {_fmt_duration(eta)}"
        )

    def save(info: StepInfo, val: dict[str, float]) -> None:
        nonlocal last_ckpt
        last_ckpt = trainer.save(cfg.output_dir, keep=cfg.keep_checkpoints)
        log(f"saved {last_ckpt}")

    batches = stream.forever(trainer.epoch, trainer.epoch_batches)
    metrics = trainer.fit(batches, TrainerHooks(log=log_rate, checkpoint=save))
    return LocalTrainResult(
        trainer.step, resumed_from, last_ckpt, metrics, trainer.guard.total, time.perf_counter() - started
    )
