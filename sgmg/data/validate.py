"""Dataset validation: find every problem of a dataset folder at once, each naming its file.

Checks, per split: the metadata parses (malformed JSON, missing files, wrong structure), every listed frame exists and
decodes, all frames of a video have one size, every mask decodes and matches its frame's size, every object id an
expression refers to appears in the masks of its video, expressions of annotated splits name their objects, and video
files decode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from sgmg.data.datasets import FORMATS, DatasetReader, detect_format, open_dataset
from sgmg.data.io import DataError, FileSource, as_source, read_json


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found.

    Attributes:
        format: the dataset format checked.
        problems: one message per problem, each naming the file (empty: the dataset is valid).
        videos: number of videos checked (each once, whatever copies it has).
        expressions: number of expressions checked.
        splits: the splits checked.
        copies: video files checked that are copies of videos already counted (``videos/<split>/*.mp4`` beside a
            Ref-YouTube-VOS split).
    """

    format: str
    problems: list[str] = field(default_factory=list)
    videos: int = 0
    expressions: int = 0
    splits: list[str] = field(default_factory=list)
    copies: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def default_splits(fmt: str, source: FileSource) -> list[str]:
    """The splits present in a dataset folder."""
    if fmt == "ref-youtube-vos" or (fmt == "ref-davis" and source.exists("meta_expressions")):
        return [
            s
            for s in source.list_dir("meta_expressions")
            if source.exists(f"meta_expressions/{s}/meta_expressions.json")
        ]
    if fmt == "ref-davis":
        return ["train", "valid"]
    if fmt == "mevis":
        return [s for s in source.list_dir("") if source.exists(f"{s}/meta_expressions.json")]
    if fmt == "refcoco":
        return [f"{n}/train" for n in ("refcoco", "refcoco+", "refcocog") if source.exists(n)]
    return ["test"]


def check_reader(
    reader: DatasetReader,
    report: ValidationReport,
    progress: Callable[[int, int], None] | None = None,
    *,
    copies: bool = False,
) -> None:
    """Append every problem of one opened split to ``report``.

    ``copies``: the reader holds other encodings of videos already counted (the ``videos/<split>/*.mp4`` copies of a
    Ref-YouTube-VOS folder): their problems are reported, but they count as :attr:`ValidationReport.copies`, not as
    more videos and expressions.
    """
    try:
        records = reader.list_videos(problems=report.problems)
    except DataError as err:
        report.problems.append(str(err))
        return
    for k, record in enumerate(records):
        if copies:
            report.copies += 1
        else:
            report.videos += 1
            report.expressions += len(record.expressions)
        try:
            video = reader.load_video(record)
        except DataError as err:
            report.problems.append(str(err))
            continue
        finally:
            if progress is not None:
                progress(k + 1, len(records))
        if not video.has_gt:
            continue
        where = f"{record.dataset}/{record.split} video {record.video_id!r}"
        visible = {o: bool(video.masks[i].any()) for i, o in enumerate(video.obj_ids)}
        for exp in record.expressions:
            if not exp.obj_ids:
                report.problems.append(
                    f"{where}: expression {exp.exp_id!r} names no object (obj_id) although the "
                    "split has ground-truth masks"
                )
            for o in exp.obj_ids:
                if not visible.get(o, False):
                    hint = " (0 is the background label; object ids start at 1)" if o == 0 else ""
                    report.problems.append(
                        f"{where}: expression {exp.exp_id!r} ({exp.text!r}) refers to object {o}, "
                        f"which appears in none of the video's masks{hint}"
                    )


def validate_dataset(
    root: str | os.PathLike | FileSource,
    fmt: str = "auto",
    splits: list[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ValidationReport:
    """Check a dataset folder and report every problem at once.

    Args:
        root: dataset folder or :class:`~sgmg.data.io.FileSource`.
        fmt: one of :data:`~sgmg.data.datasets.FORMATS` or ``"auto"``.
        splits: splits to check (default: all present).
        progress: called as ``progress(split, done, total)`` after every video.

    Returns:
        The report (``report.ok`` when nothing was found). A root that does not exist or whose format cannot be
        told is reported as a problem, not raised.
    """
    try:
        source = as_source(root)
        fmt = detect_format(source) if fmt == "auto" else fmt
    except DataError as err:
        return ValidationReport(format=fmt, problems=[str(err)])
    if fmt not in FORMATS:
        return ValidationReport(format=fmt, problems=[f"unknown format {fmt!r}: expected one of {FORMATS}"])
    report = ValidationReport(format=fmt)
    split_list = splits or default_splits(fmt, source)
    if not split_list:
        report.problems.append(f"{source.describe('')}: no split found for format {fmt}")
    for split in split_list:
        report.splits.append(split)
        if fmt in ("ref-youtube-vos", "ref-davis") and source.exists(f"{split}/meta.json"):
            try:
                read_json(source, f"{split}/meta.json")
            except DataError as err:
                report.problems.append(str(err))
        try:
            reader = open_dataset(fmt, source, split)
        except (ValueError, DataError) as err:
            report.problems.append(str(err))
            continue
        cb = None if progress is None else (lambda d, t, s=split: progress(s, d, t))
        check_reader(reader, report, cb)
        # the synthetic set (and any Ref-YouTube-VOS folder with them) may carry mp4 copies under videos/<split>
        if fmt == "ref-youtube-vos" and source.exists(f"videos/{split}"):
            sub = _SubSource(source, f"videos/{split}")
            vreader = open_dataset("videos", sub, split)
            check_reader(vreader, report, None, copies=True)
    return report


class _SubSource:
    """A :class:`FileSource` view of a sub-folder of another source."""

    def __init__(self, source: FileSource, prefix: str) -> None:
        self.source, self.prefix = source, prefix.strip("/")

    def _rel(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def read_bytes(self, rel: str) -> bytes:
        return self.source.read_bytes(self._rel(rel))

    def list_dir(self, rel: str) -> list[str]:
        return self.source.list_dir(self._rel(rel))

    def exists(self, rel: str) -> bool:
        return self.source.exists(self._rel(rel))

    def is_dir(self, rel: str) -> bool:
        fn = getattr(self.source, "is_dir", None)
        return bool(fn(self._rel(rel))) if fn else bool(self.list_dir(rel))

    def describe(self, rel: str) -> str:
        return self.source.describe(self._rel(rel))
