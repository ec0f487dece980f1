"""One framework-free training step and one validation step of SgMg.

Used unchanged by the training recipe (:class:`sgmg.train.trainer.Trainer`) of ``sgmg train --local`` and the Ray
Train workers.
The upstream loop (github.com/bo-miao/SgMg ``engine.py::train_one_epoch``) zeroes NaN loss terms and exits the process
on a non-finite total; here a non-finite loss skips the optimizer step and is counted by :class:`NonFiniteGuard`,
which raises ``FloatingPointError`` after too many in a row, and the caller decides what to do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sgmg.data.schema import ClipBatch
from sgmg.loss.criterion import SgMgCriterion
from sgmg.loss.matcher import make_query_selector
from sgmg.model.outputs import SgMgOutput

logger = logging.getLogger(__name__)


class NonFiniteGuard:
    """Counts non-finite losses/gradients; raises after ``max_in_a_row`` consecutive ones.

    Args:
        max_in_a_row: how many consecutive non-finite steps are tolerated (skipped) before raising.

    Raises:
        ValueError: if ``max_in_a_row < 1``.
    """

    def __init__(self, max_in_a_row: int = 5) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0

    def ok(self) -> None:
        """Record a finite step."""
        self.in_a_row = 0

    def bad(self, what: str, step_index: int) -> None:
        """Record a non-finite step.

        Raises:
            FloatingPointError: on the ``max_in_a_row``-th consecutive one.
        """
        self.in_a_row += 1
        self.total += 1
        logger.warning(
            "non-finite %s at step %d (%d in a row); optimizer step skipped", what, step_index, self.in_a_row
        )
        if self.in_a_row >= self.max_in_a_row:
            raise FloatingPointError(
                f"{self.in_a_row} non-finite steps in a row (last: {what} at step {step_index}, "
                f"{self.total} in total); "
                "lower the learning rate, use precision=fp32 or bf16 instead of fp16, check the data for empty or "
                "corrupt clips, or raise max_nonfinite_in_a_row"
            )

    def state_dict(self) -> dict[str, int]:
        """Counters, for checkpoints."""
        return {"in_a_row": self.in_a_row, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.in_a_row = int(state["in_a_row"])
        self.total = int(state["total"])


@dataclass
class StepMetrics:
    """What :func:`train_step` reports.

    Attributes:
        loss: weighted total loss of the micro-batch (NaN/inf when non-finite).
        terms: every unweighted term under upstream's names (``loss_ce``, ``loss_dice_low_0``, ...).
        stepped: the optimizer stepped at this micro-batch.
        skipped_nonfinite: the micro-batch (or the accumulated gradient) was non-finite and dropped.
        grad_norm: total gradient norm before clipping (None when the optimizer did not step).
        lr: LR of the first parameter group.
        num_boxes: the loss normaliser.
        nonfinite_total: non-finite steps so far (the guard's count).
    """

    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    stepped: bool = False
    skipped_nonfinite: bool = False
    grad_norm: float | None = None
    lr: float = 0.0
    num_boxes: float = 0.0
    nonfinite_total: int = 0


def _forward(model: nn.Module, batch: ClipBatch, query_selector: Callable | None = None) -> SgMgOutput:
    """The model on a collated batch (one or several expressions per clip: ``batch.video_index``)."""
    return model(
        batch.video,
        batch.input_ids,
        batch.attention_mask,
        pad_mask=batch.pad_mask,
        query_selector=query_selector,
        video_index=batch.video_index,
    )


def _trainable(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def train_step(
    model: nn.Module,
    criterion: SgMgCriterion,
    batch: ClipBatch,
    optimizer: torch.optim.Optimizer,
    *,
    scaler: torch.amp.GradScaler | None = None,
    accum_steps: int = 1,
    step_index: int = 0,
    clip_max_norm: float = 0.1,
    amp_dtype: torch.dtype | None = None,
    nonfinite: NonFiniteGuard,
) -> StepMetrics:
    """Forward, loss and backward of one micro-batch; an optimizer step every ``accum_steps`` micro-batches.

    Args:
        model: the SgMg model (or a DDP wrapper of it); put in train mode here.
        criterion: the criterion; its matcher builds the model's ``query_selector``.
        batch: a collated batch with targets, already on the model's device.
        optimizer: the optimizer (gradients are zeroed after each optimizer step).
        scaler: GradScaler for fp16 autocast (None otherwise).
        accum_steps: micro-batches per optimizer step; the loss is divided by it.
        step_index: 0-based micro-batch counter; the optimizer steps when ``(step_index + 1) % accum_steps == 0``.
        clip_max_norm: gradient clipping max norm (0: no clipping, the norm is still measured).
        amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``), None for fp32.
        nonfinite: the run's non-finite counter.

    Returns:
        :class:`StepMetrics`.

    Raises:
        ValueError: if the batch has no targets.
        FloatingPointError: after ``nonfinite.max_in_a_row`` consecutive non-finite steps.
    """
    if batch.targets is None:
        raise ValueError("train_step needs a batch with targets (ClipBatch.targets is None)")
    model.train()
    boundary = (step_index + 1) % accum_steps == 0
    selector = make_query_selector(criterion.matcher, batch.targets)
    autocast = torch.autocast(batch.video.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    # DDP: no gradient all-reduce on the micro-batches inside an accumulation window
    no_sync = model.no_sync() if not boundary and hasattr(model, "no_sync") else nullcontext()
    with no_sync:
        with autocast:
            output = _forward(model, batch, selector)
            losses = criterion(output, batch.targets, selector.matches)
        total = losses.total
        loss_value = float(total.detach())
        metrics = StepMetrics(
            loss=loss_value,
            terms={k: float(v.detach()) for k, v in losses.as_dict().items()},
            lr=float(optimizer.param_groups[0]["lr"]),
            num_boxes=losses.num_boxes,
        )
        if not _finite_everywhere(math.isfinite(loss_value), model, total.device):
            # Drop this micro-batch and whatever the current accumulation window gathered.
            optimizer.zero_grad(set_to_none=True)
            nonfinite.bad("loss", step_index)
            metrics.skipped_nonfinite = True
            metrics.nonfinite_total = nonfinite.total
            return metrics
        scaled = total / accum_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if boundary:
        _optimizer_step(optimizer, scaler, clip_max_norm, nonfinite, step_index, metrics)
    else:
        nonfinite.ok()
    metrics.nonfinite_total = nonfinite.total
    return metrics


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_max_norm: float,
    nonfinite: NonFiniteGuard,
    step_index: int,
    metrics: StepMetrics,
) -> None:
    """The end of an accumulation window: unscale, clip and measure the gradient norm, step unless it is non-finite,
    zero the gradients; fills ``metrics.grad_norm``, ``stepped`` and ``skipped_nonfinite``."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = _trainable(optimizer)
    max_norm = clip_max_norm if clip_max_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
    metrics.grad_norm = grad_norm
    if scaler is not None:
        # fp16 overflow is routine while the scale calibrates: the scaler skips the step itself.
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        metrics.stepped = scaler.get_scale() >= scale_before
        nonfinite.ok()
    elif math.isfinite(grad_norm):
        optimizer.step()
        metrics.stepped = True
        nonfinite.ok()
    else:
        nonfinite.bad("gradient norm", step_index)
        metrics.skipped_nonfinite = True
    optimizer.zero_grad(set_to_none=True)


