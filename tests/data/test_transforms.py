"""Clip sampling and augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sgmg.data.datasets import open_dataset
from sgmg.data.sampler import sample_clip_indices, train_clip
from sgmg.data.schema import ClipSample, Expression
from sgmg.data.transforms import (
    CROP_MAX,
    VIDEO_MAX_SIZE,
    VIDEO_SCALES,
    augment_image,
    augment_video,
    crop,
    hflip,
    masks_to_boxes,
    normalize_frames,
    photometric_distort,
    resize_masks,
    size_for_short_side,
    swap_left_right,
)


def make_sample(t: int = 4, h: int = 60, w: int = 80, text: str = "The dog on the LEFT") -> ClipSample:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((1, t, h, w), bool)
    masks[0, :, 10:20, 5:15] = True
    return ClipSample(frames, masks, text, "v", "0", [f"{i:05d}" for i in range(t)], [1])


def test_sample_clip_indices_follow_the_official_sampler() -> None:
    rng = np.random.default_rng(0)
    reversed_count = 0
    for _ in range(300):
        n, anchor = int(rng.integers(1, 40)), 0
        anchor = int(rng.integers(n))
        idx = sample_clip_indices(n, anchor, 5, rng)
        assert len(idx) == 5 and all(0 <= i < n for i in idx) and anchor in idx
        if idx != sorted(idx):
            assert idx == sorted(idx, reverse=True)
            reversed_count += 1
        if n >= 8:  # neighbours within 1..3 of the anchor, clamped
            s = sorted(idx)
            k = s.index(anchor)
            assert any(1 <= anchor - i <= 3 for i in s[:k]) or anchor <= 3
            assert len(set(idx)) >= 3  # clamped neighbours and the official [min, max) rest may repeat
    assert 0.2 < reversed_count / 300 < 0.4  # p = 0.3
    assert sample_clip_indices(10, 4, 1, np.random.default_rng(0), reverse_prob=0.0) == [4]
    assert len(sample_clip_indices(2, 1, 5, np.random.default_rng(0))) == 5  # short video repeats frames
    with pytest.raises(ValueError):
        sample_clip_indices(3, 3, 5, rng)


def test_swap_left_right_whole_words() -> None:
    assert (
        swap_left_right("the dog on the left, right of the Leftmost car")
        == "the dog on the right, left of the Rightmost car"
    )
    assert swap_left_right("leftover food; copyright; bright LEFT") == "leftover food; copyright; bright RIGHT"
    assert swap_left_right("left-hand side") == "right-hand side"


def test_hflip_mirrors_pixels_masks_and_caption() -> None:
    s = make_sample()
    f = hflip(s)
    np.testing.assert_array_equal(f.frames[:, :, ::-1], s.frames)
    assert f.masks[0, 0, 10:20, 65:75].all() and f.masks.sum() == s.masks.sum()
    assert f.expression == "The dog on the RIGHT"


def test_crop_marks_vanished_objects_invalid() -> None:
    s = make_sample()
    assert crop(s, 0, 0, 60, 40).valid.all()
    assert not crop(s, 30, 30, 30, 50).valid.any()


def test_resize_helpers() -> None:
    assert size_for_short_side((480, 640), 360) == (360, 480)
    assert size_for_short_side((360, 1280), 512, max_size=640) == (180, 640)
    m = np.zeros((1, 4, 4), bool)
    m[0, :2, :2] = True
    np.testing.assert_array_equal(resize_masks(m, (8, 8))[0, :4, :4], True)
    assert resize_masks(m, (8, 8)).sum() == 16


def test_augment_video_is_deterministic_and_within_the_official_sizes() -> None:
    s = make_sample(t=2, h=360, w=640)
    a = augment_video(s, np.random.default_rng(7))
    b = augment_video(s, np.random.default_rng(7))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.masks, b.masks)
    sizes = set()
    for seed in range(12):
        out = augment_video(s, np.random.default_rng(seed))
        h, w = out.frames.shape[1:3]
        sizes.add((h, w))
        assert max(h, w) <= VIDEO_MAX_SIZE and out.frames.dtype == np.uint8
        assert min(h, w) in VIDEO_SCALES or max(h, w) == VIDEO_MAX_SIZE or max(h, w) >= VIDEO_MAX_SIZE - 1
        assert out.masks.shape[-2:] == (h, w)
    assert len(sizes) > 3


def test_photometric_distortion_is_drawn_per_frame() -> None:
    s = make_sample(t=6)
    s.frames[:] = s.frames[0]  # identical frames
    out = photometric_distort(s, np.random.default_rng(3))
    assert len({out.frames[t].tobytes() for t in range(6)}) > 1
    assert out.frames.dtype == np.uint8


def test_augment_image_recipe() -> None:
    s = make_sample(t=1, h=300, w=400)
    for seed in range(10):
        out = augment_image(s, np.random.default_rng(seed))
        assert out.frames.shape[0] == 1 and max(out.frames.shape[1:3]) <= 800


def test_train_clip_on_a_dataset_video(synthetic_root: Path) -> None:
    reader = open_dataset("ref-youtube-vos", synthetic_root, "train")
    rec = reader.list_videos()[0]
    video = reader.load_video(rec).sample(rec.expressions[0])
    clip = train_clip(video, np.random.default_rng(0), num_frames=5)
    assert clip is not None and clip.frames.shape[0] == 5 and clip.valid.any()
    assert clip.expression == video.expression.lower() or "left" in video.expression or "right" in video.expression
    again = train_clip(video, np.random.default_rng(0), num_frames=5)
    np.testing.assert_array_equal(clip.frames, again.frames)
    assert len(clip.meta["frame_indices"]) == 5
    empty = ClipSample(video.frames, np.zeros_like(video.masks), "x", "v", "0", video.frame_ids, [1])
    assert train_clip(empty, np.random.default_rng(0)) is None


def test_referrals_move_with_the_clip_and_their_captions_are_flipped(synthetic_root: Path) -> None:
    """Referrals' masks go through the clip's augmentation with it, their captions are normalised and flipped with
    it, and the random draws are the ones the clip's own expression alone would get."""
    reader = open_dataset("ref-youtube-vos", synthetic_root, "train")
    rec = reader.list_videos()[0]
    video, exp = reader.load_video(rec), rec.expressions[0]
    twin = Expression("twin", "The Same Object, on the LEFT", exp.obj_ids)  # its masks are exp's
    flipped = 0
    for seed in range(8):
        clip = train_clip(video.sample(exp, (twin,)), np.random.default_rng(seed), num_frames=3)
        alone = train_clip(video.sample(exp), np.random.default_rng(seed), num_frames=3)
        own, ref = clip.per_expression()
        np.testing.assert_array_equal(own.frames, alone.frames)
        np.testing.assert_array_equal(own.masks, alone.masks)
        np.testing.assert_array_equal(ref.masks, own.masks)
        assert own.expression == alone.expression and ref.exp_id == "twin"
        assert ref.expression in ("the same object, on the left", "the same object, on the right")
        flipped += ref.expression.endswith("right")
    assert 0 < flipped < 8


