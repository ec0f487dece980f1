"""A map-style ``torch.utils.data.Dataset`` of training clips for one-process training (``sgmg train --local``).

Items are the official sampler's ``(video, expression, anchor)`` triples (anchors every ``num_frames`` frames). An item
decodes only the frames its clip needs, then augments them; when the referred object is invisible in the augmented clip,
another item is drawn at random, as the official Ref-YouTube-VOS dataset does. Deterministic for a given
``(seed, epoch, index)``. Clips are drawn by :func:`sgmg.data.sampler.sample_clip`, as in the Ray pipeline.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from sgmg.data.datasets.base import DatasetReader
from sgmg.data.sampler import RECIPES, clip_anchors, pick_referrals, sample_clip
from sgmg.data.schema import ClipSample, VideoRecord
from sgmg.data.transforms import EVAL_SHORT_SIDE, REVERSE_PROB, VIDEO_MAX_SIZE


class ClipDataset(torch.utils.data.Dataset):
    """Training clips of one dataset split.

    Args:
        reader: an opened split (``sgmg.data.open_dataset(...)``) with ground truth.
        num_frames: frames per clip.
        recipe: one of :data:`sgmg.data.sampler.RECIPES`: ``"video"`` (official video augmentation), ``"image"``
            (RefCOCO recipe), ``"resize"`` (no augmentation: short side ``size``, long side at most ``max_size``; quick
            CPU runs) or ``"none"``.
        seed: base seed; item ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i, attempt])`` (its referrals
            from a generator of their own).
        size: short side of the ``"resize"`` recipe.
        max_size: cap on the long side.
        reverse_prob: probability of reversing a clip's frame order (official: 0.3).
        max_tries: items tried before giving up (then ``RuntimeError``).
        expressions_per_clip: the clip's own expression and up to this many minus one expressions of other objects
            of its video (:func:`sgmg.data.sampler.pick_referrals`) as referrals; 1: official.

    Raises:
        ValueError: unknown recipe, or a split without ground truth / without any referred object.
    """

    def __init__(
        self,
        reader: DatasetReader,
        num_frames: int = 5,
        recipe: str = "video",
        seed: int = 0,
        size: int = EVAL_SHORT_SIDE,
        max_size: int = VIDEO_MAX_SIZE,
        reverse_prob: float = REVERSE_PROB,
        max_tries: int = 20,
        expressions_per_clip: int = 1,
    ) -> None:
        if recipe not in RECIPES:
            raise ValueError(f"recipe {recipe!r}: expected one of {RECIPES}")
        self.reader = reader
        self.num_frames = num_frames
        self.recipe = recipe
        self.seed = seed
        self.size = size
        self.max_size = max_size
        self.reverse_prob = reverse_prob
        self.max_tries = max_tries
        self.expressions_per_clip = expressions_per_clip
        self.epoch = 0
        self.records: list[VideoRecord] = reader.list_videos()
        self.items: list[tuple[int, int, int]] = [
            (r, e, a)
            for r, rec in enumerate(self.records)
            for e, exp in enumerate(rec.expressions)
            if exp.obj_ids
            for a in clip_anchors(len(rec.frame_ids), num_frames)
        ]
        if not self.items:
            raise ValueError(f"{reader!r} has no expression with an object id to train on (a split without GT?)")

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _try(self, index: int, rng: np.random.Generator) -> ClipSample | None:
        r, e, anchor = self.items[index]
        record, exp = self.records[r], self.records[r].expressions[e]
        # the referrals from a generator of their own: the clip's draws stay as they are
        referral_rng = np.random.default_rng([self.seed, self.epoch, index, 1 << 20])
        also = pick_referrals(record.expressions, exp, self.expressions_per_clip - 1, referral_rng)

        def load(idx: list[int]) -> ClipSample:
            uniq = sorted(set(idx))
            sample = self.reader.load_video(record, frame_indices=uniq).sample(exp, also)
            pos = [uniq.index(i) for i in idx]
            return replace(
                sample,
                frames=sample.frames[pos],
                masks=sample.masks[:, pos],
                frame_ids=[record.frame_ids[i] for i in idx],
                meta={**sample.meta, "frame_indices": idx, "epoch": self.epoch},
            )

        return sample_clip(
            len(record.frame_ids),
            load,
            rng,
            num_frames=self.num_frames,
            recipe=self.recipe,
            anchor=anchor,
            max_tries=1,
            reverse_prob=self.reverse_prob,
            size=self.size,
            max_size=self.max_size,
        )

    def __getitem__(self, index: int) -> ClipSample:
        """The augmented clip of item ``index`` (or of a random other item when that one shows no object)."""
        for attempt in range(self.max_tries):
            rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
            i = index if attempt == 0 else int(rng.integers(len(self.items)))
            clip = self._try(i, rng)
            if clip is not None:
                return clip
        raise RuntimeError(f"no clip with a visible object after {self.max_tries} tries from item {index}")
