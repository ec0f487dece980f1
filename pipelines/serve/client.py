"""A small client of the SgMg endpoint that needs neither Ray nor torch (``requests``, numpy and pycocotools).

from pipelines.serve.client import segment
result = segment("http://127.0.0.1:8000", "video.mp4", ["the red car", "the dog on the left"])
result.expressions[0].masks  # bool [T, H, W]
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class SegmentError(RuntimeError):
    """The service refused the request or failed: ``status``, ``code`` and ``message`` from its error answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass
class ExpressionResult:
    """One expression's answer: bool masks ``[T, H, W]``, scores ``[T]`` and boxes (``[x0, y0, x1, y1]`` or None)."""

    text: str
    masks: np.ndarray
    scores: np.ndarray
    boxes: list[list[int] | None] = field(default_factory=list)


@dataclass
class SegmentResult:
    """The whole answer: the model that gave it, the video's description, one result per expression, timings."""

    model: dict[str, Any]
    video: dict[str, Any]
    expressions: list[ExpressionResult]
    timing_ms: dict[str, float]


def decode_mask(mask: dict[str, Any]) -> np.ndarray:
    """``{"size": [H, W], "counts": "<COCO compressed RLE>"}`` -> bool ``[H, W]`` (:func:`sgmg.data.rle.decode`)."""
    from sgmg.data import rle

    return rle.decode(mask)


def segment(
    url: str,
    video: str | Path | bytes | None,
    texts: str | list[str],
    *,
    threshold: float = 0.5,
    video_uri: str | None = None,
    filename: str | None = None,
    timeout: float = 600.0,
    session: Any = None,
) -> SegmentResult:
    """Send ``video`` (a path or the file's bytes; or ``video_uri`` instead) and ``texts`` to ``url``'s
    ``POST /v1/segment`` and decode the masks.

    Raises:
        SegmentError: a 4xx/5xx answer (its code and message).
    """
    body = _post(url, video, texts, threshold, video_uri, filename, "rle", timeout, session)
    results = []
    for item in body["expressions"]:
        frames = item["frames"]
        masks = np.stack([decode_mask(f["mask"]) for f in frames]) if frames else np.zeros((0, 0, 0), bool)
        scores = np.array([f["score"] for f in frames], dtype=np.float32)
        results.append(ExpressionResult(item["text"], masks, scores, [f["box"] for f in frames]))
    return SegmentResult(body["model"], body["video"], results, body["timing_ms"])


def segment_png_zip(
    url: str,
    video: str | Path | bytes | None,
    texts: str | list[str],
    *,
    threshold: float = 0.5,
    video_uri: str | None = None,
    filename: str | None = None,
    timeout: float = 600.0,
    session: Any = None,
) -> list[np.ndarray]:
    """As :func:`segment` with ``return=png_zip``: bool masks ``[T, H, W]`` per expression, read from the PNGs."""
    from PIL import Image

    data = _post(url, video, texts, threshold, video_uri, filename, "png_zip", timeout, session)
    per_expr: dict[int, dict[int, np.ndarray]] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            expr, frame = name.removesuffix(".png").split("/")
            with Image.open(io.BytesIO(zf.read(name))) as im:
                per_expr.setdefault(int(expr), {})[int(frame)] = np.asarray(im) > 127
    return [np.stack([frames[i] for i in sorted(frames)]) for _, frames in sorted(per_expr.items())]


def _post(
    url: str,
    video: str | Path | bytes | None,
    texts: str | list[str],
    threshold: float,
    video_uri: str | None,
    filename: str | None,
    fmt: str,
    timeout: float,
    session: Any,
) -> Any:
    import requests

    texts = [texts] if isinstance(texts, str) else list(texts)
    data: list[tuple[str, str]] = [("text", t) for t in texts]
    data += [("threshold", str(threshold)), ("return", fmt)]
    files = None
    if video_uri is not None:
        data.append(("video_uri", video_uri))
    elif video is not None:
        if isinstance(video, bytes):
            content, name = video, filename or "video.mp4"
        else:
            content, name = Path(video).read_bytes(), filename or Path(video).name
        files = {"video": (name, content, "application/octet-stream")}
    response = (session or requests).post(f"{url.rstrip('/')}/v1/segment", data=data, files=files, timeout=timeout)
    if response.status_code != 200:
        try:
            err = response.json()["error"]
            raise SegmentError(response.status_code, err["code"], err["message"])
        except (ValueError, KeyError, TypeError):
            raise SegmentError(response.status_code, "http_error", response.text[:500]) from None
    return response.json() if fmt == "rle" else response.content
