"""The SgMg training augmentations, as pure functions of ``(sample, numpy Generator)`` (clip sampling is in
:mod:`sgmg.data.sampler`).

Facts from the official SgMg code (``datasets/ytvos.py``, ``datasets/transforms_video.py``,
``datasets/transforms_image.py``, ``datasets/refexp.py``; github.com/bo-miao/SgMg), written anew:

* video recipe (``augment_video``): RandomSelect(p=0.5) of ``resize(short in VIDEO_SCALES, max 640)`` and
  ``resize(short in {400,500,600}) -> random size crop [384, 600] -> resize(short in VIDEO_SCALES, max 640)``, then a
  horizontal flip (p=0.5) that swaps left/right words in the caption, then photometric distortion drawn per frame;
* image recipe (``augment_image``, RefCOCO as 1-frame clips): flip first, then RandomSelect of
  ``resize(short in 480..768, max 800)`` and ``resize({400,500,600}) -> crop [384,600] -> resize(296..512, max 640)``;
  no photometric distortion;
* evaluation: short side 360 (``resize_short_side``).

Deliberate differences, each a fix of an official quirk:

* the caption flip swaps whole words (``left``/``right``, ``leftmost``/``rightmost``, ...), not substrings, so
  "leftover" stays as it is;
* visibility after a crop is read from the cropped masks (the official ``Check`` uses the cropped box, which can keep an
  object whose box overlaps the crop while none of its pixels do); boxes are tight boxes of the final masks with the
  pixel-edge convention ``x2 = last column + 1``;
* the photometric distortion clips to [0, 255] before the uint8 cast (the official cast of out-of-range floats wraps);
* the crop branch resamples once (``random_resize_crop_resize``: same random draws and window, one resize from the
  source pixels instead of resize -> crop -> resize), which is sharper and ~3x cheaper.

Frames stay uint8 ``[T, H, W, 3]`` and masks bool ``[O, T, H, W]`` throughout, so samples are 4x smaller when streamed;
ImageNet normalisation (``normalize_frames``) and boxes (``masks_to_boxes``) are computed at collate time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from sgmg.data.schema import ClipSample

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VIDEO_SCALES = (288, 320, 352, 392, 416, 448, 480, 512)
VIDEO_MAX_SIZE = 640
CROP_PRE_SCALES = (400, 500, 600)
CROP_MIN, CROP_MAX = 384, 600
IMAGE_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768)
IMAGE_MAX_SIZE = 800
IMAGE_FINAL_SCALES = (296, 328, 360, 392, 416, 448, 480, 512)
EVAL_SHORT_SIDE = 360
REVERSE_PROB = 0.3

_CHANNEL_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_FLIP_WORDS = {
    "left": "right",
    "leftmost": "rightmost",
    "leftwards": "rightwards",
    "leftward": "rightward",
    "lefthand": "righthand",
}
_FLIP_WORDS.update({v: k for k, v in list(_FLIP_WORDS.items())})
_FLIP_RE = re.compile(r"\b(" + "|".join(sorted(_FLIP_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------- geometry


def size_for_max_side(hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``(h, w)`` scaled so that the longest side is at most ``max_side`` (never upscaled)."""
    h, w = hw
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def size_for_short_side(hw: tuple[int, int], short: int, max_size: int | None = None) -> tuple[int, int]:
    """``(h, w)`` with the short side ``short`` (reduced so the long side stays <= ``max_size``), aspect kept.

    Same rounding as the DETR-family ``get_size_with_aspect_ratio`` the official code uses (long side truncated).
    """
    h, w = hw
    if max_size is not None:
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * short > max_size:
            short = int(round(max_size * lo / hi))
    if (w <= h and w == short) or (h <= w and h == short):
        return h, w
    if w < h:
        return int(short * h / w), short
    return short, int(short * w / h)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of uint8 ``[T, H, W, 3]`` frames to ``size = (h, w)``.

    torch's uint8 antialiased bilinear kernel (what torchvision's ``resize`` uses on tensors); it matches PIL's bilinear
    resize (the official code's path) to within rounding and measured ~4x faster than PIL on 720p frames.
    """
    import torch  # lazily: dataset listing and validation need no torch

    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    x = torch.from_numpy(np.require(frames, np.uint8, ["C", "W"])).permute(
        0, 3, 1, 2
    )  # [T, 3, H, W] (channels-last memory)
    y = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(y.permute(0, 2, 3, 1).numpy())  # [T, h, w, 3]


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[..., H, W]`` masks/labels to ``size = (h, w)`` (pixel-centre sampling)."""
    h, w = size
    in_h, in_w = masks.shape[-2:]
    if (in_h, in_w) == (h, w):
        return masks
    rows = np.minimum(((np.arange(h) + 0.5) * in_h / h).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * in_w / w).astype(np.int64), in_w - 1)
    # two 1-D takes: ~10x faster than one 2-D fancy index (masks[..., rows[:, None], cols]) and the same result
    return np.take(np.take(masks, rows, axis=-2), cols, axis=-1)