def test_masks_to_boxes() -> None:
    m = np.zeros((2, 1, 10, 20), bool)
    m[0, 0, 2:4, 5:15] = True
    boxes = masks_to_boxes(m)
    np.testing.assert_allclose(boxes[0, 0], [10 / 20, 3 / 10, 10 / 20, 2 / 10])
    np.testing.assert_array_equal(boxes[1, 0], 0.0)
    x = normalize_frames(np.full((1, 2, 2, 3), 255, np.uint8))
    assert x.shape == (1, 3, 2, 2)
    torch.testing.assert_close(
        x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
    assert CROP_MAX == 600


def test_clip_dataset_with_dataloader(synthetic_root: Path, tokenizer) -> None:
    from functools import partial

    from sgmg.data.clip_dataset import ClipDataset
    from sgmg.data.collate import collate_clips

    reader = open_dataset("ref-youtube-vos", synthetic_root, "train")
    ds = ClipDataset(reader, num_frames=3, recipe="resize", size=64, max_size=100, seed=1)
    n_exp = sum(len(r.expressions) for r in reader.list_videos())
    assert len(ds) == n_exp * 2  # anchors 0 and 3 of 6-frame videos
    a, b = ds[5], ds[5]
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.frames.shape == (3, 64, 85, 3) and a.valid.any()
    ds.set_epoch(1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=partial(collate_clips, tokenizer=tokenizer))
    batch = next(iter(loader))
    assert batch.video.shape == (2, 3, 3, 64, 96) and len(batch.targets) == 2
    aug = ClipDataset(reader, num_frames=2, recipe="video", seed=0)[0]
    assert max(aug.frames.shape[1:3]) <= 640 and aug.frames.shape[0] == 2


def test_photometric_distortion_matches_the_sequential_recipe() -> None:
    """The vectorised distortion equals brightness -> contrast/saturation -> permutation applied step by step."""
    from sgmg.data.transforms import _apply_photometric, _draw_photometric

    frames = make_sample(t=3, h=20, w=30).frames
    params = [(12.5, 1.1, 0.85, None), (0.0, 1.0, 1.15, (2, 0, 1)), (-20.0, 0.9, 1.0, None)]
    out = _apply_photometric(frames, params)
    for f, o, (delta, c, s, perm) in zip(frames, out, params, strict=True):
        x = np.clip(f.astype(np.float64) + delta, 0, 255) * c  # contrast first
        v = x.max(-1, keepdims=True)
        x = v - s * (v - x)  # then saturation
        ref = np.clip(x, 0, 255)[..., list(perm) if perm else [0, 1, 2]]
        assert np.abs(o.astype(np.float64) - np.floor(ref)).max() <= 1.0  # float32 vs float64 rounding
    draws = [_draw_photometric(np.random.default_rng(s)) for s in range(400)]
    assert 0.4 < np.mean([d[0] != 0 for d in draws]) < 0.6 and all(abs(d[0]) <= 32 for d in draws)
    assert 0.4 < np.mean([d[2] != 1 for d in draws]) < 0.6 and 0.1 < np.mean([d[3] is not None for d in draws]) < 0.3


def test_crop_branch_resamples_once_with_the_official_draws() -> None:
    """random_resize_crop_resize == resize -> crop -> resize (same draws, same output size, nearly the same pixels)."""
    from sgmg.data.transforms import CROP_PRE_SCALES, random_resize, random_resize_crop_resize, random_size_crop

    h, w = 360, 640
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1).astype(np.uint8)  # smooth
    masks = np.zeros((1, 2, h, w), bool)
    masks[0, :, 100:260, 200:420] = True
    s = ClipSample(np.stack([frame, frame[:, ::-1]]), masks, "x", "v", "0", ["0", "1"], [1])
    for seed in range(8):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        fused = random_resize_crop_resize(s, rng_a, VIDEO_SCALES, VIDEO_MAX_SIZE)
        ref = random_resize(random_size_crop(random_resize(s, rng_b, CROP_PRE_SCALES), rng_b), rng_b, VIDEO_SCALES, 640)
        assert rng_a.random() == rng_b.random()  # the same random draws were consumed
        assert fused.frames.shape == ref.frames.shape and fused.masks.shape == ref.masks.shape
        diff = np.abs(fused.frames.astype(int) - ref.frames.astype(int))
        assert diff.mean() < 2.0, (seed, diff.mean())  # < 1 source pixel of shift on a smooth image
        inter = (fused.masks & ref.masks).sum()
        union = (fused.masks | ref.masks).sum()
        assert union == 0 or inter / union > 0.95