def _finite_everywhere(finite: bool, model: nn.Module, device: torch.device) -> bool:
    """``finite`` and-ed over the data-parallel ranks when ``model`` is a DDP wrapper, so that every rank skips the
    same micro-batch: a rank that skipped its backward alone would leave the others waiting in the gradient
    all-reduce forever."""
    import torch.distributed as dist

    if not isinstance(model, nn.parallel.DistributedDataParallel) or not dist.is_initialized():
        return finite
    flag = torch.tensor([1 if finite else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


@dataclass
class ValidationMetrics:
    """What :func:`validation_step` reports (means over the videos of the batch).

    Attributes:
        j: region similarity (Jaccard) of the best query's refined mask against the union of the referred objects.
        f: contour accuracy (DAVIS F-measure).
        loss: weighted total loss (None without a criterion).
        per_video: ``(j, f)`` of every video.
    """

    j: float
    f: float
    loss: float | None = None
    per_video: list[tuple[float, float]] = field(default_factory=list)


@torch.no_grad()
def validation_step(model: nn.Module, batch: ClipBatch, criterion: SgMgCriterion | None = None) -> ValidationMetrics:
    """Evaluate one batch: J and F of the predicted masks, and the loss when a criterion is given.

    The masks come from an eval-mode forward (best query by mean score, refined) through
    :class:`~sgmg.eval.postprocess.MaskPostProcessor` (cropped to each video, probability 0.5). The loss needs the
    training-mode outputs, so it is computed with a second, gradient-free forward in train mode (dropout active, as
    upstream's losses always are); the model's mode is restored afterwards.

    Args:
        model: the SgMg model.
        batch: a collated batch with targets.
        criterion: optional criterion for the validation loss.

    Returns:
        :class:`ValidationMetrics`.

    Raises:
        ValueError: if the batch has no targets.
    """
    from sgmg.eval.metrics import f_measure, jaccard  # eval is a sibling package; imported where used
    from sgmg.eval.postprocess import MaskPostProcessor

    if batch.targets is None:
        raise ValueError("validation_step needs a batch with targets (ClipBatch.targets is None)")
    was_training = model.training
    try:
        model.eval()
        out = _forward(model, batch)
        sizes = [tuple(tgt.size) for tgt in batch.targets]
        preds = MaskPostProcessor()(out, sizes, valid_sizes=sizes)  # B x bool [T, h, w], cropped to each video
        per_video = []
        for tgt, pred_masks in zip(batch.targets, preds, strict=True):
            h, w = tgt.size
            pred = pred_masks.cpu().numpy()  # [T, h, w]
            gt = (tgt.masks[:, :, :h, :w] > 0.5).any(0).cpu().numpy()  # [T, h, w] union of the referred objects
            per_video.append((float(jaccard(gt, pred).mean()), float(f_measure(gt, pred).mean())))
        loss = None
        if criterion is not None:
            model.train()
            selector = make_query_selector(criterion.matcher, batch.targets)
            train_out = _forward(model, batch, selector)
            loss = float(criterion(train_out, batch.targets, selector.matches).total)
    finally:
        model.train(was_training)
    return ValidationMetrics(
        j=sum(j for j, _ in per_video) / len(per_video),
        f=sum(f for _, f in per_video) / len(per_video),
        loss=loss,
        per_video=per_video,
    )