def resize_sample(sample: ClipSample, size: tuple[int, int]) -> ClipSample:
    """Resize frames (bilinear) and masks (nearest) of a sample to ``size = (h, w)``."""
    return replace(sample, frames=resize_frames(sample.frames, size), masks=resize_masks(sample.masks, size))


def resize_short_side(sample: ClipSample, short: int = EVAL_SHORT_SIDE, max_size: int | None = None) -> ClipSample:
    """Deterministic resize to a short side (evaluation: 360, with ``max_size=640`` for images)."""
    return resize_sample(sample, size_for_short_side(sample.frames.shape[1:3], short, max_size))


def random_resize(
    sample: ClipSample, rng: np.random.Generator, scales: Sequence[int], max_size: int | None = None
) -> ClipSample:
    """Resize to a short side drawn uniformly from ``scales`` (the official ``RandomResize``)."""
    short = int(scales[rng.integers(len(scales))])
    return resize_sample(sample, size_for_short_side(sample.frames.shape[1:3], short, max_size))


def crop(sample: ClipSample, top: int, left: int, height: int, width: int) -> ClipSample:
    """Crop frames and masks to the window ``[top:top+height, left:left+width]``."""
    return replace(
        sample,
        frames=sample.frames[:, top : top + height, left : left + width],
        masks=sample.masks[..., top : top + height, left : left + width],
    )


