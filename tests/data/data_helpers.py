"""Helpers shared by the data tests (tiny fixture folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def labels_video(t: int = 3, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Frames and label maps of a tiny 2-object video: object 1 moves right, object 2 sits bottom-right."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)
    labels = np.zeros((t, h, w), np.uint8)
    for k in range(t):
        labels[k, 2:8, 2 + 3 * k : 8 + 3 * k] = 1
        labels[k, 14:20, 20:28] = 2
    return frames, labels


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
