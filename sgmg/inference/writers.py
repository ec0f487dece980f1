"""Writers for predictions: one PNG mask per frame and an overlay video.

PNG masks are 8-bit grayscale with values 0/255 (the Ref-YouTube-VOS submission convention), written by
:func:`sgmg.eval.common.write_binary_png` to a temporary name and renamed, so an interrupted run never leaves a
truncated mask behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sgmg.eval.common import write_binary_png

OVERLAY_COLOR = np.array([255, 64, 32], dtype=np.float32)


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write bool ``[H, W]`` ``mask`` to ``path`` as a 0/255 grayscale PNG, atomically (the submission format)."""
    write_binary_png(Path(path), mask)


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour over uint8 ``[H, W, 3]`` ``frame`` where bool ``[H, W]`` ``mask`` is set."""
    out = frame.astype(np.float32)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * OVERLAY_COLOR
    return out.clip(0, 255).astype(np.uint8)


class OverlayVideoWriter:
    """Encodes frames with their mask overlaid into an H.264 mp4 (PyAV), frame by frame.

    Args:
        path: output ``.mp4``; written to a temporary name and renamed by :meth:`close`.
        fps: frame rate.
        size: ``(H, W)`` of the frames (odd sizes are padded by one pixel for the encoder).
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self._container = av.open(str(self._tmp), mode="w")
        rate = max(1, round(fps))
        self._stream = self._container.add_stream("libx264", rate=rate)
        h, w = size
        self._stream.height, self._stream.width = h + h % 2, w + w % 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray, mask: np.ndarray) -> None:
        """Append uint8 ``[H, W, 3]`` ``frame`` with bool ``[H, W]`` ``mask`` overlaid."""
        import av

        img = overlay(frame, mask)
        pad_h, pad_w = self._stream.height - img.shape[0], self._stream.width - img.shape[1]
        if pad_h or pad_w:
            img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and move the file to its final name."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)
