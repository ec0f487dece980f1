"""SgMg: Spectrum-guided Multi-granularity referring video object segmentation, in pure PyTorch.

Public API (stable)::

    import sgmg
    model = sgmg.build_model("sgmg_video_swin_t")          # also _s, _b and "sgmg_tiny"; "video_swin_t" works too
    model = sgmg.build_model("video_swin_t", checkpoint=path)   # with weights: this project's or a released .pth
    tokenizer = sgmg.load_tokenizer_for(model)              # the tokenizer its config records
    model = sgmg.load_checkpoint(path)                      # this project's format (safetensors + JSON config)
    model = sgmg.load_official_checkpoint(path, variant="video_swin_t")   # a released SgMg .pth
    out = model(video, input_ids, attention_mask)           # -> sgmg.model.outputs.SgMgOutput

Attributes are imported lazily, so ``import sgmg`` stays cheap and never imports ray, mlflow or boto3.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY: dict[str, str] = {
    "build_model": "sgmg.zoo:build_model",
    "list_models": "sgmg.zoo:list_models",
    "MODEL_CONFIGS": "sgmg.zoo:MODEL_CONFIGS",
    "SgMgConfig": "sgmg.config:SgMgConfig",
    "load_checkpoint": "sgmg.checkpoint.io:load_checkpoint",
    "save_checkpoint": "sgmg.checkpoint.io:save_checkpoint",
    "CheckpointMismatchError": "sgmg.checkpoint.io:CheckpointMismatchError",
    "load_tokenizer": "sgmg.data.tokenizer:load_tokenizer",
    "load_tokenizer_for": "sgmg.data.tokenizer:load_tokenizer_for",
    "load_official_checkpoint": "sgmg.checkpoint.convert_official:load_official_checkpoint",
    "SgMgOutput": "sgmg.model.outputs:SgMgOutput",
    "RVOSPredictor": "sgmg.inference.predictor:RVOSPredictor",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'sgmg' has no attribute {name!r}")
    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
