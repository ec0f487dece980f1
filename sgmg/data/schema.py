"""Data records shared by datasets, transforms, collate, the loss and the Ray pipelines.

Axis legend: T frames, O referred objects of one expression, H W frame size, S tokens.
A *sample* is one (video clip, referring expression) pair, optionally with further expressions of the same video over
the same clip (:class:`Referral`: training with several expressions per clip shares the clip's visual encoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: reading datasets (make-synthetic, validate-dataset) needs no torch
    from torch import Tensor


@dataclass(frozen=True)
class Referral:
    """A further expression of a clip's video, trained over the same (augmented) clip as the sample's own.

    Attributes:
        expression: the referring sentence.
        exp_id: expression id within the video.
        obj_ids: source object ids of the objects it refers to.
    """

    expression: str
    exp_id: str
    obj_ids: tuple[int, ...]

    @classmethod
    def of(cls, exp: Expression) -> Referral:
        """The referral of a dataset :class:`Expression`."""
        return cls(exp.text, exp.exp_id, tuple(exp.obj_ids))


@dataclass
class ClipSample:
    """One (clip, expression) pair, as read from disk, before augmentation.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB frames.
        masks: bool ``[O, T, H, W]`` masks of the referred object(s) (O >= 1; MeViS can refer to several); with
            ``referrals``, the rows of each referral's objects follow, in order (``[O + sum O_r, T, H, W]``), so that
            every augmentation moves all of them with the frames.
        expression: the referring sentence.
        video_id: source video id.
        exp_id: expression id within the video.
        frame_ids: names of the frames (e.g. ``"00005"``), length T.
        obj_ids: source object ids of the O referred objects.
        meta: free-form provenance (dataset name, split, file names).
        referrals: further expressions of the video over this clip (training with several expressions per clip).
    """

    frames: np.ndarray
    masks: np.ndarray
    expression: str
    video_id: str
    exp_id: str
    frame_ids: list[str]
    obj_ids: list[int]
    meta: dict = field(default_factory=dict)
    referrals: tuple[Referral, ...] = ()

    @property
    def valid(self) -> np.ndarray:
        """bool ``[O, T]``: the object is visible in the frame (the sample's own expression's objects)."""
        own = self.masks[: len(self.obj_ids)] if self.referrals else self.masks
        return own.reshape(own.shape[0], own.shape[1], -1).any(-1)

    def per_expression(self) -> list[ClipSample]:
        """One single-expression sample per expression of the clip (the own one first); frames are shared, masks are
        row slices (views, no copy). ``[self]`` without referrals."""
        if not self.referrals:
            return [self]
        parts, start = [], 0
        for text, exp_id, obj_ids in [(self.expression, self.exp_id, tuple(self.obj_ids))] + [
            (r.expression, r.exp_id, r.obj_ids) for r in self.referrals
        ]:
            end = start + len(obj_ids)
            parts.append(
                replace(
                    self,
                    masks=self.masks[start:end],
                    expression=text,
                    exp_id=exp_id,
                    obj_ids=list(obj_ids),
                    referrals=(),
                )
            )
            start = end
        if start != self.masks.shape[0]:
            raise ValueError(
                f"{self.video_id}/{self.exp_id}: masks has {self.masks.shape[0]} rows, the expressions' objects {start}"
            )
        return parts


@dataclass
class VideoTarget:
    """Training target of one video in a batch.

    Attributes:
        masks: float ``[O, T, H, W]`` in {0, 1}, on the *padded* input grid of the batch.
        boxes: float ``[O, T, 4]`` (cx, cy, w, h) normalised by the unpadded size ``size``; zeros where invisible.
        valid: bool ``[O, T]`` the object is visible in the frame.
        size: ``(h, w)`` the unpadded input size.
    """

    masks: Tensor
    boxes: Tensor
    valid: Tensor
    size: tuple[int, int]


@dataclass
class ClipBatch:
    """A collated batch, ready for ``model(video, input_ids, attention_mask)``.

    Attributes:
        video: float ``[B, T, 3, H, W]`` ImageNet-normalised, zero-padded at the bottom/right to a common size.
        pad_mask: bool ``[B, H, W]``, True at padding.
        input_ids: long ``[B, S]`` token ids from the text encoder's tokenizer.
        attention_mask: long ``[B, S]``, 1 at real tokens.
        targets: one :class:`VideoTarget` per video, or None at inference.
        meta: one dict per video (video_id, exp_id, frame_ids, original size, ...).
        video_index: long ``[N]``, the clip (row of ``video``) each of the N expressions refers to, when clips carry
            several expressions (then ``input_ids``, ``attention_mask``, ``targets`` and ``meta`` have N rows);
            None: one expression per clip (N = B).
    """

    video: Tensor
    pad_mask: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    targets: list[VideoTarget] | None = None
    meta: list[dict] = field(default_factory=list)
    video_index: Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> ClipBatch:
        """Move every tensor to ``device``."""

        def mv(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        targets = None
        if self.targets is not None:
            targets = [VideoTarget(mv(t.masks), mv(t.boxes), mv(t.valid), t.size) for t in self.targets]
        return ClipBatch(
            mv(self.video),
            mv(self.pad_mask),
            mv(self.input_ids),
            mv(self.attention_mask),
            targets,
            self.meta,
            None if self.video_index is None else mv(self.video_index),
        )


@dataclass(frozen=True)
class Expression:
    """A referring expression and the object(s) it refers to."""

    exp_id: str
    text: str
    obj_ids: tuple[int, ...]


@dataclass(frozen=True)
class VideoRecord:
    """Cheap, picklable description of one video of a dataset (no pixels): what ``list_videos`` returns.

    Attributes:
        dataset: format name (``ref-youtube-vos``, ``ref-davis``, ``refcoco``, ``mevis``, ``videos``).
        split: split name (``train``, ``valid``, ...).
        video_id: video id (for RefCOCO: the image/ref id; a 1-frame video).
        frame_ids: frame names in temporal order.
        expressions: every expression of the video.
        source: format-specific locators (relative paths of the video file, frame folder, annotation files).
    """

    dataset: str
    split: str
    video_id: str
    frame_ids: tuple[str, ...]
    expressions: tuple[Expression, ...]
    source: tuple[tuple[str, str], ...] = ()


@dataclass
class VideoData:
    """Decoded pixels of one video with the masks of all its annotated objects: what ``load_video`` returns.

    Attributes:
        record: the :class:`VideoRecord` it was decoded from.
        frames: uint8 ``[T, H, W, 3]`` RGB.
        obj_ids: ids of the O annotated objects.
        masks: bool ``[O, T, H, W]`` per-object masks (all False where an object is absent or unannotated).
        has_gt: False for splits without ground truth (then ``masks`` has O = 0).
    """

    record: VideoRecord
    frames: np.ndarray
    obj_ids: list[int]
    masks: np.ndarray
    has_gt: bool = True

    def sample(self, exp: Expression, also: tuple[Expression, ...] = ()) -> ClipSample:
        """The (clip, expression) sample of ``exp`` over all frames of the video, with the expressions ``also`` as
        its referrals (their objects' masks stacked after ``exp``'s)."""
        exps = (exp, *also) if self.has_gt else ()
        index = [self.obj_ids.index(o) for e in exps for o in e.obj_ids]
        t, h, w = self.frames.shape[:3]
        masks = self.masks[index] if index else np.zeros((0, t, h, w), dtype=bool)
        return ClipSample(
            frames=self.frames,
            masks=masks,
            expression=exp.text,
            video_id=self.record.video_id,
            exp_id=exp.exp_id,
            frame_ids=list(self.record.frame_ids),
            obj_ids=list(exp.obj_ids),
            meta={"dataset": self.record.dataset, "split": self.record.split},
            referrals=tuple(Referral.of(e) for e in exps[1:]),
        )
