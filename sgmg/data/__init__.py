"""Data: dataset readers, the synthetic generator, clip sampling and augmentation, collate.

Public entry points: :func:`open_dataset` (readers of every format), :func:`write_synthetic_dataset`,
:func:`validate_dataset`, :func:`train_clip` (sampling + augmentation), :func:`collate_clips`.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module; imported on first use so `sgmg make-synthetic` / `validate-dataset` never import torch
_LAZY: dict[str, str] = {
    "ClipBatch": "sgmg.data.schema",
    "ClipSample": "sgmg.data.schema",
    "DataError": "sgmg.data.io",
    "DatasetReader": "sgmg.data.datasets",
    "Expression": "sgmg.data.schema",
    "FORMATS": "sgmg.data.datasets",
    "FileSource": "sgmg.data.io",
    "LocalFileSource": "sgmg.data.io",
    "SyntheticConfig": "sgmg.data.synthetic",
    "ValidationReport": "sgmg.data.validate",
    "VideoData": "sgmg.data.schema",
    "VideoRecord": "sgmg.data.schema",
    "VideoTarget": "sgmg.data.schema",
    "arrays_to_sample": "sgmg.data.collate",
    "augment_image": "sgmg.data.transforms",
    "augment_video": "sgmg.data.transforms",
    "collate_arrays": "sgmg.data.collate",
    "collate_clips": "sgmg.data.collate",
    "detect_format": "sgmg.data.datasets",
    "open_dataset": "sgmg.data.datasets",
    "resize_short_side": "sgmg.data.transforms",
    "sample_clip_indices": "sgmg.data.sampler",
    "sample_to_arrays": "sgmg.data.collate",
    "train_clip": "sgmg.data.sampler",
    "validate_dataset": "sgmg.data.validate",
    "write_synthetic_dataset": "sgmg.data.synthetic",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sgmg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
