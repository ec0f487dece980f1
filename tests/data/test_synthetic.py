"""The synthetic generator: determinism, atomic output, and that every sentence describes exactly its object."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from sgmg.cli import main as cli_main
from sgmg.data.datasets import open_dataset
from sgmg.data.synthetic import COLORS, SyntheticConfig, write_synthetic_dataset


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    cfg = SyntheticConfig(train_videos=2, valid_videos=1, frames=4, seed=5)
    a = write_synthetic_dataset(tmp_path / "a", cfg)
    b = write_synthetic_dataset(tmp_path / "b", cfg)
    c = write_synthetic_dataset(tmp_path / "c", SyntheticConfig(train_videos=2, valid_videos=1, frames=4, seed=6))
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    cfg = SyntheticConfig(train_videos=1, valid_videos=0, frames=2, seed=0, mp4=False)
    out = write_synthetic_dataset(tmp_path / "d", cfg)
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic_dataset(out, cfg)
    assert (out / "keep.txt").read_text() == "user data"
    write_synthetic_dataset(out, cfg, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "train/meta.json").exists()
    with pytest.raises(ValueError, match="even"):
        SyntheticConfig(height=33)


def test_cli_make_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        cli_main(
            ["make-synthetic", str(tmp_path / "e"), "--videos", "2", "--seed", "1", "--frames", "3", "--size", "64x96"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "3/3 videos" in err
    rec = open_dataset("ref-youtube-vos", tmp_path / "e", "train").list_videos()[0]
    assert open_dataset("ref-youtube-vos", tmp_path / "e", "train").load_video(rec).frames.shape == (3, 64, 96, 3)
    assert cli_main(["make-synthetic", str(tmp_path / "e")]) == 2  # exists


# ---- recompute every attribute from the decoded frames and masks, then check the sentence picks one object


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = mask.sum() / (h * w)
    if fill > 0.92:
        return "square"
    if fill > 0.68:
        return "circle"
    top = mask[ys.min() : ys.min() + h // 3].sum()
    bottom = mask[ys.max() - h // 3 + 1 : ys.max() + 1].sum()
    return "triangle" if top < 0.6 * bottom else "diamond"


def _attributes(frames: np.ndarray, masks: np.ndarray) -> dict:
    """Attributes of one object from its decoded frames ``[T,H,W,3]`` and masks ``[T,H,W]``."""
    t_, h, w = masks.shape
    areas = masks.reshape(t_, -1).sum(1)
    best = int(np.argmax(areas))
    shape = _shape_of(masks[best])

    def bbox_centre(m: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(m)
        return np.array([(xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h])

    first, last = bbox_centre(masks[0]), bbox_centre(masks[-1])  # objects are unoccluded at both ends
    mx, my = (first + last) / 2  # linear motion: the mean centre is the midpoint
    dx, dy = last - first
    if max(abs(dx), abs(dy)) < 0.05:
        motion = "static"
    elif abs(dx) > abs(dy):
        motion = "left" if dx < 0 else "right"
    else:
        motion = "up" if dy < 0 else "down"
    eroded = masks[best].copy()
    for axis in (0, 1):
        eroded &= np.roll(masks[best], 2, axis) & np.roll(masks[best], -2, axis)
    rgb = frames[best][eroded].mean(0)
    color = min(COLORS, key=lambda c: np.sum((np.asarray(COLORS[c]) - rgb) ** 2))
    size = "small" if areas.max() / min(h, w) ** 2 < 0.05 else "large"
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "motion": motion,
        "hpos": "left" if mx < 0.4 else "right" if mx > 0.6 else None,
        "vpos": "top" if my < 0.4 else "bottom" if my > 0.6 else None,
    }


def _parse(sentence: str) -> dict:
    s = sentence
    want: dict = {}
    m = re.search(r"(moving|going|heading)( to the)? (left|right|up|down)", s)
    if m:
        want["motion"] = m.group(3)
        s = s.replace(m.group(0), "")
    if re.search(r"not moving|standing still|stays still", s):
        want["motion"] = "static"
    if m := re.search(r"on the (left|right)", s):
        want["hpos"] = m.group(1)
    if m := re.search(r"at the (top|bottom)", s):
        want["vpos"] = m.group(1)
    words = s.split()
    for c in COLORS:
        if c in words:
            want["color"] = c
    for shape in ("circle", "square", "triangle", "diamond"):
        if shape in words:
            want["shape"] = shape
    if {"small", "little"} & set(words):
        want["size"] = "small"
    if {"large", "big"} & set(words):
        want["size"] = "large"
    return want


def test_every_sentence_refers_to_exactly_its_object(synthetic_root: Path) -> None:
    checked = 0
    for split in ("train", "valid"):
        reader = open_dataset("ref-youtube-vos", synthetic_root, split)
        for rec in reader.list_videos():
            video = reader.load_video(rec)  # decoded JPEG frames + PNG masks, as a user would read them
            attrs = {o: _attributes(video.frames, video.masks[k]) for k, o in enumerate(video.obj_ids)}
            for exp in rec.expressions:
                want = _parse(exp.text)
                assert want, exp.text
                matching = {o for o, a in attrs.items() if all(a[k] == v for k, v in want.items())}
                assert matching == set(exp.obj_ids), (rec.video_id, exp.text, attrs)
                checked += 1
    assert checked >= 20


def test_distractors_share_attributes(synthetic_root: Path) -> None:
    reader = open_dataset("ref-youtube-vos", synthetic_root, "train")
    shared = occluded = 0
    for rec in reader.list_videos():
        video = reader.load_video(rec)
        areas = video.masks.reshape(*video.masks.shape[:2], -1).sum(-1)  # [O, T]
        occluded += int((areas < 0.9 * areas.max(1, keepdims=True)).any())
        attrs = [_attributes(video.frames, video.masks[k]) for k in range(len(video.obj_ids))]
        shared += any(
            a["color"] == b["color"] or a["shape"] == b["shape"] for i, a in enumerate(attrs) for b in attrs[i + 1 :]
        )
    assert shared >= 1 and occluded >= 1
