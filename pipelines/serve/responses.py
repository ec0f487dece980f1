"""Answers of ``POST /v1/segment``: per frame a COCO compressed RLE mask, its box and score (JSON), or the masks as
0/255 PNGs in a zip (``<expression index>/<frame index>.png``)."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np

from sgmg.data import rle
from sgmg.eval.common import binary_png_bytes


def mask_box(mask: np.ndarray) -> list[int] | None:
    """``[x0, y0, x1, y1]`` (inclusive pixel bounds) of bool ``[H, W]`` ``mask``; None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def encode_frames(masks: np.ndarray, scores: np.ndarray, first_index: int) -> list[dict[str, Any]]:
    """bool ``[t, H, W]`` masks and ``[t]`` scores -> the JSON frames ``{"index", "score", "box", "mask"}``."""
    return [
        {
            "index": first_index + i,
            "score": float(score),
            "box": mask_box(mask),
            "mask": json_rle,
        }
        for i, (mask, score, json_rle) in enumerate(zip(masks, scores, rle.encode_json(masks), strict=True))
    ]


class PngZipWriter:
    """Builds the ``png_zip`` answer window by window (PNGs are compressed already: entries are stored)."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._zip = zipfile.ZipFile(self._buffer, "w", compression=zipfile.ZIP_STORED)

    def add(self, expression: int, first_index: int, masks: np.ndarray) -> None:
        """Add bool ``[t, H, W]`` masks of ``expression`` as ``<expression>/<frame index>.png`` (0/255)."""
        for i, mask in enumerate(masks):
            self._zip.writestr(f"{expression}/{first_index + i}.png", binary_png_bytes(mask))

    def finish(self) -> bytes:
        """The zip's bytes."""
        self._zip.close()
        return self._buffer.getvalue()
