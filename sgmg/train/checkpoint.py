"""Training checkpoints: the model, optimizer, GradScaler, scheduler and loop counters of a run, written atomically.

A checkpoint directory ``step_NNNNNNN/`` holds the model in this project's format (``model.safetensors`` +
``config.json``, written by :func:`sgmg.checkpoint.io.save_checkpoint`), ``optimizer.pt`` (optimizer and GradScaler
state; tensors, numbers and lists only, read back with ``torch.load(weights_only=True)``) and ``trainer_state.json``
(step counters, scheduler, non-finite counter, the training config, and whatever the caller adds, e.g. a tracking run
id). It is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgmg.train.config import TrainConfig
from sgmg.train.step import NonFiniteGuard

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
_STEP_PREFIX = "step_"


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
