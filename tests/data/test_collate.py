"""Collate: padding, normalisation, targets, tokenisation, several expressions per clip, and the numpy-column round
trip."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sgmg.data.collate import arrays_to_sample, collate_arrays, collate_clips, sample_to_arrays
from sgmg.data.sampler import pick_referrals
from sgmg.data.schema import ClipSample, Expression, Referral
from sgmg.data.transforms import normalize_frames


def sample(h: int, w: int, text: str, o: int = 1, t: int = 2) -> ClipSample:
    rng = np.random.default_rng(h * w)
    frames = rng.integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((o, t, h, w), bool)
    if o:
        masks[0, 0, 1:5, 2:8] = True  # visible in frame 0 only
    return ClipSample(frames, masks, text, f"v{h}", "0", [f"{i:05d}" for i in range(t)], list(range(1, o + 1)))


def test_collate_pads_normalises_and_builds_targets(tokenizer) -> None:
    a, b = sample(40, 50, "The  RED   car"), sample(30, 70, "a dog on the left")
    batch = collate_clips([a, b], tokenizer, pad_multiple=32)
    assert batch.video.shape == (2, 2, 3, 64, 96)
    assert batch.pad_mask.shape == (2, 64, 96)
    assert not batch.pad_mask[0, :40, :50].any() and batch.pad_mask[0, 40:].all() and batch.pad_mask[0, :, 50:].all()
    torch.testing.assert_close(batch.video[0, :, :, :40, :50], normalize_frames(a.frames))
    assert (batch.video[0, :, :, 40:] == 0).all()
    t0 = batch.targets[0]
    assert t0.masks.shape == (1, 2, 64, 96) and t0.size == (40, 50)
    assert t0.valid.tolist() == [[True, False]]
    torch.testing.assert_close(t0.boxes[0, 0], torch.tensor([5 / 50, 3 / 40, 6 / 50, 4 / 40]))
    assert (t0.boxes[0, 1] == 0).all()
    # captions lower-cased and whitespace-normalised; padding="longest"
    expected = tokenizer(["the red car", "a dog on the left"], padding="longest", return_tensors="pt")
    torch.testing.assert_close(batch.input_ids, expected["input_ids"])
    torch.testing.assert_close(batch.attention_mask, expected["attention_mask"])
    assert batch.meta[1]["video_id"] == "v30" and batch.meta[1]["size"] == (30, 70)
    moved = batch.to("cpu")
    assert moved.targets[0].masks.shape == t0.masks.shape


def test_collate_inference_and_errors(tokenizer) -> None:
    batch = collate_clips([sample(20, 20, "X", o=0)], tokenizer, pad_multiple=16, normalize_text=False)
    assert batch.targets is None and batch.video.shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="different numbers of frames"):
        collate_clips([sample(20, 20, "x", t=2), sample(20, 20, "x", t=3)], tokenizer)
    with pytest.raises(ValueError, match="empty batch"):
        collate_clips([], tokenizer)


def test_arrays_round_trip_and_column_batches(tokenizer) -> None:
    s = sample(24, 36, "a cat", o=2)
    s.meta = {"dataset": "x", "frame_indices": [3, 1]}
    row = sample_to_arrays(s)
    assert row["frames"].dtype == np.uint8 and row["masks"].dtype == np.uint8 and isinstance(row["meta"], str)
    back = arrays_to_sample(row)
    np.testing.assert_array_equal(back.frames, s.frames)
    np.testing.assert_array_equal(back.masks, s.masks)
    assert (back.expression, back.video_id, back.frame_ids, back.obj_ids, back.meta) == (
        s.expression,
        s.video_id,
        s.frame_ids,
        s.obj_ids,
        s.meta,
    )
    rows = [sample_to_arrays(sample(24, 36, "a cat")), sample_to_arrays(sample(30, 20, "b"))]
    columns = {k: np.array([r[k] for r in rows] if k not in ("frames", "masks") else None) for k in rows[0]}
    for k in ("frames", "masks"):  # variable-shaped tensors arrive as object arrays
        columns[k] = np.empty(2, dtype=object)
        columns[k][:] = [r[k] for r in rows]
    batch = collate_arrays(columns, tokenizer)
    assert batch.video.shape == (2, 2, 3, 32, 64) and len(batch.targets) == 2


def with_referrals(h: int = 32, w: int = 40, t: int = 2) -> ClipSample:
    """A clip of objects 1, 2 and 3 referred to by its own expression (object 1) and two referrals (2; 2 and 3)."""
    base = sample(h, w, "the red car", o=1, t=t)
    masks = np.zeros((4, t, h, w), bool)
    masks[0, 0, 1:5, 2:8] = True  # object 1, frame 0
    masks[1, 1, 10:20, 10:30] = True  # object 2, frame 1
    masks[2] = masks[1]
    masks[3, :, 0:3, 0:3] = True  # object 3, both frames
    refs = (Referral("a BLUE bus", "1", (2,)), Referral("both  vans", "2", (2, 3)))
    return replace(base, masks=masks, referrals=refs)


def test_several_expressions_per_clip_share_one_video_row(tokenizer) -> None:
    clip, plain = with_referrals(), sample(32, 40, "a dog")
    parts = clip.per_expression()
    assert [(p.expression, p.exp_id, p.obj_ids, p.masks.shape[0]) for p in parts] == [
        ("the red car", "0", [1], 1),
        ("a BLUE bus", "1", [2], 1),
        ("both  vans", "2", [2, 3], 2),
    ]
    assert clip.valid.tolist() == [[True, False]]  # the clip's own expression's object
    batch = collate_clips([clip, plain], tokenizer, pad_multiple=32)
    assert batch.video.shape[0] == 2 and batch.video_index.tolist() == [0, 0, 0, 1]
    assert batch.input_ids.shape[0] == 4 and len(batch.targets) == 4 and len(batch.meta) == 4
    torch.testing.assert_close(batch.video[0, :, :, :32, :40], normalize_frames(clip.frames))
    expected = tokenizer(["the red car", "a blue bus", "both vans", "a dog"], padding="longest", return_tensors="pt")
    torch.testing.assert_close(batch.input_ids, expected["input_ids"])
    assert [t.valid.tolist() for t in batch.targets[:3]] == [
        [[True, False]],
        [[False, True]],
        [[False, True], [True, True]],
    ]
    assert batch.targets[2].masks[1, 0, :3, :3].all() and batch.meta[2]["obj_ids"] == [2, 3]
    assert batch.to("cpu").video_index.tolist() == [0, 0, 0, 1]
    assert collate_clips([plain], tokenizer).video_index is None  # one expression per clip: as before
    back = arrays_to_sample(sample_to_arrays(clip))
    assert back.referrals == clip.referrals
    np.testing.assert_array_equal(back.masks, clip.masks)
    with pytest.raises(ValueError, match="masks has 3 rows"):
        replace(clip, masks=clip.masks[:3]).per_expression()


def test_pick_referrals_contrasts_other_objects() -> None:
    exps = [
        Expression("0", "red car", (1,)),
        Expression("1", "the car", (1,)),
        Expression("2", "bus", (2,)),
        Expression("3", "blue bus", (2,)),
        Expression("4", "van", (3,)),
        Expression("5", "no object", ()),
    ]
    rng = np.random.default_rng(0)
    for _ in range(20):
        picked = pick_referrals(exps, exps[0], 2, rng)
        objects = [e.obj_ids for e in picked]
        assert len(picked) == 2 and sorted(objects) == [(2,), (3,)]
    assert len(pick_referrals(exps, exps[0], 5, rng)) == 2  # as many as there are other objects
    state = rng.bit_generator.state
    assert pick_referrals(exps, exps[0], 0, rng) == () and rng.bit_generator.state == state  # draws nothing
    assert pick_referrals(exps[:2], exps[0], 2, rng) == ()  # one object only
