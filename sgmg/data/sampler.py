"""Drawing a training clip in which the referred object is visible: one sampler for every data path.

The official Ref-YouTube-VOS sampler: frame indices around an anchor (:func:`sample_clip_indices`), redrawn at a random
anchor until the referred object(s) show, then the augmentation of a recipe (:data:`RECIPES`). Where frames come from
is passed in (``load(indices) -> ClipSample``): an in-memory video (:func:`train_clip`, ``sgmg train --local``), a
dataset reader decoding only the needed frames (:class:`sgmg.data.clip_dataset.ClipDataset`) or a Parquet shard row
(``pipelines.stream``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from sgmg.data.schema import ClipSample, Expression
from sgmg.data.transforms import (
    EVAL_SHORT_SIDE,
    REVERSE_PROB,
    VIDEO_MAX_SIZE,
    augment_image,
    augment_video,
    map_texts,
    normalize_caption,
    resize_short_side,
)

RECIPES = ("video", "image", "resize", "none")
"""``video``: the official video augmentation (Ref-YouTube-VOS, MeViS, DAVIS); ``image``: RefCOCO's (1-frame clips
repeated); ``resize``: no augmentation, short side ``size`` and long side at most ``max_size``; ``none``: frames and
masks exactly as loaded (caption not normalised)."""


def clip_anchors(num_video_frames: int, num_frames: int) -> list[int]:
    """Anchor frames of the samples of one (video, expression): ``0, num_frames, 2*num_frames, ...``."""
    return list(range(0, num_video_frames, max(1, num_frames)))


def pick_referrals(
    expressions: Sequence[Expression], exp: Expression, count: int, rng: np.random.Generator
) -> tuple[Expression, ...]:
    """Up to ``count`` further expressions of ``exp``'s video to train over the same clip: each refers to another set
    of objects than ``exp`` and than each other (objects drawn uniformly, then one of their expressions), so the clip's
    expressions contrast the video's objects. Draws nothing from ``rng`` when ``count`` is 0."""
    if count <= 0:
        return ()
    own = frozenset(exp.obj_ids)
    by_objects: dict[frozenset[int], list[Expression]] = {}
    for e in expressions:
        if e.obj_ids and frozenset(e.obj_ids) != own:
            by_objects.setdefault(frozenset(e.obj_ids), []).append(e)
    groups = sorted(by_objects.values(), key=lambda g: sorted(g[0].obj_ids))
    picked = rng.permutation(len(groups))[:count]
    return tuple(groups[i][int(rng.integers(len(groups[i])))] for i in picked)


def sample_clip_indices(
    num_video_frames: int,
    anchor: int,
    num_frames: int,
    rng: np.random.Generator,
    reverse_prob: float = REVERSE_PROB,
) -> list[int]:
    """Frame indices of one training clip (the official Ref-YouTube-VOS sampler).

    The anchor, one neighbour 1-3 frames before and one 1-3 after (clamped to the video), and ``num_frames - 3``
    "global" frames drawn without replacement from the frames outside ``[min, max)`` of those (from the whole video
    when too few remain, repeating frames when the video is shorter than the clip); sorted, then reversed with
    probability ``reverse_prob``.

    Raises:
        ValueError: empty video or anchor out of range.
    """
    n = num_video_frames
    if n <= 0 or not 0 <= anchor < n:
        raise ValueError(f"anchor {anchor} out of range for a video of {n} frames")
    idx = [anchor]
    if num_frames != 1:
        before, after = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        idx += [max(0, anchor - before), min(n - 1, anchor + after)]
        if num_frames > 3:
            rest = list(range(min(idx))) + list(range(max(idx), n))
            k = num_frames - len(idx)
            if len(rest) > k:
                idx += [rest[i] for i in rng.choice(len(rest), k, replace=False)]
            elif n >= k:
                idx += [int(i) for i in rng.choice(n, k, replace=False)]
            else:
                idx += [int(i) for i in rng.choice(n, k - n, replace=k - n > n)] + list(range(n))
    idx.sort()
    if rng.random() < reverse_prob:
        idx.reverse()
    return [int(i) for i in idx[:num_frames]]