def _draw_crop_window(
    img_hw: tuple[int, int], rng: np.random.Generator, min_size: int = CROP_MIN, max_size: int = CROP_MAX
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random window with sides in ``[min_size, min(side, max_size)]``."""
    img_h, img_w = img_hw
    w = int(rng.integers(min(min_size, img_w), min(img_w, max_size) + 1))
    h = int(rng.integers(min(min_size, img_h), min(img_h, max_size) + 1))
    top = int(rng.integers(0, img_h - h + 1))
    left = int(rng.integers(0, img_w - w + 1))
    return top, left, h, w


def random_size_crop(
    sample: ClipSample, rng: np.random.Generator, min_size: int = CROP_MIN, max_size: int = CROP_MAX
) -> ClipSample:
    """Crop a random window with sides in ``[min_size, min(side, max_size)]`` at a random place (same for all frames).

    Objects cropped away become invisible (``sample.valid`` is computed from the cropped masks).
    """
    return crop(sample, *_draw_crop_window(sample.frames.shape[1:3], rng, min_size, max_size))


def random_resize_crop_resize(
    sample: ClipSample, rng: np.random.Generator, scales: Sequence[int], max_size: int | None = None
) -> ClipSample:
    """The crop branch of the recipes: ``resize(short in CROP_PRE_SCALES) -> random_size_crop -> resize(short in
    scales, max_size)``, resampled once.

    The random draws (and their order) are those of the three steps; the window drawn in the intermediate image is
    mapped back to the source pixels (edges rounded to the nearest source pixel, under one source pixel of shift) and
    that region is resized straight to the final size. The official code resizes twice: the first resize upsamples
    the frames stored at 640 (a short side of 400-600 from 360) and the second shrinks them again, which blurs them
    and costs ~3x the work of one resize.
    """
    src_h, src_w = sample.frames.shape[1:3]
    short = int(CROP_PRE_SCALES[rng.integers(len(CROP_PRE_SCALES))])
    mid_h, mid_w = size_for_short_side((src_h, src_w), short)
    top, left, h, w = _draw_crop_window((mid_h, mid_w), rng)
    short = int(scales[rng.integers(len(scales))])
    size = size_for_short_side((h, w), short, max_size)
    y0, y1 = round(top * src_h / mid_h), round((top + h) * src_h / mid_h)
    x0, x1 = round(left * src_w / mid_w), round((left + w) * src_w / mid_w)
    y0, x0 = min(y0, src_h - 1), min(x0, src_w - 1)
    return resize_sample(crop(sample, y0, x0, max(y1 - y0, 1), max(x1 - x0, 1)), size)


def swap_left_right(text: str) -> str:
    """Swap left/right words (whole words only, case kept): "the left dog" -> "the right dog"; "leftover" unchanged."""

    def sub(m: re.Match) -> str:
        word = m.group(0)
        new = _FLIP_WORDS[word.lower()]
        if word.isupper():
            return new.upper()
        if word[0].isupper():
            return new.capitalize()
        return new

    return _FLIP_RE.sub(sub, text)


def map_texts(sample: ClipSample, fn: Callable[[str], str]) -> ClipSample:
    """``sample`` with ``fn`` applied to its expression and to those of its referrals."""
    referrals = tuple(replace(r, expression=fn(r.expression)) for r in sample.referrals)
    return replace(sample, expression=fn(sample.expression), referrals=referrals)


def hflip(sample: ClipSample) -> ClipSample:
    """Mirror frames and masks left-right and swap left/right words in the expression(s)."""
    flipped = replace(sample, frames=_flip_last(sample.frames, axis=2), masks=_flip_last(sample.masks, axis=-1))
    return map_texts(flipped, swap_left_right)


def _flip_last(x: np.ndarray, axis: int) -> np.ndarray:
    """Contiguous copy of ``x`` reversed along ``axis`` (``torch.flip``: ~6x faster than numpy on ``[T, H, W, 3]``)."""
    import torch

    return torch.flip(torch.from_numpy(np.ascontiguousarray(x)), [axis % x.ndim]).numpy()


# ----------------------------------------------------------------------------------------------------- photometric


def _draw_photometric(rng: np.random.Generator) -> tuple[float, float, float, tuple[int, int, int] | None]:
    """One frame's photometric parameters ``(brightness delta, contrast, saturation, channel permutation)``.

    The random draws (and their order) of the official ``PhotometricDistort``: brightness (p=0.5), then contrast
    before or after saturation (p=0.5 each, each applied with p=0.5), then a channel permutation with p=0.2. A skipped
    step has the identity value (0, 1, 1, None).
    """
    delta = float(rng.uniform(-32.0, 32.0)) if rng.integers(2) else 0.0
    contrast_first = bool(rng.integers(2))
    draws = []
    for _ in range(2):  # contrast then saturation, or saturation then contrast
        draws.append(float(rng.uniform(0.8, 1.2)) if rng.integers(2) else 1.0)
    contrast, saturation = draws if contrast_first else draws[::-1]
    perm = _CHANNEL_PERMS[rng.integers(len(_CHANNEL_PERMS))] if rng.random() < 0.2 else None
    return delta, contrast, saturation, perm


def _apply_photometric(frames: np.ndarray, params: Sequence[tuple]) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` (any strides) -> distorted contiguous uint8 ``[T, H, W, 3]``, frame ``t`` with
    ``params[t]`` from :func:`_draw_photometric`.

    Contrast (``x * c``) and saturation (``V - s * (V - x)``, ``V`` the channel max) commute (the max of ``c * x`` is
    ``c * V``), so both orders are ``c * s * x + c * (1 - s) * V``: one multiply-add per frame, in float32.
    """
    out = np.empty(frames.shape, np.uint8)
    for i, (delta, c, s, perm) in enumerate(params):  # frame by frame: the float32 copy stays in cache
        x = frames[i].astype(np.float32)  # [H, W, 3]
        if delta:
            x += np.float32(delta)
            np.clip(x, 0.0, 255.0, out=x)
        if s != 1.0:
            v = np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])  # [H, W]
            v *= np.float32(c * (1.0 - s))
            x *= np.float32(c * s)
            for k in range(3):  # channel by channel: numpy's broadcast over a last axis of 3 is ~4x slower
                x[..., k] += v
        elif c != 1.0:
            x *= np.float32(c)
        np.clip(x, 0.0, 255.0, out=x)
        if perm is None:
            out[i] = x  # uint8 cast truncates, as astype(np.uint8)
        else:
            for k in range(3):  # a fancy-indexed x[..., perm] copy costs ~3x more
                out[i, ..., k] = x[..., perm[k]]
    return out


