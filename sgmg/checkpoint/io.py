"""This project's checkpoint format: safetensors weights plus the JSON of ``dataclasses.asdict(config)``.

A checkpoint is either a directory holding ``model.safetensors`` and ``config.json``, or a file pair
``NAME.safetensors`` + ``NAME.json``. Files are written under temporary names and renamed, so an interrupted save
never leaves a half-written checkpoint behind. Loading is strict (:class:`CheckpointMismatchError`). Nothing is ever
unpickled. SgMg: Miao et al., ICCV 2023.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sgmg.config import SgMgConfig, config_from_dict
from sgmg.model.sgmg import SgMg

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointMismatchError(ValueError):
    """Weights do not fit the model: lists the missing, unexpected and wrongly shaped keys."""

    def __init__(
        self,
        source: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        wrong_shapes: list[str] | None = None,
        hint: str = "",
    ) -> None:
        self.missing = sorted(missing or [])
        self.unexpected = sorted(unexpected or [])
        self.wrong_shapes = sorted(wrong_shapes or [])
        parts = [f"{source}: checkpoint does not match the model."]
        groups = (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.wrong_shapes))
        for name, keys in groups:
            if keys:
                shown = ", ".join(keys[:25]) + (f", ... ({len(keys)} in all)" if len(keys) > 25 else "")
                parts.append(f"{name} keys: {shown}")
        if hint:
            parts.append(hint)
        super().__init__("\n".join(parts))


def _pair(path: str | Path) -> tuple[Path, Path]:
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    p = Path(text)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    return p / WEIGHTS_NAME, p / CONFIG_NAME


def self_contained_config(model: SgMg) -> SgMgConfig:
    """The model's config with nothing to fetch at load time: the text encoder's architecture inlined, no
    Kinetics path (the weights are in the checkpoint)."""
    config = getattr(model, "config", None)
    if not isinstance(config, SgMgConfig):
        raise ValueError("model has no SgMgConfig in `.config`; build it with sgmg.build_model or build_sgmg")
    text = config.text
    if text.pretrained:
        arch = model.text_encoder.model.config.to_diff_dict()
        drop = {"architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"}
        text = dataclasses.replace(text, pretrained=False, arch={k: v for k, v in arch.items() if k not in drop})
    visual = dataclasses.replace(config.visual, pretrained_path=None)
    return dataclasses.replace(config, text=text, visual=visual)


def _temp_name(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def save_checkpoint(model: SgMg, path: str | Path) -> Path:
    """Save ``model`` as safetensors + JSON config.

    Args:
        model: a model built by :func:`sgmg.zoo.build_model` / :func:`sgmg.model.builders.build_sgmg`.
        path: a directory (created if needed) or a ``NAME.safetensors`` file path (``NAME.json`` next to it).

    Returns:
        The weights file path.
    """
    weights_path, config_path = _pair(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    config = self_contained_config(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    text = json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)

    tmp_weights, tmp_config = _temp_name(weights_path), _temp_name(config_path)
    try:  # both files are complete on disk before either is renamed into place
        save_file(state, str(tmp_weights), metadata={"format": "sgmg"})
        tmp_config.write_text(text)
        os.replace(tmp_weights, weights_path)
        os.replace(tmp_config, config_path)
    finally:
        tmp_weights.unlink(missing_ok=True)
        tmp_config.unlink(missing_ok=True)
    return weights_path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> SgMg:
    """Load a checkpoint written by :func:`save_checkpoint` (eval mode).

    Raises:
        FileNotFoundError: if the weights or config file is missing.
        ValueError: if the config is invalid.
        CheckpointMismatchError: if the weights do not fit the config's model.
    """

    weights_path, config_path = _pair(path)
    for p in (weights_path, config_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"checkpoint file {p} not found; expected a directory with {WEIGHTS_NAME} and {CONFIG_NAME}, or a "
                "NAME.safetensors + NAME.json pair"
            )
    try:
        data = json.loads(config_path.read_text())
        config = config_from_dict(data)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"{config_path}: not a valid SgMg config ({exc})") from exc
    state = load_file(str(weights_path), device=str(map_location))
    return build_from_state(config, state, str(weights_path)).eval()


def build_from_state(config: SgMgConfig, state: dict[str, torch.Tensor], source: str) -> SgMg:
    """Build the model for ``config`` without random init (meta device) and load ``state`` into it strictly.

    Relative-position indices absent from ``state`` are computed; non-persistent text-encoder buffers are rebuilt.

    Raises:
        CheckpointMismatchError: if keys or shapes do not match.
    """
    from sgmg.model.builders import build_sgmg
    from sgmg.model.visual_encoder import window_relative_position_index

    with torch.device("meta"):
        model = build_sgmg(config, load_pretrained=False)
    state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}  # own, aligned memory
    window = tuple(config.visual.window_size)
    index = None
    for key in model.state_dict():
        if key.endswith("relative_position_index") and (key not in state or state[key].is_meta):
            index = window_relative_position_index(window) if index is None else index
            state[key] = index.clone()
    load_strict(model, state, source, assign=True)
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if leaf == "position_ids":
            value = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
        elif leaf == "token_type_ids":
            value = torch.zeros(buf.shape, dtype=buf.dtype)
        else:
            raise RuntimeError(f"cannot rebuild buffer {name} after a meta-device build; please report this")
        owner.register_buffer(leaf, value, persistent=False)
    return model


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """``load_state_dict`` that first checks keys and shapes and raises :class:`CheckpointMismatchError`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(source, missing, unexpected, wrong)
    model.load_state_dict(state, strict=True, assign=assign)
