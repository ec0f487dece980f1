"""Dataset readers for the real R-VOS formats: ``open_dataset(fmt, root, split) -> DatasetReader``.

Formats: ``ref-youtube-vos``, ``ref-davis`` (raw DAVIS + text files, or the Ref-YouTube-VOS-style conversion),
``refcoco`` (RefCOCO/+/g as 1-frame videos), ``mevis``, ``videos`` (a folder of mp4 files or frame folders + sentences).
Each reader lists cheap picklable :class:`~sgmg.data.schema.VideoRecord` s and decodes one video at a time into a
:class:`~sgmg.data.schema.VideoData`.
"""

from __future__ import annotations

import os

from sgmg.data.datasets.base import DatasetReader
from sgmg.data.datasets.davis import RawDavisReader
from sgmg.data.datasets.mevis import MevisReader
from sgmg.data.datasets.refcoco import RefCocoReader
from sgmg.data.datasets.videos import VideoFolderReader
from sgmg.data.datasets.ytvos import RefYouTubeVOSReader
from sgmg.data.io import DataError, FileSource, as_source

FORMATS = ("ref-youtube-vos", "ref-davis", "refcoco", "mevis", "videos")


def detect_format(root: str | os.PathLike | FileSource) -> str:
    """Guess the format of a dataset folder from its top-level entries.

    Raises:
        DataError: nothing recognisable (the message lists what each format expects).
    """
    source = as_source(root)
    names = set(source.list_dir(""))
    if "DAVIS" in names and "davis_text_annotations" in names:
        return "ref-davis"
    if "meta_expressions" in names:
        return "ref-youtube-vos"
    if any(source.exists(f"{s}/meta_expressions.json") for s in names):
        return "mevis"
    if any(n in names for n in ("refcoco", "refcoco+", "refcocog")):
        return "refcoco"
    if "expressions.json" in names or "expressions.csv" in names:
        return "videos"
    raise DataError(
        f"cannot tell the format of {source.describe('')}: expected meta_expressions/ (ref-youtube-vos), "
        "DAVIS/ + davis_text_annotations/ (ref-davis), <split>/meta_expressions.json (mevis), refcoco*/ (refcoco) "
        "or expressions.json|csv (videos); pass the format explicitly"
    )


def open_dataset(fmt: str, root: str | os.PathLike | FileSource, split: str = "train") -> DatasetReader:
    """Open one split of a dataset.

    Args:
        fmt: one of :data:`FORMATS`, or ``"auto"`` to detect it from the folder.
        root: dataset root folder (path or ``file://`` URI) or any :class:`~sgmg.data.io.FileSource`.
        split: ``train``/``valid``/... (``refcoco``: ``"<name>/<split>"``, e.g. ``"refcocog/val"``, or
            ``"all/train"`` for the three together; ``videos``: a label).

    Raises:
        ValueError: unknown format or split.
        DataError: the root does not exist.
    """
    source = as_source(root)
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt == "ref-youtube-vos":
        return RefYouTubeVOSReader(source, split)
    if fmt == "ref-davis":
        if source.exists("DAVIS") and source.exists("davis_text_annotations"):
            return RawDavisReader(source, split)
        return RefYouTubeVOSReader(source, split, dataset_name="ref-davis")
    if fmt == "refcoco":
        return RefCocoReader(source, split)
    if fmt == "mevis":
        return MevisReader(source, split)
    if fmt == "videos":
        return VideoFolderReader(source, split)
    raise ValueError(f"unknown dataset format {fmt!r}: expected one of {FORMATS} or 'auto'")


__all__ = [
    "FORMATS",
    "DatasetReader",
    "MevisReader",
    "RawDavisReader",
    "RefCocoReader",
    "RefYouTubeVOSReader",
    "VideoFolderReader",
    "detect_format",
    "open_dataset",
]
