"""Shared pieces of the benchmark protocols: the result dataclass, input errors, and mask PNG reading/writing.

Ground-truth readers here are deliberately minimal (PNG folders, palette PNGs, COCO RLE); the full dataset readers
live in :mod:`sgmg.data.datasets`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EvalInputError",
    "EvalResult",
    "atomic_write_bytes",
    "foreground",
    "raise_if_missing",
    "read_label_png",
    "stack_label_pngs",
    "write_binary_png",
]


class EvalInputError(ValueError):
    """A predictions or ground-truth folder/file is missing or malformed; the message names it and the fix."""


@dataclass(frozen=True)
class EvalResult:
    """Scores of one benchmark run.

    Attributes:
        benchmark: ``ref-davis``, ``ref-youtube-vos``, ``mevis`` or ``refcoco``.
        metrics: headline numbers in display order, e.g. ``{"J&F": 0.61, "J": 0.58, "F": 0.64}`` (fractions, not %).
        per_item: scores per scored unit (an object, an expression or a sample), keyed by its name.
        details: benchmark-specific extras (e.g. the metrics of each Ref-DAVIS annotator run).
    """

    benchmark: str
    metrics: dict[str, float]
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return _json_safe(
            {"benchmark": self.benchmark, "metrics": self.metrics, "details": self.details, "per_item": self.per_item}
        )

    def format_table(self) -> str:
        """The headline metrics as a two-row text table (values in %)."""
        names = list(self.metrics)
        cells = [f"{100 * v:.2f}" if math.isfinite(v) else "nan" for v in self.metrics.values()]
        widths = [max(len(n), len(c)) for n, c in zip(names, cells, strict=True)]
        head = "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))
        row = "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        return f"{self.benchmark} ({len(self.per_item)} scored items, values in %)\n{head}\n{row}"

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (temporary file, then rename)."""
        data = (json.dumps(self.to_dict(), indent=2) + "\n").encode()
        return atomic_write_bytes(Path(path), data)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_label_png(path: Path) -> np.ndarray:
    """Pixel values of a mask PNG as an integer ``[H, W]`` array (palette index for 'P' images, value for 'L').

    Raises:
        EvalInputError: the file is missing, unreadable, or not a single-channel/palette image.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise EvalInputError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("1", "L", "P", "I", "I;16"):
                raise EvalInputError(
                    f"{path}: mask PNGs must be palette ('P'), grayscale ('L') or 1-bit images, got mode {mode!r}; "
                    "save masks as 8-bit palette (object ids) or 0/255 grayscale PNGs"
                )
            arr = np.array(im)
    except (OSError, UnidentifiedImageError) as err:
        raise EvalInputError(f"{path}: cannot read the mask PNG ({err})") from err
    if arr.ndim != 2:
        raise EvalInputError(f"{path}: expected a single-channel mask, got an array of shape {arr.shape}")
    return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr


def stack_label_pngs(paths: list[Path], what: str) -> np.ndarray:
    """int ``[T, H, W]`` pixel values of mask PNGs that must all have the same size (``what`` names them in errors)."""
    arrays = [read_label_png(p) for p in paths]
    if not arrays:
        raise EvalInputError(f"{what}: no frames to read")
    sizes = sorted({a.shape for a in arrays})
    if len(sizes) > 1:
        raise EvalInputError(f"{what}: masks have different sizes {sizes} (in {paths[0].parent})")
    return np.stack(arrays)


def raise_if_missing(missing: list[str], what: str, shown: int = 10) -> None:
    """Raise one :class:`EvalInputError` listing (the first ``shown`` of) all ``missing`` files."""
    if missing:
        listed = "\n  ".join(missing[:shown])
        more = f"\n  ... and {len(missing) - shown} more" if len(missing) > shown else ""
        raise EvalInputError(f"{len(missing)} {what} missing:\n  {listed}{more}")


def foreground(labels: np.ndarray) -> np.ndarray:
    """bool mask of the non-zero pixels of a prediction PNG (0/255, 0/1, or a palette whose index 0 is background)."""
    return labels != 0


def binary_png_bytes(mask: np.ndarray) -> bytes:
    """Bool ``[H, W]`` ``mask`` as the bytes of an 8-bit grayscale 0/255 PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_binary_png(path: Path, mask: np.ndarray) -> None:
    """Write bool ``[H, W]`` ``mask`` as an 8-bit grayscale 0/255 PNG, atomically."""
    atomic_write_bytes(path, binary_png_bytes(mask))
