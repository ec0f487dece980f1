"""Frame sources for inference: read a video file, an animated GIF, a folder of frames or a zip of frames in bounded
windows.

Long videos are never decoded whole: :meth:`FrameSource.windows` yields ``uint8 [t, H, W, 3]`` chunks. Inputs from
users are checked when opened (:class:`InvalidVideoError` carries a machine-readable ``code`` besides the message,
which the HTTP service returns as is); a zip is read without extracting it, and an entry with an absolute or ``..``
path, a link, or a non-image name is refused before anything is decoded.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageSequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
GIF_SUFFIXES = (".gif",)
ZIP_SUFFIXES = (".zip",)
DEFAULT_FPS = 25.0


class InvalidVideoError(ValueError):
    """An input that is not a readable video; ``code`` names the problem (``unreadable_video``, ``empty_video``,
    ``unsupported_format``, ``frame_size_mismatch``, ``zip_unsafe_path``, ``zip_link``, ``zip_too_many_entries``,
    ``zip_not_image``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class FrameSource:
    """A video file, GIF, frame folder or zip of frames, opened for windowed reading.

    Attributes:
        path: the file or folder.
        frame_names: one name per frame (file stems for folders and zips, zero-padded indices for video files).
        fps: frames per second (25 for frame folders and zips).
        size: ``(H, W)`` of the frames.
    """

    path: Path
    frame_names: list[str]
    fps: float
    size: tuple[int, int]
    _files: list[Path] | None = None
    _entries: list[str] | None = field(default=None, repr=False)
    kind: str = "video"

    @classmethod
    def open(cls, path: str | Path, *, max_zip_entries: int = 100_000) -> FrameSource:
        """Open ``path``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            InvalidVideoError: not a readable video, GIF, frame folder or zip of frames (``code`` says which way).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"input {str(path)!r} does not exist: give a video file or a folder of frames")
        suffix = path.suffix.lower()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InvalidVideoError(
                    "empty_video", f"folder {str(path)!r} holds no frames ({', '.join(IMAGE_SUFFIXES)} files)"
                )
            with _open_image(files[0].read_bytes, str(files[0])) as im:
                w, h = im.size
            return cls(path, [p.stem for p in files], DEFAULT_FPS, (h, w), files, kind="folder")
        if suffix in ZIP_SUFFIXES:
            return cls._open_zip(path, max_zip_entries)
        if suffix in GIF_SUFFIXES:
            frames, fps = _gif_frames(path)
            return cls(path, _index_names(len(frames)), fps, frames.shape[1:3], kind="gif")
        if suffix not in VIDEO_SUFFIXES:
            raise InvalidVideoError(
                "unsupported_format",
                f"{str(path)!r} is neither a frame folder nor a video "
                f"({', '.join(VIDEO_SUFFIXES + GIF_SUFFIXES + ZIP_SUFFIXES)})",
            )
        reader = _video_reader(path)
        n = len(reader)
        if n == 0:
            raise InvalidVideoError("empty_video", f"video {str(path)!r} has no frames")
        try:
            h, w = reader[0].shape[:2]
        except Exception as exc:  # decord's own DECORDError
            raise InvalidVideoError("unreadable_video", f"cannot decode video {str(path)!r}: {exc}") from exc
        fps = float(reader.get_avg_fps() or DEFAULT_FPS)
        return cls(path, _index_names(n), fps, (h, w))

    @classmethod
    def _open_zip(cls, path: Path, max_entries: int) -> FrameSource:
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                if len(infos) > max_entries:
                    raise InvalidVideoError(
                        "zip_too_many_entries", f"the zip has {len(infos)} entries; at most {max_entries} are allowed"
                    )
                names = [_check_zip_entry(info) for info in infos]
                names = sorted(n for n in names if n is not None)
                if not names:
                    raise InvalidVideoError("empty_video", f"zip {path.name!r} holds no frames")
                with _open_image(lambda: zf.read(names[0]), names[0]) as im:
                    w, h = im.size
        except zipfile.BadZipFile as exc:
            raise InvalidVideoError("unreadable_video", f"{path.name!r} is not a valid zip file: {exc}") from exc
        stems = [PurePosixPath(n).stem for n in names]
        return cls(path, stems, DEFAULT_FPS, (h, w), _entries=names, kind="zip")

    def __len__(self) -> int:
        return len(self.frame_names)

    def windows(self, window: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, frames uint8 [t, H, W, 3])`` for consecutive windows of at most ``window`` frames.

        Raises:
            InvalidVideoError: a frame cannot be decoded or has another size than the first (folders, zips).
        """
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        if self.kind == "gif":
            frames, _ = _gif_frames(self.path)
            for start in range(0, len(frames), window):
                yield start, frames[start : start + window]
            return
        if self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                for start in range(0, len(self), window):
                    names = self._entries[start : start + window]
                    yield start, np.stack([_read_image(lambda n=n: zf.read(n), n, self.size) for n in names])
            return
        reader = None if self._files is not None else _video_reader(self.path)
        for start in range(0, len(self), window):
            stop = min(start + window, len(self))
            if self._files is not None:
                frames = np.stack([_read_image(p.read_bytes, str(p), self.size) for p in self._files[start:stop]])
            else:
                try:
                    frames = reader.get_batch(list(range(start, stop))).asnumpy()
                except Exception as exc:  # decord's own DECORDError
                    raise InvalidVideoError(
                        "unreadable_video", f"cannot decode frames {start}-{stop - 1} of {self.path.name!r}: {exc}"
                    ) from exc
            yield start, frames


def _index_names(n: int) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"{i:0{width}d}" for i in range(n)]


def _check_zip_entry(info: zipfile.ZipInfo) -> str | None:
    """The entry's name when it is a frame, None for folders; raises for unsafe or non-image entries."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise InvalidVideoError("zip_unsafe_path", f"zip entry {name!r} has an absolute or '..' path")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InvalidVideoError("zip_link", f"zip entry {name!r} is a link; only image files are allowed")
    if info.is_dir():
        return None
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidVideoError(
            "zip_not_image", f"zip entry {name!r} is not an image ({', '.join(IMAGE_SUFFIXES)} files only)"
        )
    return name


def _open_image(read, name: str) -> Image.Image:  # read: () -> bytes
    try:
        im = Image.open(io.BytesIO(read()))
        im.load()
        return im
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidVideoError("unreadable_video", f"cannot read frame {name!r}: {exc}") from exc


def _read_image(read, name: str, size: tuple[int, int]) -> np.ndarray:
    with _open_image(read, name) as im:
        arr = np.asarray(im.convert("RGB"))
    if arr.shape[:2] != size:
        h, w = arr.shape[:2]
        raise InvalidVideoError(
            "frame_size_mismatch", f"frame {name!r} is {w}x{h}, but the first frame is {size[1]}x{size[0]}"
        )
    return arr


def _gif_frames(path: Path) -> tuple[np.ndarray, float]:
    """Every frame of an animated GIF as uint8 ``[T, H, W, 3]`` and its frame rate."""
    with _open_image(path.read_bytes, path.name) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        duration_ms = im.info.get("duration") or 0
    if not frames:
        raise InvalidVideoError("empty_video", f"GIF {path.name!r} has no frames")
    return np.stack(frames), (1000.0 / duration_ms if duration_ms > 0 else DEFAULT_FPS)


def _video_reader(path: Path):  # -> decord.VideoReader
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0))
    except Exception as exc:  # decord raises its own DECORDError
        raise InvalidVideoError("unreadable_video", f"cannot decode video {path.name!r}: {exc}") from exc
