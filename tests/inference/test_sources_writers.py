"""Frame sources (video files, frame folders) and prediction writers, on real files written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgmg.inference.sources import FrameSource
from sgmg.inference.writers import OverlayVideoWriter, overlay, write_mask_png


def _frames(t: int = 7, h: int = 48, w: int = 64) -> np.ndarray:
    # smooth gradients that change per frame: video codecs keep them (random noise would not survive yuv420)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 20 * i)], axis=-1) for i in range(t)]
    return np.stack(frames).astype(np.uint8)


def test_frame_folder_windows_cover_every_frame_in_order(tmp_path: Path) -> None:
    frames = _frames()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i:05d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    src = FrameSource.open(tmp_path)
    assert len(src) == 7 and src.size == (48, 64) and src.frame_names[0] == "00000"
    got = list(src.windows(3))
    assert [s for s, _ in got] == [0, 3, 6] and [len(w) for _, w in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([w for _, w in got]), frames)


def test_video_file_is_read_in_windows(tmp_path: Path) -> None:
    frames = _frames(t=10)
    writer = OverlayVideoWriter(tmp_path / "clip.mp4", fps=10, size=frames.shape[1:3])
    for f in frames:
        writer.write(f, np.zeros(f.shape[:2], dtype=bool))
    writer.close()
    src = FrameSource.open(tmp_path / "clip.mp4")
    assert len(src) == 10 and src.size == (48, 64) and src.fps == pytest.approx(10.0)
    chunks = [w for _, w in src.windows(4)]
    assert [len(c) for c in chunks] == [4, 4, 2] and chunks[0].dtype == np.uint8
    # lossy codec: the decoded frames are close to what was written, not equal
    assert np.abs(chunks[0][0].astype(int) - frames[0].astype(int)).mean() < 12


def test_bad_inputs_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        FrameSource.open(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="holds no frames"):
        FrameSource.open(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a frame folder nor a video"):
        FrameSource.open(tmp_path / "x.txt")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        FrameSource.open(tmp_path / "broken.mp4")
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "0.png")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(folder / "1.png")
    with pytest.raises(ValueError, match="1.png"):
        list(FrameSource.open(folder).windows(2))


def test_mask_png_is_0_255_and_atomic(tmp_path: Path) -> None:
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:3, 2:5] = True
    write_mask_png(tmp_path / "a" / "00000.png", mask)
    arr = np.asarray(Image.open(tmp_path / "a" / "00000.png"))
    assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 255}
    np.testing.assert_array_equal(arr == 255, mask)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["00000.png"]


def test_overlay_only_changes_masked_pixels() -> None:
    frame = np.full((4, 4, 3), 100, dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    out = overlay(frame, mask)
    assert not np.array_equal(out[0, 0], frame[0, 0])
    np.testing.assert_array_equal(out[1:], frame[1:])
