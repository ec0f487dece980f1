"""Batching: augmented :class:`~sgmg.data.schema.ClipSample` s -> :class:`~sgmg.data.schema.ClipBatch`.

Also the numpy-column form of a sample (``sample_to_arrays`` / ``arrays_to_sample``) that the Ray pipeline streams, and
``collate_arrays`` for a Ray batch of such columns (``iter_torch_batches(collate_fn=partial(collate_arrays, ...))``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sgmg.data.schema import ClipBatch, ClipSample, Referral, VideoTarget
from sgmg.data.transforms import masks_to_boxes, normalize_caption, normalize_frames

ARRAY_COLUMNS = ("frames", "masks", "expression", "video_id", "exp_id", "frame_ids", "obj_ids", "meta", "referrals")


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m if m > 1 else x


def collate_clips(
    samples: Sequence[ClipSample],
    tokenizer: Any,
    pad_multiple: int = 32,
    normalize_text: bool = True,
    max_text_len: int | None = None,
) -> ClipBatch:
    """Collate samples into a padded, normalised, tokenised batch.

    Frames are ImageNet-normalised and zero-padded at the bottom/right to the largest size rounded up to
    ``pad_multiple`` (32 in training, 16 at inference); ``pad_mask`` is True on padding. Masks are padded the same way;
    boxes (normalised cxcywh of the *unpadded* size) come from the masks. Samples without masks (O = 0, e.g. inference)
    give ``targets=None`` when all samples lack them. A sample with referrals (several expressions over one clip)
    gives one row of ``input_ids``, ``targets`` and ``meta`` per expression and one row of ``video`` for the clip;
    ``video_index`` maps the former to the latter.

    Args:
        samples: clips of the same length T.
        tokenizer: a Hugging Face tokenizer (called with ``padding="longest"``).
        pad_multiple: spatial padding multiple.
        normalize_text: lower-case and collapse whitespace (training, as the official code; False at inference).
        max_text_len: truncate token sequences to this length (None: no truncation).

    Raises:
        ValueError: empty batch, or clips of different lengths.
    """
    if not samples:
        raise ValueError("collate_clips: empty batch")
    lengths = {s.frames.shape[0] for s in samples}
    if len(lengths) != 1:
        raise ValueError(f"collate_clips: clips have different numbers of frames {sorted(lengths)}; sample equal T")
    t = lengths.pop()
    sizes = [s.frames.shape[1:3] for s in samples]
    hp = _round_up(max(h for h, _ in sizes), pad_multiple)
    wp = _round_up(max(w for _, w in sizes), pad_multiple)
    b = len(samples)
    video = torch.zeros(b, t, 3, hp, wp)  # [B, T, 3, H, W]
    pad_mask = torch.ones(b, hp, wp, dtype=torch.bool)  # [B, H, W]
    with_gt = any(s.masks.shape[0] > 0 for s in samples)
    targets: list[VideoTarget] | None = [] if with_gt else None
    meta, texts, video_index = [], [], []
    for i, clip in enumerate(samples):
        h, w = clip.frames.shape[1:3]
        video[i, :, :, :h, :w] = normalize_frames(clip.frames)
        pad_mask[i, :h, :w] = False
        for s in clip.per_expression():  # the clip's own expression, then its referrals
            video_index.append(i)
            texts.append(normalize_caption(s.expression) if normalize_text else s.expression)
            if targets is not None:
                targets.append(_target(s, t, hp, wp))
            meta.append(
                {
                    **s.meta,
                    "video_id": s.video_id,
                    "exp_id": s.exp_id,
                    "frame_ids": list(s.frame_ids),
                    "obj_ids": list(s.obj_ids),
                    "size": (int(h), int(w)),
                    "caption": s.expression,
                }
            )
    tok = tokenizer(
        texts, padding="longest", truncation=max_text_len is not None, max_length=max_text_len, return_tensors="pt"
    )
    return ClipBatch(
        video=video,
        pad_mask=pad_mask,
        input_ids=tok["input_ids"].long(),
        attention_mask=tok["attention_mask"].long(),
        targets=targets,
        meta=meta,
        video_index=torch.tensor(video_index) if len(video_index) > b else None,
    )


def _target(s: ClipSample, t: int, hp: int, wp: int) -> VideoTarget:
    """The training target of a single-expression sample on the ``[hp, wp]`` padded grid."""
    h, w = s.frames.shape[1:3]
    masks = torch.zeros(s.masks.shape[0], t, hp, wp)  # [O, T, H, W]
    masks[:, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(s.masks)).float()
    return VideoTarget(
        masks=masks,
        boxes=torch.from_numpy(masks_to_boxes(s.masks)),  # [O, T, 4]
        valid=torch.from_numpy(np.ascontiguousarray(s.valid)),  # [O, T]
        size=(int(h), int(w)),
    )


def sample_to_arrays(sample: ClipSample) -> dict[str, Any]:
    """One sample as plain numpy/str columns (Ray Data friendly, see :data:`ARRAY_COLUMNS`).

    ``frames`` uint8 ``[T, H, W, 3]``, ``masks`` uint8 ``[O, T, H, W]``, ``frame_ids`` str ``[T]``, ``obj_ids`` int64
    ``[O]``, ``meta`` and ``referrals`` (``[[expression, exp_id, [obj_id, ...]], ...]``) JSON strings; the rest are str.
    """
    return {
        "frames": np.ascontiguousarray(sample.frames, dtype=np.uint8),
        "masks": np.ascontiguousarray(sample.masks, dtype=np.uint8),
        "expression": sample.expression,
        "video_id": sample.video_id,
        "exp_id": sample.exp_id,
        "frame_ids": np.asarray(sample.frame_ids, dtype=str),
        "obj_ids": np.asarray(sample.obj_ids, dtype=np.int64),
        "meta": json.dumps(sample.meta, sort_keys=True, default=str),
        "referrals": json.dumps([[r.expression, r.exp_id, [int(o) for o in r.obj_ids]] for r in sample.referrals]),
    }


def arrays_to_sample(row: Mapping[str, Any]) -> ClipSample:
    """Inverse of :func:`sample_to_arrays` (accepts numpy scalars/bytes as Ray returns them)."""

    def text(v: Any) -> str:
        if isinstance(v, np.ndarray):
            v = v.item()
        return v.decode() if isinstance(v, bytes) else str(v)

    meta, referrals = row.get("meta"), row.get("referrals")
    return ClipSample(
        frames=np.asarray(row["frames"], dtype=np.uint8),
        masks=np.asarray(row["masks"]).astype(bool),
        expression=text(row["expression"]),
        video_id=text(row["video_id"]),
        exp_id=text(row["exp_id"]),
        frame_ids=[text(f) for f in np.asarray(row["frame_ids"]).reshape(-1)],
        obj_ids=[int(o) for o in np.asarray(row["obj_ids"]).reshape(-1)],
        meta=json.loads(text(meta)) if meta is not None else {},
        referrals=tuple(
            Referral(e, x, tuple(int(o) for o in objs)) for e, x, objs in json.loads(text(referrals) or "[]")
        )
        if referrals is not None
        else (),
    )


def batch_to_samples(batch: Mapping[str, Sequence[Any]]) -> list[ClipSample]:
    """A Ray-style column batch ``{column: array of B values}`` -> B samples."""
    n = len(batch["frames"])
    return [arrays_to_sample({k: v[i] for k, v in batch.items()}) for i in range(n)]


def collate_arrays(
    batch: Mapping[str, Sequence[Any]],
    tokenizer: Any,
    pad_multiple: int = 32,
    normalize_text: bool = True,
    max_text_len: int | None = None,
) -> ClipBatch:
    """:func:`collate_clips` over a column batch of :func:`sample_to_arrays` rows."""
    return collate_clips(batch_to_samples(batch), tokenizer, pad_multiple, normalize_text, max_text_len)
