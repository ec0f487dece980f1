"""Load released SgMg checkpoints (github.com/bo-miao/SgMg; Miao et al., ICCV 2023) into :class:`SgMg`.

The released ``.pth`` files hold ``{'model': state_dict, ...}`` with the official module names (listed in
``tests/checkpoint/fixtures/sgmg_official_keys_video_swin_{t,s,b}.txt``). They are read with
``torch.load(weights_only=True)`` and renamed by the declarative prefix map :data:`KEY_MAP`. Every key must be used
except the ones in :data:`IGNORED`, each with its reason; anything else is a :class:`CheckpointMismatchError`.
The text encoder's architecture (RoBERTa-base's, possibly with fewer layers) is read from the checkpoint's shapes,
so no hub access is needed.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch

from sgmg.checkpoint.io import CheckpointMismatchError, build_from_state
from sgmg.config import ROBERTA_BASE_CONFIG, SgMgConfig, TextEncoderConfig
from sgmg.model.sgmg import SgMg

logger = logging.getLogger(__name__)

# (official prefix, our prefix), first match wins. Every official key must match exactly one rule or be IGNORED.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("backbone.0.body.", "visual_encoder."),
    ("text_encoder.text_backbone.", "text_encoder.model."),
    ("text_proj.", "text_proj."),
    ("sentence_proj.", "sentence_proj."),
    ("fusion_module.multihead_attn.", "fusion.cross_attn.attn."),
    ("input_fft_post.", "fusion.post."),
    ("input_fft.", "fusion.pre."),
    ("input_proj.", "input_proj."),
    ("query_embed.", "query_embed."),
    ("transformer.level_embed", "transformer.level_embed"),
    ("transformer.encoder.layers.", "transformer.encoder.layers."),
    ("transformer.decoder.layers.", "transformer.decoder.layers."),
    ("transformer.reference_points.", "transformer.reference_points."),
    ("class_embed.", "class_embed."),
    ("bbox_embed.", "bbox_embed."),
    ("controller.", "mask_head.controller."),
    ("mask_refine.conv1_1div8.", "refiner.conv1_s8."),
    ("mask_refine.conv2_1div8.", "refiner.conv2_s8."),
    ("mask_refine.conv1_1div4.", "refiner.conv1_s4."),
    ("mask_refine.conv2_1div4.", "refiner.conv2_s4."),
)

# (pattern, reason): official keys deliberately not loaded.
IGNORED: tuple[tuple[str, str], ...] = (
    (
        r"^transformer\.decoder\.bbox_embed\.",
        "same module as bbox_embed.* in the official model (iterative box refinement), saved twice",
    ),
    (r"^text_encoder\.text_backbone\.embeddings\.position_ids$", "RoBERTa buffer 0..513 (non-persistent today)"),
    (r"(^|\.)total_(ops|params)$", "thop profiling counters, not weights"),
)


def _variant_name(variant: str) -> str:
    """The released variant name (``video_swin_t``) of ``variant`` in either spelling (``sgmg_video_swin_t``).

    Raises:
        ValueError: a name the registry (:mod:`sgmg.zoo`) does not know or that has no released checkpoint.
    """
    from sgmg.zoo import MODELS, model_name, official_variants

    try:
        official = MODELS[model_name(variant)].pretrained.official_name
    except ValueError:
        official = None
    if official is None:
        raise ValueError(f"unknown official variant {variant!r}; valid: {', '.join(official_variants())}")
    return official


def map_official_key(key: str) -> str | None:
    """Our name for an official key, or None if it is deliberately ignored.

    Raises:
        KeyError: if the key matches no rule.
    """
    for pattern, _reason in IGNORED:
        if re.search(pattern, key):
            return None
    for src, dst in KEY_MAP:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise KeyError(key)


def _text_arch(state: dict[str, torch.Tensor]) -> dict:
    """RoBERTa-base's architecture with the sizes found in the checkpoint (layers, vocabulary, width)."""
    prefix = "text_encoder.text_backbone."
    arch = dict(ROBERTA_BASE_CONFIG)
    layers = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.", k))}
    if layers:
        arch["num_hidden_layers"] = max(layers) + 1
    words = state.get(prefix + "embeddings.word_embeddings.weight")
    if words is not None:
        arch["vocab_size"], arch["hidden_size"] = int(words.shape[0]), int(words.shape[1])
    positions = state.get(prefix + "embeddings.position_embeddings.weight")
    if positions is not None:
        arch["max_position_embeddings"] = int(positions.shape[0])
    inter = state.get(prefix + "encoder.layer.0.intermediate.dense.weight")
    if inter is not None:
        arch["intermediate_size"] = int(inter.shape[0])
    return arch


