"""Device and mixed-precision settings of a training run (``TrainConfig.device`` / ``TrainConfig.precision``)."""

from __future__ import annotations

import torch


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