def take_frames(sample: ClipSample, indices: Sequence[int]) -> ClipSample:
    """The sub-clip at ``indices`` (frames, masks and frame ids)."""
    idx = list(indices)
    return replace(
        sample,
        frames=sample.frames[idx],
        masks=sample.masks[:, idx],
        frame_ids=[sample.frame_ids[i] for i in idx],
        meta={**sample.meta, "frame_indices": idx},
    )


def apply_recipe(
    clip: ClipSample,
    recipe: str,
    rng: np.random.Generator,
    *,
    size: int = EVAL_SHORT_SIDE,
    max_size: int = VIDEO_MAX_SIZE,
) -> ClipSample:
    """The caption normalised (lower case, single spaces; before any flip) and the augmentation of ``recipe``."""
    if recipe == "none":
        return clip
    clip = map_texts(clip, normalize_caption)
    if recipe == "video":
        return augment_video(clip, rng, max_size)
    if recipe == "image":
        return augment_image(clip, rng)
    return resize_short_side(clip, size, max_size)


def sample_clip(
    num_video_frames: int,
    load: Callable[[list[int]], ClipSample],
    rng: np.random.Generator,
    *,
    num_frames: int,
    recipe: str = "video",
    anchor: int | None = None,
    visible: np.ndarray | None = None,
    max_tries: int = 10,
    reverse_prob: float = REVERSE_PROB,
    size: int = EVAL_SHORT_SIDE,
    max_size: int = VIDEO_MAX_SIZE,
) -> ClipSample | None:
    """One training clip with the referred object visible, or None after ``max_tries`` draws.

    Each try draws frame indices around the anchor (``anchor`` on the first try when given, a random frame otherwise;
    the ``image`` recipe repeats the anchor frame), skips the try when the object is not visible in them, loads the
    frames with ``load`` and applies :func:`apply_recipe`; a clip whose augmentation hid the object is redrawn.

    Args:
        num_video_frames: frames of the whole video.
        load: the un-augmented clip at the given frame indices (frames, masks, frame ids, meta).
        rng: the random draws (indices, augmentation).
        num_frames: frames per clip.
        recipe: one of :data:`RECIPES`.
        anchor: the first try's anchor frame (None: random).
        visible: bool ``[T]``, the object is visible in frame t (None: known only after ``load``).
        max_tries: draws before giving up.
        reverse_prob: probability of reversing the clip's frame order.
        size / max_size: the ``resize`` recipe's short side, and the long side cap (``video`` and ``resize``).
    """
    n = num_video_frames
    for attempt in range(max_tries):
        a = int(rng.integers(n)) if anchor is None or attempt > 0 else int(anchor)
        idx = [a] * num_frames if recipe == "image" else sample_clip_indices(n, a, num_frames, rng, reverse_prob)
        if visible is not None and not visible[idx].any():
            continue
        clip = load(idx)
        if visible is None and not clip.valid.any():
            continue
        clip = apply_recipe(clip, recipe, rng, size=size, max_size=max_size)
        if recipe == "none" or clip.valid.any():
            return clip
    return None


def train_clip(
    video: ClipSample,
    rng: np.random.Generator,
    num_frames: int = 5,
    anchor: int | None = None,
    recipe: str = "video",
    max_tries: int = 10,
    reverse_prob: float = REVERSE_PROB,
    max_size: int = VIDEO_MAX_SIZE,
) -> ClipSample | None:
    """One augmented training clip of a whole-video sample (``VideoData.sample(exp)``), or None.

    :func:`sample_clip` over the frames of ``video`` with recipe ``"video"`` or ``"image"``; None means no visible
    clip was found (the caller moves on to another sample), at once when the object never shows.

    Raises:
        ValueError: unknown recipe, or a sample without ground-truth masks.
    """
    if recipe not in ("video", "image"):
        raise ValueError(f"recipe {recipe!r}: expected 'video' or 'image'")
    if video.masks.shape[0] == 0:
        raise ValueError(f"sample {video.video_id}/{video.exp_id} has no ground-truth masks; cannot train on it")
    visible = video.valid.any(0)  # [T]
    if not visible.any():
        return None
    return sample_clip(
        video.frames.shape[0],
        lambda idx: take_frames(video, idx),
        rng,
        num_frames=num_frames,
        recipe=recipe,
        anchor=anchor,
        visible=visible,
        max_tries=max_tries,
        reverse_prob=reverse_prob,
        max_size=max_size,
    )