def photometric_distort_frame(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD-style photometric distortion of one uint8 ``[H, W, 3]`` frame (the official ``PhotometricDistort``).

    Brightness +-32 (p=0.5), then contrast x[0.8, 1.2] (p=0.5) before or after (p=0.5 each) saturation x[0.8, 1.2]
    (p=0.5, in HSV: ``c' = V - s * (V - c)`` with ``V`` the channel max, exactly what scaling S does), hue disabled,
    then a random channel permutation with p=0.2.
    """
    return _apply_photometric(frame[None], [_draw_photometric(rng)])[0]


def photometric_distort(sample: ClipSample, rng: np.random.Generator) -> ClipSample:
    """Photometric distortion drawn independently for every frame (parameters drawn first, then one fused pass)."""
    params = [_draw_photometric(rng) for _ in range(sample.frames.shape[0])]
    return replace(sample, frames=_apply_photometric(sample.frames, params))


# ----------------------------------------------------------------------------------------------------- recipes


def augment_video(sample: ClipSample, rng: np.random.Generator, max_size: int = VIDEO_MAX_SIZE) -> ClipSample:
    """The SgMg video training transform (see the module docstring); expects a normalised caption."""
    if rng.random() < 0.5:
        sample = random_resize(sample, rng, VIDEO_SCALES, max_size)
    else:
        sample = random_resize_crop_resize(sample, rng, VIDEO_SCALES, max_size)
    if rng.random() < 0.5:
        sample = hflip(sample)
    return photometric_distort(sample, rng)


def augment_image(sample: ClipSample, rng: np.random.Generator) -> ClipSample:
    """The RefCOCO pretraining transform for 1-frame clips (see the module docstring)."""
    if rng.random() < 0.5:
        sample = hflip(sample)
    if rng.random() < 0.5:
        return random_resize(sample, rng, IMAGE_SCALES, IMAGE_MAX_SIZE)
    return random_resize_crop_resize(sample, rng, IMAGE_FINAL_SCALES, VIDEO_MAX_SIZE)


def normalize_caption(text: str) -> str:
    """Lower-case and collapse whitespace (training captions, as the official datasets do)."""
    return " ".join(text.lower().split())


# ----------------------------------------------------------------------------------------------------- targets


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """float32 ``[..., 4]`` boxes ``(cx, cy, w, h)`` normalised by the mask size from bool ``[..., H, W]`` masks.

    Tight boxes with the pixel-edge convention (a single pixel at column ``x`` spans ``[x, x+1)``); zeros for empty
    masks.
    """
    h, w = masks.shape[-2:]
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, h, w)
    rows = flat.any(2)  # [N, H]
    cols = flat.any(1)  # [N, W]
    visible = rows.any(1)
    y1 = rows.argmax(1)
    y2 = h - rows[:, ::-1].argmax(1)
    x1 = cols.argmax(1)
    x2 = w - cols[:, ::-1].argmax(1)
    boxes = np.stack([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h], axis=1)
    boxes[~visible] = 0.0
    return boxes.astype(np.float32).reshape(*lead, 4)


def normalize_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> ImageNet-normalised float32 ``[T, 3, H, W]``."""
    import torch

    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float().div_(255.0)  # [T, 3, H, W]
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
