"""The boundary of ``POST /v1/segment``: every check of a request before any work, each failure an :class:`ApiError`
with an HTTP status, a stable machine-readable code and a message that says what is wrong and what is expected."""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.serve.settings import URI_SCHEMES, Limits
from sgmg.inference.sources import GIF_SUFFIXES, VIDEO_SUFFIXES, ZIP_SUFFIXES

RETURN_FORMATS = ("rle", "png_zip")
FIELDS = {"video", "video_uri", "text", "threshold", "return"}
# Codes of sgmg.inference.sources.InvalidVideoError that are a size limit, not a malformed input.
_LIMIT_CODES = {"zip_too_many_entries": 413}


class ApiError(Exception):
    """A request the service refuses: ``status`` (4xx, or 5xx for the service's own faults), ``code``, ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """``{"error": {"code", "message"[, "request_id"]}}``."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if request_id:
            err["request_id"] = request_id
        return {"error": err}


@dataclass
class SegmentRequest:
    """A checked request: the video saved to ``video_path`` (a temporary file the caller removes), the expressions,
    the threshold and the answer's format."""

    video_path: Path
    texts: list[str]
    threshold: float
    return_format: str


def check_headers(method: str, content_type: str | None, content_length: str | None, limits: Limits) -> None:
    """Refuse a wrong content type (415) or an announced body over the limit (413) before the body is read."""
    if method != "POST":
        return
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"POST /v1/segment takes multipart/form-data (a 'video' file or 'video_uri', and 'text' fields), got "
            f"{content_type or 'no Content-Type'!r}",
        )
    if content_length is not None:
        try:
            length = int(content_length)
        except ValueError:
            raise ApiError(400, "bad_content_length", f"Content-Length {content_length!r} is not a number") from None
        if length > limits.max_upload_bytes:
            raise ApiError(
                413, "payload_too_large", f"the request has {length} bytes; at most {limits.max_upload_bytes} allowed"
            )


def _one(form: Any, name: str) -> Any:
    values = form.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"duplicate_{name}", f"give at most one '{name}' field, got {len(values)}")
    return values[0] if values else None


def check_fields(form: Any, limits: Limits) -> tuple[list[str], float, str]:
    """The expressions, threshold and answer format of a parsed form (the video is checked by :func:`save_video`)."""
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown form field(s) {unknown}; the fields are {sorted(FIELDS)}")
    texts = form.getlist("text")
    if not texts:
        raise ApiError(400, "missing_text", "give at least one 'text' field: a sentence naming the object to segment")
    if len(texts) > limits.max_expressions:
        raise ApiError(
            400, "too_many_expressions", f"{len(texts)} 'text' fields; at most {limits.max_expressions} per request"
        )
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ApiError(400, "invalid_text", f"'text' field {i} is a file; send each expression as a plain field")
        if not text.strip():
            raise ApiError(400, "empty_text", f"'text' field {i} is empty; give a sentence naming the object")
        if len(text) > limits.max_text_chars:
            raise ApiError(
                400, "text_too_long", f"'text' field {i} has {len(text)} characters; at most {limits.max_text_chars}"
            )
        out.append(text.strip())
    threshold = _one(form, "threshold")
    if threshold is None:
        value = 0.5
    else:
        try:
            value = float(threshold) if isinstance(threshold, str) else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ApiError(400, "invalid_threshold", f"'threshold' must be a number in [0, 1], got {threshold!r}")
    fmt = _one(form, "return")
    fmt = "rle" if fmt is None else fmt
    if fmt not in RETURN_FORMATS:
        raise ApiError(400, "invalid_return", f"'return' must be one of {list(RETURN_FORMATS)}, got {fmt!r}")
    return out, value, fmt


def _suffix(head: bytes, filename: str | None) -> str:
    """A file suffix the frame reader understands: from the content's magic bytes for zips and GIFs, else the upload's
    name (video containers are recognised by their content anyway)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return ZIP_SUFFIXES[0]
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF_SUFFIXES[0]
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ".mp4"


def save_video(form: Any, limits: Limits, folder: Path) -> Path:
    """Write the request's video (the ``video`` part or what ``video_uri`` names) into ``folder``; returns its path."""
    video, uri = _one(form, "video"), _one(form, "video_uri")
    if video is None and uri is None:
        raise ApiError(400, "missing_video", "give a 'video' file part or a 'video_uri' field")
    if video is not None and uri is not None:
        raise ApiError(400, "ambiguous_video", "give either a 'video' file part or a 'video_uri' field, not both")
    if video is not None:
        if isinstance(video, str) or not hasattr(video, "file"):
            raise ApiError(400, "invalid_video", "'video' must be a file part (with a filename), not a text field")
        head = video.file.read(16)
        if not head:
            raise ApiError(400, "empty_video", "the uploaded 'video' file is empty")
        video.file.seek(0)
        path = folder / f"video{_suffix(head, video.filename)}"
        with path.open("wb") as f:
            shutil.copyfileobj(video.file, f, 1 << 20)
        return path
    return _fetch_uri(uri, limits, folder)


def _fetch_uri(uri: Any, limits: Limits, folder: Path) -> Path:
    if not isinstance(uri, str) or not uri.startswith(URI_SCHEMES):
        raise ApiError(400, "invalid_uri_scheme", f"'video_uri' must be an s3:// or file:// URI, got {uri!r}")
    if ".." in uri.split("/") or not any(uri.startswith(p) for p in limits.allowed_uri_prefixes):
        allowed = list(limits.allowed_uri_prefixes) or "none (the service takes uploads only)"
        raise ApiError(403, "uri_not_allowed", f"'video_uri' {uri!r} is outside the allowed prefixes: {allowed}")
    from pipelines import storage

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ApiError(404, "video_not_found", f"nothing at 'video_uri' {uri!r}") from None
    except storage.StorageError as exc:
        raise ApiError(502, "storage_error", f"cannot read 'video_uri' {uri!r}: {exc}") from exc
    if len(data) > limits.max_upload_bytes:
        raise ApiError(413, "payload_too_large", f"{uri!r} has {len(data)} bytes; at most {limits.max_upload_bytes}")
    path = folder / f"video{_suffix(data[:16], uri.rsplit('/', 1)[-1])}"
    path.write_bytes(data)
    return path


def open_source(path: Path, limits: Limits):  # -> sgmg.inference.sources.FrameSource
    """Open the saved video and check its frame count and size against the limits."""
    from sgmg.inference.sources import FrameSource, InvalidVideoError

    try:
        source = FrameSource.open(path, max_zip_entries=limits.max_zip_entries)
    except InvalidVideoError as exc:
        raise ApiError(_LIMIT_CODES.get(exc.code, 400), exc.code, str(exc).replace(str(path.parent), "")) from None
    if len(source) > limits.max_frames:
        raise ApiError(413, "too_many_frames", f"the video has {len(source)} frames; at most {limits.max_frames}")
    h, w = source.size
    if h * w > limits.max_pixels_per_frame:
        raise ApiError(
            413, "frame_too_large", f"frames are {w}x{h} = {h * w} pixels; at most {limits.max_pixels_per_frame}"
        )
    return source


def temp_folder() -> tempfile.TemporaryDirectory:
    """A private temporary folder for one request's files."""
    return tempfile.TemporaryDirectory(prefix="sgmg-request-")
