"""Deterministic random weights in the layout of the released SgMg checkpoints.

The parity tests need one set of weights that both the official SgMg code (run outside this repository)
and our re-implementation can load. Real checkpoints cannot be downloaded here, so this module builds a
state dict with the exact key names and shapes of the official model (listed in
``tests/parity/fixtures/sgmg_official_keys_video_swin_{t,s,b}.txt``) and well-scaled random values:

* every tensor gets its own ``torch.Generator`` seeded from ``(seed, key name)``, so a key's values do not
  depend on which other keys are generated (dropping RoBERTa layers with ``text_layers`` leaves every other
  tensor unchanged) and are identical across runs and machines;
* matrices and conv kernels ~ N(0, 1/fan_in) so activations keep unit scale through the network;
* 1-D ``weight`` tensors (LayerNorm / GroupNorm affine scales) ~ 1 + N(0, 0.1^2); biases ~ N(0, 0.05^2);
* a few heads are rescaled so that the outputs are informative rather than saturated: the score heads have
  2x larger weights and a bias near -2, the decoder cross-attention output projection is 3x larger (the five
  queries then differ clearly), the first box head predicts width/height near sigmoid(-1.5), the
  dynamic-kernel generator (``controller.layers.2``) is scaled per parameter group so that the 16-channel
  patch-mask logits have a standard deviation of a few units, and query and level embeddings ~ N(0, 1);
* ``transformer.decoder.bbox_embed.*`` is the same module as ``bbox_embed.*`` in the official model, so
  those keys receive copies of the ``bbox_embed.*`` values;
* the int64 ``relative_position_index`` buffers are not generated: both implementations compute them.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import torch

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
VARIANTS = ("video_swin_t", "video_swin_s", "video_swin_b")
_KEY_LIST_MARKER = "# ---- full key list ----"
_TEXT_LAYER_RE = re.compile(r"^text_encoder\.text_backbone\.encoder\.layer\.(\d+)\.")
_ALIAS_PREFIX = "transformer.decoder.bbox_embed."
_ALIAS_TARGET = "bbox_embed."

# Dynamic mask head of the official model: layer 0 is a 1x1 conv (256 feature + 2 coordinate channels -> 16),
# layer 1 a 1x1 conv (16 -> 16); the generated vector is [w0 (16*258), w1 (16*16), b0 (16), b1 (16)].
_DYN_CHANNELS = 16
_DYN_IN = 258


def _normalise_variant(variant: str) -> str:
    """Map 'video_swin_t', 'video_swin_t_p4w7', 'swin_t' or 't' to 'video_swin_t' (and so on)."""
    v = variant.strip().lower()
    if v.endswith("_p4w7"):
        v = v[: -len("_p4w7")]
    if v in ("t", "s", "b"):
        v = f"video_swin_{v}"
    if v.startswith("swin_"):
        v = "video_" + v
    if v not in VARIANTS:
        raise ValueError(f"unknown SgMg variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return v


def official_key_specs(variant: str) -> list[tuple[str, tuple[int, ...], str]]:
    """Read the official key list of a variant, in file (state-dict) order.

    Args:
        variant: 'video_swin_t', 'video_swin_s' or 'video_swin_b' (short forms 't', 's', 'b' accepted).

    Returns:
        A list of ``(key, shape, dtype_name)`` tuples, e.g. ``("query_embed.weight", (5, 256), "torch.float32")``.
    """
    path = FIXTURES_DIR / f"sgmg_official_keys_{_normalise_variant(variant)}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"official key list {path} is missing; copy it from the shared reference folder")
    specs: list[tuple[str, tuple[int, ...], str]] = []
    in_list = False
    for line in path.read_text().splitlines():
        if line.startswith(_KEY_LIST_MARKER):
            in_list = True
            continue
        if not in_list or not line.strip() or line.startswith("#"):
            continue
        key, shape_text, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape_text.strip("()").split(",") if s.strip())
        specs.append((key, shape, dtype))
    if not specs:
        raise ValueError(f"{path} has no '{_KEY_LIST_MARKER}' section")
    return specs


def _key_generator(seed: int, key: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
    return g


def _controller_row_scale(n_rows: int) -> torch.Tensor:
    """Per-output-row multiplier for ``controller.layers.2`` (weight rows and bias entries)."""
    n_w0 = _DYN_IN * _DYN_CHANNELS
    n_w1 = _DYN_CHANNELS * _DYN_CHANNELS
    if n_rows != n_w0 + n_w1 + 2 * _DYN_CHANNELS:
        raise ValueError(f"controller output size {n_rows} does not match the official dynamic head (4416)")
    scale = torch.empty(n_rows)
    w0 = torch.full((_DYN_CHANNELS, _DYN_IN), 0.125)  # feature weights -> std ~1/16 after the MLP
    w0[:, _DYN_IN - 2 :] = 0.03  # coordinate weights: relative coords are in raw pixels (tens)
    scale[:n_w0] = w0.flatten()
    scale[n_w0 : n_w0 + n_w1] = 1.0  # 16 -> 16 weights -> std ~0.5
    scale[n_w0 + n_w1 :] = 0.5  # dynamic biases
    return scale


def _generate(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = _key_generator(seed, key)
    z = torch.randn(shape, generator=g, dtype=torch.float32)
    leaf = key.rsplit(".", 1)[-1]
    if key == "query_embed.weight" or key == "transformer.level_embed":
        return z  # N(0, 1), as the official init
    if key.endswith("relative_position_bias_table"):
        return 0.1 * z
    if re.fullmatch(r"class_embed\.\d+\.bias", key):
        return -2.0 + 0.1 * z
    if re.fullmatch(r"class_embed\.\d+\.weight", key):
        return 2.0 * z / math.sqrt(shape[1])  # score logits spread by a few units across queries
    m = re.fullmatch(r"bbox_embed\.(\d+)\.layers\.2\.bias", key)
    if m:
        out = 0.05 * z
        if m.group(1) == "0":
            out[2:] += -1.5  # box width/height start near sigmoid(-1.5) ~ 0.18
        return out
    if key == "controller.layers.2.weight":
        return z / math.sqrt(shape[1]) * _controller_row_scale(shape[0])[:, None]
    if key == "controller.layers.2.bias":
        return 0.1 * z * _controller_row_scale(shape[0])
    if key.endswith("sampling_offsets.bias"):
        return 2.0 * z  # offsets of a few feature-map cells, like the grid init
    if key.endswith("sampling_offsets.weight"):
        return 0.5 * z / math.sqrt(shape[1])
    if re.fullmatch(r"transformer\.decoder\.layers\.\d+\.cross_attn\.output_proj\.weight", key):
        # the 5 queries share the same content (the sentence feature) and differ only through what they sample;
        # a larger cross-attention output makes them differ clearly, so the best query wins by a clear margin
        return 3.0 * z / math.sqrt(shape[1])
    if len(shape) == 1:
        if leaf == "weight":  # LayerNorm / GroupNorm scale
            return 1.0 + 0.1 * z
        return 0.05 * z  # any bias
    fan_in = math.prod(shape[1:])
    return z / math.sqrt(fan_in)


def make_official_state_dict(variant: str, seed: int = 0, text_layers: int | None = None) -> dict[str, torch.Tensor]:
    """Build a random state dict with the exact layout of an official SgMg checkpoint's ``'model'`` entry.

    Args:
        variant: 'video_swin_t', 'video_swin_s' or 'video_swin_b'.
        seed: base seed; each tensor is drawn from its own generator seeded by ``(seed, key)``.
        text_layers: keep only RoBERTa encoder layers ``0..text_layers-1`` (hidden size and vocabulary unchanged);
            ``None`` keeps all 12.

    Returns:
        An ordered dict key -> float32 tensor, in the official key order, without the int64
        ``relative_position_index`` buffers. ``transformer.decoder.bbox_embed.*`` equals ``bbox_embed.*``.
    """
    if text_layers is not None and not 0 <= text_layers <= 12:
        raise ValueError(f"text_layers must be between 0 and 12 (roberta-base has 12 layers), got {text_layers}")
    specs = official_key_specs(variant)
    out: dict[str, torch.Tensor] = {}
    aliases: list[str] = []
    for key, shape, dtype in specs:
        if dtype != "torch.float32":
            continue  # relative_position_index buffers
        m = _TEXT_LAYER_RE.match(key)
        if m and text_layers is not None and int(m.group(1)) >= text_layers:
            continue
        if key.startswith(_ALIAS_PREFIX):
            out[key] = torch.empty(0)  # placeholder keeps the file order; filled below
            aliases.append(key)
            continue
        out[key] = _generate(key, shape, seed)
    for key in aliases:
        out[key] = out[_ALIAS_TARGET + key[len(_ALIAS_PREFIX) :]].clone()
    return out


def roberta_config_kwargs(text_layers: int | None = None) -> dict[str, int | float | str]:
    """Keyword arguments for ``transformers.RobertaConfig`` matching roberta-base (optionally fewer layers)."""
    return {
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12 if text_layers is None else text_layers,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }


def make_parity_video(batch: int, frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """A smooth random video used as the parity input (values lie on the float16 grid, so fp16 storage is exact).

    Coarse noise at 1/8 resolution is upsampled bilinearly and fine noise is added, which gives both low- and
    high-frequency content for the spectral fusion blocks.

    Args:
        batch: number of videos B.
        frames: frames per video T.
        height: frame height H (any size; the model pads it).
        width: frame width W.
        seed: generator seed.

    Returns:
        Float32 tensor ``[B, T, 3, H, W]``, roughly ImageNet-normalised scale (std ~1).
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch * frames, 3, max(1, height // 8), max(1, width // 8), generator=g)
    video = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    video = video + 0.3 * torch.randn(batch * frames, 3, height, width, generator=g)  # [B*T, 3, H, W]
    return video.reshape(batch, frames, 3, height, width).half().float()


def make_parity_tokens(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoBERTa-style token ids (``<s>`` = 0, ``</s>`` = 2, pad = 1) and attention masks, right-padded.

    Args:
        lengths: number of real tokens per sentence, including ``<s>`` and ``</s>`` (each >= 2).
        seed: generator seed.

    Returns:
        ``(input_ids, attention_mask)``, both int64 ``[B, max(lengths)]``.
    """
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    ids = torch.ones(len(lengths), s, dtype=torch.long)
    mask = torch.zeros(len(lengths), s, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = 0
        ids[i, 1 : n - 1] = torch.randint(3, 50000, (n - 2,), generator=g)
        ids[i, n - 1] = 2
        mask[i, :n] = 1
    return ids, mask
