"""Step LR schedule of the official SgMg recipe (``MultiStepLR(lr_drop)``, gamma 0.1), stepped per optimizer step.

Upstream steps the scheduler once per epoch with milestones in epochs. Here the scheduler is always stepped after each
optimizer step, and epoch milestones are converted to optimizer steps with an explicit ``steps_per_epoch``, so the
same object serves both units and streaming data loaders that know their epoch length up front.
"""

from __future__ import annotations

import torch

from sgmg.train.config import OptimConfig


def milestone_steps(cfg: OptimConfig, steps_per_epoch: int | None = None) -> list[int]:
    """``cfg.milestones`` in optimizer steps.

    Raises:
        ValueError: if the unit is ``epoch`` and ``steps_per_epoch`` is missing or < 1.
    """
    if cfg.schedule_unit == "step":
        return list(cfg.milestones)
    if steps_per_epoch is None or steps_per_epoch < 1:
        raise ValueError(
            f"optim.schedule_unit='epoch' needs steps_per_epoch >= 1, got {steps_per_epoch}; "
            "pass it or set optim.schedule_unit=step with milestones in optimizer steps"
        )
    return [m * steps_per_epoch for m in cfg.milestones]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int | None = None
) -> torch.optim.lr_scheduler.MultiStepLR:
    """A ``MultiStepLR`` to be stepped once per optimizer step (every group's LR times ``lr_gamma`` per milestone)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestone_steps(cfg, steps_per_epoch), gamma=cfg.lr_gamma)
