"""The reader interface shared by every dataset format, and helpers the readers have in common."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from sgmg.data.io import DataError, FileSource, decode_image, decode_index_png, join
from sgmg.data.schema import VideoData, VideoRecord
from sgmg.data.transforms import resize_frames, resize_masks, size_for_max_side


class DatasetReader(ABC):
    """Reads one split of one dataset through a :class:`~sgmg.data.io.FileSource`.

    Readers are picklable (they hold the source and small caches that are dropped when pickled), so a Ray task can
    receive one and call :meth:`load_video` on records listed elsewhere.
    """

    format: str = ""

    def __init__(self, source: FileSource, split: str) -> None:
        self.source = source
        self.split = split

    @abstractmethod
    def list_videos(self, problems: list[str] | None = None) -> list[VideoRecord]:
        """Describe every video of the split (metadata only, no pixels).

        Args:
            problems: when given, inconsistencies in the metadata are appended to it (each naming its file) and the
                offending entry is skipped; when None they raise.

        Raises:
            DataError: the split's metadata is missing or malformed (always), or an entry is inconsistent
                (only when ``problems`` is None).
        """

    @abstractmethod
    def load_video(
        self, record: VideoRecord, max_side: int | None = None, frame_indices: Sequence[int] | None = None
    ) -> VideoData:
        """Decode one video's frames and the masks of all its annotated objects.

        Args:
            record: a record returned by :meth:`list_videos`.
            max_side: when given, frames are resized (bilinear) so that their longest side is at most ``max_side``,
                masks with nearest neighbour; never upscaled.
            frame_indices: positions in ``record.frame_ids`` to decode (all when None); the returned record keeps
                all frame ids, ``VideoData.frames`` holds the selected ones in the given order.

        Raises:
            DataError: a file is missing, unreadable or inconsistent (the message lists every such file of the video).
        """

    def __getstate__(self) -> dict:
        # caches (parsed annotation files) are rebuilt lazily after unpickling
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, split={self.split!r})"


def source_dict(record: VideoRecord) -> dict[str, str]:
    """``record.source`` as a dict."""
    return dict(record.source)


def select_indices(record: VideoRecord, frame_indices: Sequence[int] | None) -> list[int]:
    """Validated frame positions to decode."""
    n = len(record.frame_ids)
    if frame_indices is None:
        return list(range(n))
    idx = [int(i) for i in frame_indices]
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise ValueError(f"frame_indices {bad} out of range for video {record.video_id!r} with {n} frames")
    return idx


def read_frames(source: FileSource, paths: Sequence[str], errors: list[str]) -> list[np.ndarray | None]:
    """Decode image files, appending one message per unreadable file to ``errors`` (its slot is None)."""
    out: list[np.ndarray | None] = []
    for rel in paths:
        try:
            out.append(decode_image(source.read_bytes(rel), source.describe(rel)))
        except DataError as err:
            errors.append(str(err))
            out.append(None)
    return out


def read_label_maps(source: FileSource, paths: Sequence[str | None], errors: list[str]) -> list[np.ndarray | None]:
    """Decode annotation PNGs (None path: no annotation for that frame), appending messages for bad files."""
    out: list[np.ndarray | None] = []
    for rel in paths:
        if rel is None:
            out.append(None)
            continue
        try:
            out.append(decode_index_png(source.read_bytes(rel), source.describe(rel)))
        except DataError as err:
            errors.append(str(err))
            out.append(None)
    return out


def check_sizes(
    source: FileSource,
    frames: Sequence[np.ndarray | None],
    frame_paths: Sequence[str],
    masks: Sequence[np.ndarray | None],
    mask_paths: Sequence[str | None],
    errors: list[str],
) -> None:
    """Append a message for every frame whose size differs from the first frame and every mask unlike its frame."""
    ref = next((f.shape[:2] for f in frames if f is not None), None)
    for f, rel in zip(frames, frame_paths, strict=True):
        if f is not None and ref is not None and f.shape[:2] != ref:
            errors.append(
                f"frame {source.describe(rel)} is {f.shape[1]}x{f.shape[0]} (WxH), the video's first frame "
                f"is {ref[1]}x{ref[0]}"
            )
    for f, m, rel in zip(frames, masks, mask_paths, strict=True):
        if f is not None and m is not None and m.shape[:2] != f.shape[:2]:
            errors.append(
                f"mask {source.describe(rel or '')} is {m.shape[1]}x{m.shape[0]} (WxH) but its frame is "
                f"{f.shape[1]}x{f.shape[0]}"
            )


def raise_if_errors(record: VideoRecord, errors: list[str]) -> None:
    """Raise one :class:`DataError` listing every problem found while loading ``record``."""
    if errors:
        head = f"{record.dataset}/{record.split} video {record.video_id!r}: {len(errors)} problem(s)"
        raise DataError(head + "\n  " + "\n  ".join(errors))


def assemble(
    record: VideoRecord,
    frames: list[np.ndarray],
    obj_ids: list[int],
    masks: np.ndarray | None,
    max_side: int | None,
) -> VideoData:
    """Stack decoded frames, resize frames and ``masks [O, T, H, W]`` to ``max_side``, build the :class:`VideoData`."""
    video = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), dtype=np.uint8)  # [T, H, W, 3]
    t, h, w = video.shape[:3]
    has_gt = masks is not None
    if masks is None:
        masks = np.zeros((0, t, h, w), dtype=bool)
        obj_ids = []
    if max_side is not None and t > 0:
        size = size_for_max_side((h, w), max_side)
        if size != (h, w):
            video = resize_frames(video, size)
            masks = resize_masks(masks, size)
    return VideoData(record=record, frames=video, obj_ids=list(obj_ids), masks=masks, has_gt=has_gt)


def read_video_files(
    source: FileSource,
    record: VideoRecord,
    frame_indices: Sequence[int] | None,
    frame_ext: str,
    masks_folder: str | None = None,
) -> tuple[list[int], list[np.ndarray], list[str], list[np.ndarray | None]]:
    """Decode the selected frames (``<frames>/<frame id><frame_ext>``) of ``record`` and, with ``masks_folder``, their
    label PNGs (``<masks_folder>/<frame id>.png``), checking that every size agrees.

    Returns:
        The frame positions, the frames uint8 ``[H, W, 3]``, their paths, and the label maps (None without
        ``masks_folder``).

    Raises:
        DataError: one error listing every unreadable file and size mismatch.
        ValueError: ``frame_indices`` out of range.
    """
    idx = select_indices(record, frame_indices)
    names = [record.frame_ids[i] for i in idx]
    frame_paths = [join(source_dict(record)["frames"], n + frame_ext) for n in names]
    errors: list[str] = []
    frames = read_frames(source, frame_paths, errors)
    mask_paths: list[str | None] = [None] * len(names)
    label_maps: list[np.ndarray | None] = [None] * len(names)
    if masks_folder is not None:
        mask_paths = [join(masks_folder, n + ".png") for n in names]
        label_maps = read_label_maps(source, mask_paths, errors)
    check_sizes(source, frames, frame_paths, label_maps, mask_paths, errors)
    raise_if_errors(record, errors)
    return idx, frames, frame_paths, label_maps


def load_label_png_video(
    source: FileSource,
    record: VideoRecord,
    max_side: int | None,
    frame_indices: Sequence[int] | None,
    frame_ext: str,
) -> VideoData:
    """:meth:`DatasetReader.load_video` of a layout with a frame folder and, where ground truth exists (a ``masks``
    locator), one label PNG per frame whose values are object ids (Ref-YouTube-VOS, Ref-DAVIS)."""
    masks_folder = source_dict(record).get("masks")
    _, frames, _, label_maps = read_video_files(source, record, frame_indices, frame_ext, masks_folder)
    obj_ids = sorted({o for e in record.expressions for o in e.obj_ids})
    masks = label_maps_to_masks(label_maps, obj_ids, frames[0].shape[:2]) if masks_folder is not None else None
    return assemble(record, frames, obj_ids, masks, max_side)


def label_maps_to_masks(
    label_maps: Sequence[np.ndarray | None], obj_ids: Sequence[int], shape: tuple[int, int]
) -> np.ndarray:
    """bool ``[O, T, H, W]``: ``label == obj_id`` per frame; all False where a frame has no annotation, and for an
    ``obj_id`` below 1 (label 0 is the background, never an object)."""
    ids = np.asarray(obj_ids, dtype=np.int64).reshape(-1, 1, 1)
    ids = np.where(ids >= 1, ids, -1)  # -1 matches no label of a uint8 PNG
    out = np.zeros((len(obj_ids), len(label_maps), *shape), dtype=bool)
    for t, labels in enumerate(label_maps):
        if labels is not None and labels.shape == shape:
            out[:, t] = labels[None] == ids  # [O, H, W]
    return out