def official_config(variant: str, state: dict[str, torch.Tensor] | None = None) -> SgMgConfig:
    """The :class:`SgMgConfig` of an official variant (text encoder sized from ``state`` when given)."""
    from sgmg.zoo import MODEL_CONFIGS, model_name

    config = MODEL_CONFIGS[model_name(_variant_name(variant))]
    arch = _text_arch(state) if state is not None else dict(ROBERTA_BASE_CONFIG)
    text = TextEncoderConfig(name="roberta-base", pretrained=False, arch=arch, freeze=True)
    return dataclasses.replace(config, text=text)


def convert_official_state_dict(
    official: dict[str, torch.Tensor], source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official state dict to ours.

    Returns:
        ``(state, unknown)``: the renamed tensors and the official keys that match no rule.
    """
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in official.items():
        try:
            ours = map_official_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is not None:
            state[ours] = value
    for key, value in official.items():
        if key.startswith("transformer.decoder.bbox_embed."):
            twin = official.get(key[len("transformer.decoder.") :])
            if twin is not None and not twin.is_meta and (twin.shape != value.shape or not torch.equal(twin, value)):
                logger.warning("%s: %s differs from its twin bbox_embed key; using bbox_embed", source, key)
    return state, unknown


def _check_variant(state: dict[str, torch.Tensor], variant: str, source: str) -> None:
    """Raise a clear error when the backbone in the file is not ``variant``'s."""
    config = official_config(variant)
    key = "visual_encoder.patch_embed.proj.weight"
    embed = state.get(key)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"visual_encoder\.layers\.2\.blocks\.(\d+)\.", k))}
    expected_blocks = config.visual.depths[2]
    problems = []
    if embed is not None and embed.shape[0] != config.visual.embed_dim:
        problems.append(
            f"backbone.0.body.patch_embed.proj.weight {tuple(embed.shape)} (expects {config.visual.embed_dim} channels)"
        )
    if blocks and max(blocks) + 1 != expected_blocks:
        problems.append(f"backbone.0.body.layers.2.blocks.* has {max(blocks) + 1} blocks (expects {expected_blocks})")
    if problems:
        from sgmg.zoo import official_variants

        found = [v for v in official_variants() if _fits(state, v)]
        hint = f"Is this a {found[0]} checkpoint? Pass variant={found[0]!r}." if found else ""
        raise CheckpointMismatchError(source, wrong_shapes=problems, hint=f"wrong variant {variant!r}. {hint}")


def _fits(state: dict[str, torch.Tensor], variant: str) -> bool:
    config = official_config(variant)
    embed = state.get("visual_encoder.patch_embed.proj.weight")
    n = len({k.split(".")[4] for k in state if k.startswith("visual_encoder.layers.2.blocks.")})
    return embed is not None and embed.shape[0] == config.visual.embed_dim and n == config.visual.depths[2]


def load_official_checkpoint(path: str | Path, variant: str = "video_swin_t") -> SgMg:
    """Build the official ``variant`` and load a released SgMg ``.pth`` (eval mode).

    Args:
        path: the ``.pth`` file (``{'model': state_dict, ...}``).
        variant: ``video_swin_t``, ``video_swin_s`` or ``video_swin_b`` (or ``sgmg_video_swin_t``, ...).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown variant or a file that is not an SgMg checkpoint.
        CheckpointMismatchError: for a wrong variant, missing/unexpected keys or wrong shapes (names the keys).
    """
    variant = _variant_name(variant)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official SgMg checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint ({exc})") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        keys = sorted(blob)[:10] if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path}: expected {{'model': state_dict, ...}} (official SgMg layout), found {keys}")
    return model_from_official_state_dict(blob["model"], variant, str(path))


def model_from_official_state_dict(
    official: dict[str, torch.Tensor], variant: str = "video_swin_t", source: str = "checkpoint"
) -> SgMg:
    """Build the official ``variant`` from an official-layout state dict (no random init; eval mode).

    Raises:
        CheckpointMismatchError: for a wrong variant, keys that match no rule, missing keys or wrong shapes.
    """
    variant = _variant_name(variant)
    state, unknown = convert_official_state_dict(official, source)
    _check_variant(state, variant, source)
    if unknown:
        raise CheckpointMismatchError(source, unexpected=unknown, hint="these official keys match no KEY_MAP rule")
    try:
        return build_from_state(official_config(variant, official), state, source).eval()
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(
            source,
            missing=[to_official_key(k) for k in exc.missing],
            unexpected=[to_official_key(k) for k in exc.unexpected],
            wrong_shapes=[to_official_key(k) for k in exc.wrong_shapes],
            hint="(official key names)",
        ) from exc


def to_official_key(key: str) -> str:
    """Inverse of :func:`map_official_key` (for messages); text after the key (e.g. shapes) is kept."""
    for src, dst in KEY_MAP:
        if key.startswith(dst):
            return src + key[len(dst) :]
    return key
