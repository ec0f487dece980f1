"""Frame sources for inference: read a video file or a folder of frames in bounded windows.

Long videos are never decoded whole: :meth:`FrameSource.windows` yields ``uint8 [t, H, W, 3]`` chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class FrameSource:
    """A video file or a frame folder, opened for windowed reading.

    Attributes:
        path: the file or folder.
        frame_names: one name per frame (file stems for folders, zero-padded indices for video files).
        fps: frames per second (25 for frame folders).
        size: ``(H, W)`` of the frames.
    """

    path: Path
    frame_names: list[str]
    fps: float
    size: tuple[int, int]
    _files: list[Path] | None = None

    @classmethod
    def open(cls, path: str | Path) -> FrameSource:
        """Open ``path``; raises ``FileNotFoundError``/``ValueError`` naming the path and what was expected."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"input {str(path)!r} does not exist: give a video file or a folder of frames")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"folder {str(path)!r} holds no frames ({', '.join(IMAGE_SUFFIXES)} files)")
            with Image.open(files[0]) as im:
                w, h = im.size
            return cls(path, [p.stem for p in files], 25.0, (h, w), files)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{str(path)!r} is neither a frame folder nor a video ({', '.join(VIDEO_SUFFIXES)})")
        reader = _video_reader(path)
        n = len(reader)
        if n == 0:
            raise ValueError(f"video {str(path)!r} has no frames")
        h, w = reader[0].shape[:2]
        fps = float(reader.get_avg_fps() or 25.0)
        width = max(5, len(str(n - 1)))
        return cls(path, [f"{i:0{width}d}" for i in range(n)], fps, (h, w), None)

    def __len__(self) -> int:
        return len(self.frame_names)

    def windows(self, window: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, frames uint8 [t, H, W, 3])`` for consecutive windows of at most ``window`` frames."""
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        reader = None if self._files is not None else _video_reader(self.path)
        for start in range(0, len(self), window):
            stop = min(start + window, len(self))
            if self._files is not None:
                frames = np.stack([_read_image(p, self.size) for p in self._files[start:stop]])
            else:
                frames = reader.get_batch(list(range(start, stop))).asnumpy()
            yield start, frames


def _read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise ValueError(f"cannot read frame {str(path)!r}: {exc}") from exc
    if arr.shape[:2] != size:
        h, w = arr.shape[:2]
        raise ValueError(f"frame {str(path)!r} is {w}x{h}, but the first frame is {size[1]}x{size[0]}")
    return arr


def _video_reader(path: Path):  # -> decord.VideoReader
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0))
    except Exception as exc:  # decord raises its own DECORDError
        raise ValueError(f"cannot decode video {str(path)!r}: {exc}") from exc
