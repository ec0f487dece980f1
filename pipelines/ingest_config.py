"""What an ingest job writes: :class:`IngestConfig` (hashed into the manifest), its errors and allowed values.

Kept apart from :mod:`pipelines.ingest` (pyarrow, Ray Data) so ``sgmg ingest`` can read and check its settings
(:mod:`pipelines.ingest_cli`) before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

FORMATS = ("ref-youtube-vos", "ref-davis", "refcoco", "mevis", "videos")
FRAME_CODECS = ("jpeg", "png")


class IngestError(RuntimeError):
    """The ingest job cannot start or failed (bad config, conflicting destination, too many bad videos)."""


@dataclass(frozen=True)
class IngestConfig:
    """What determines the content of the shards (hashed into ``config_hash``).

    Attributes:
        source: dataset root URI.
        dest: output folder URI.
        format: dataset format, one of :data:`FORMATS`.
        split: split to ingest.
        max_side: frames are resized so their longest side is at most this (never upscaled); None keeps the size.
        shard_size: videos per shard.
        frame_codec: ``jpeg`` (compact, lossy) or ``png`` (lossless).
        jpeg_quality: JPEG quality when ``frame_codec`` is ``jpeg``.
        max_bad_fraction: the job fails when more than this fraction of the videos is quarantined.
        limit: ingest only the first ``limit`` videos (sorted by id); None for all.
    """

    source: str
    dest: str
    format: str = "ref-youtube-vos"
    split: str = "train"
    max_side: int | None = 640
    shard_size: int = 32
    frame_codec: str = "jpeg"
    jpeg_quality: int = 90
    max_bad_fraction: float = 0.05
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise IngestError(f"unknown --format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.frame_codec not in FRAME_CODECS:
            raise IngestError(f"unknown frame codec {self.frame_codec!r}; expected one of {', '.join(FRAME_CODECS)}")
        if self.shard_size < 1:
            raise IngestError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.max_side is not None and self.max_side < 16:
            raise IngestError(f"--max-side must be >= 16 (or omitted), got {self.max_side}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise IngestError(f"--max-bad-fraction must be in [0, 1], got {self.max_bad_fraction}")
        if not 1 <= self.jpeg_quality <= 100:
            raise IngestError(f"--jpeg-quality must be in [1, 100], got {self.jpeg_quality}")

    def content_key(self) -> dict:
        """The fields that determine shard contents (``dest`` and the failure threshold do not)."""
        d = asdict(self)
        d.pop("dest")
        d.pop("max_bad_fraction")
        return d

    def config_hash(self) -> str:
        """sha256 (16 hex digits) of :meth:`content_key`."""
        return hashlib.sha256(json.dumps(self.content_key(), sort_keys=True).encode()).hexdigest()[:16]
