"""Ray Data streaming of ingested shards to Ray Train workers: sample clips, decode, augment, batch.

Pipeline (all lazy and streaming)::

    from_items(row ranges of the manifest's shards: a Parquet row group each)   one item per read task
      -> map_batches(read the row group, sample clips, TaskPoolStrategy)         one row per training clip
      -> (TorchTrainer splits it across workers with streaming_split)
      -> iter_torch_batches(collate_fn=clip_collate(tokenizer))                 sgmg ClipBatch per step

``sample_clips`` expands each video row to its (video, expression) samples, and each sample to its clips: with
``anchored=True`` (the official Ref-YouTube-VOS recipe) one clip per anchor frame ``0, T, 2T, ...`` per epoch,
otherwise one clip at a random anchor. Clips are drawn by ``sgmg.data.sampler.sample_clip`` (the sampler of every
data path) with the stored per-frame visibility, so only the frames and masks of the chosen clip are decoded; the
clip is then augmented by its ``recipe`` (or not at all with ``recipe="none"``). A clip whose referred object is
invisible after augmentation is redrawn (random anchor) up to ``max_tries`` times.

Randomness is seeded per clip from ``(seed, epoch, video_id, exp_id, anchor)``, so a run is reproducible whatever the
number of workers, blocks or tasks. ``epochs=E`` emits E passes in one stream (each clip row has its ``epoch`` in
``meta``); ``seed=None`` draws fresh randomness every time the dataset is iterated (each ``iter_torch_batches`` call is
a new epoch then).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from pipelines import ingest, ingested, shards
from sgmg.data.sampler import RECIPES, REVERSE_PROB
from sgmg.data.schema import ClipBatch, ClipSample


@dataclass(frozen=True)
class ClipConfig:
    """How clips are drawn from the ingested videos.

    Attributes:
        num_frames: frames per clip (SgMg trains with 5).
        recipe: one of :data:`sgmg.data.sampler.RECIPES`: ``video`` (Ref-YouTube-VOS/MeViS/DAVIS augmentation),
            ``image`` (RefCOCO 1-frame clips), ``resize`` or ``none`` (no augmentation: frames and masks exactly as
            stored; for tests and evaluation-style streams).
        seed: base seed; None for fresh randomness on every pass.
        epochs: passes over the samples emitted by one iteration of the dataset.
        anchored: one clip per anchor frame ``0, num_frames, 2*num_frames, ...`` (official), else one per sample.
        max_tries: redraws when the referred object is not visible in the clip.
        max_size: longest side after augmentation (``video`` recipe).
        reverse_prob: probability of reversing the clip's frame order; None (default): the official 0.3 for the
            augmenting recipes and 0 for ``none`` and ``resize``, whose clips keep the stored frame order (a reversed
            clip turns "moving left" into a clip that moves right).
        expressions_per_clip: each clip also carries up to ``expressions_per_clip - 1`` expressions of other objects
            of its video as referrals (``sgmg.data.sampler.pick_referrals``); 1: one expression per clip (official).
    """

    num_frames: int = 5
    recipe: str = "video"
    seed: int | None = 0
    epochs: int = 1
    anchored: bool = True
    max_tries: int = 10
    max_size: int = 640
    reverse_prob: float | None = None
    expressions_per_clip: int = 1

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe {self.recipe!r}: expected one of {RECIPES}")
        if min(self.num_frames, self.epochs, self.max_tries, self.expressions_per_clip) < 1:
            raise ValueError(f"num_frames, epochs, max_tries and expressions_per_clip must be >= 1: {self}")
        if self.reverse_prob is not None and not 0.0 <= self.reverse_prob <= 1.0:
            raise ValueError(f"reverse_prob must be in [0, 1] or None, got {self.reverse_prob}")

    @property
    def clip_reverse_prob(self) -> float:
        """The reversal probability in use: ``reverse_prob``, or 0.3 (official) / 0 for ``none`` and ``resize``."""
        if self.reverse_prob is not None:
            return self.reverse_prob
        return 0.0 if self.recipe in ("none", "resize") else REVERSE_PROB


def _rng(cfg: ClipConfig, epoch: int, video_id: str, exp_id: str, anchor: int, purpose: int = 0) -> np.random.Generator:
    if cfg.seed is None:
        return np.random.default_rng()
    key = [cfg.seed, epoch, zlib.crc32(video_id.encode()), zlib.crc32(exp_id.encode()), anchor + 1]  # anchor >= -1
    return np.random.default_rng(key + [purpose] if purpose else key)


def _draw_clip(row: dict, exp: Any, anchor: int, epoch: int, cfg: ClipConfig, also: tuple = ()) -> ClipSample | None:
    """One clip of ``(row, exp)`` around ``anchor`` (:func:`sgmg.data.sampler.sample_clip`, decoding only the frames
    it needs), with the expressions ``also`` as its referrals; None when ``exp``'s object is not visible in any try."""
    from sgmg.data.sampler import sample_clip
    from sgmg.data.schema import Referral

    n = len(row["frame_ids"])
    obj_ids = [int(o) for o in row["obj_ids"]]
    visible_all = np.asarray(row["visible"], dtype=bool).reshape(len(obj_ids), n)  # [O_all, T]
    pick = [obj_ids.index(o) for o in exp.obj_ids]
    visible = visible_all[pick].any(0) if pick else np.zeros(n, dtype=bool)  # [T]
    if not visible.any():
        return None

    def load(idx: list[int]) -> ClipSample:
        uniq = sorted(set(idx))
        pos = [uniq.index(i) for i in idx]
        return ClipSample(
            frames=shards.decode_frames(row["frames"], uniq)[pos],  # [t, H, W, 3]
            masks=shards.row_masks(row, [o for e in (exp, *also) for o in e.obj_ids], uniq)[:, pos],  # [O, t, H, W]
            expression=exp.text,
            video_id=row["video_id"],
            exp_id=exp.exp_id,
            frame_ids=[row["frame_ids"][i] for i in idx],
            obj_ids=list(exp.obj_ids),
            meta={
                "dataset": row["dataset"],
                "split": row["split"],
                "epoch": epoch,
                "anchor": anchor,
                "frame_indices": idx,
            },
            referrals=tuple(Referral.of(e) for e in also),
        )

    return sample_clip(
        n,
        load,
        _rng(cfg, epoch, row["video_id"], exp.exp_id, anchor),
        num_frames=cfg.num_frames,
        recipe=cfg.recipe,
        anchor=anchor,
        visible=visible,
        max_tries=cfg.max_tries,
        reverse_prob=cfg.clip_reverse_prob,
        max_size=cfg.max_size,
    )


def clips_of_row(row: dict, cfg: ClipConfig) -> Iterator[ClipSample]:
    """Every clip of one shard row (a video): per epoch, per expression with ground truth, per anchor."""
    from sgmg.data.sampler import clip_anchors, pick_referrals

    if not row["has_gt"]:
        return
    n = len(row["frame_ids"])
    anchors = clip_anchors(n, cfg.num_frames) if cfg.anchored else None
    exps = shards.row_expressions(row)
    for epoch in range(cfg.epochs):
        for exp in exps:
            if not exp.obj_ids:
                continue
            for anchor in anchors or [int(_rng(cfg, epoch, row["video_id"], exp.exp_id, -1).integers(n))]:
                rng = _rng(cfg, epoch, row["video_id"], exp.exp_id, anchor, purpose=1)
                also = pick_referrals(exps, exp, cfg.expressions_per_clip - 1, rng)
                clip = _draw_clip(row, exp, anchor, epoch, cfg, also)
                if clip is not None:
                    yield clip


def sample_clips(batch: Any, cfg: dict) -> dict[str, Any]:
    """Ray Data UDF: a pyarrow batch of shard rows -> columns of clips (``sgmg.data.collate.sample_to_arrays``)."""
    config = ClipConfig(**cfg)
    return _to_columns([clip for row in batch.to_pylist() for clip in clips_of_row(row, config)])


def _to_columns(clips: list[ClipSample]) -> dict[str, Any]:
    """Clips as Ray Data columns (``sgmg.data.collate.sample_to_arrays`` per clip; empty dict for no clips)."""
    from sgmg.data.collate import ARRAY_COLUMNS, sample_to_arrays

    if not clips:
        return {}  # Ray cannot infer column types from empty lists
    out: dict[str, list] = {k: [] for k in ARRAY_COLUMNS}
    for clip in clips:
        for k, v in sample_to_arrays(clip).items():
            out[k].append(v)
    return {k: tensor_column(v) if isinstance(v[0], np.ndarray) else v for k, v in out.items()}


def tensor_column(arrays: list[np.ndarray]) -> np.ndarray:
    """A list of per-row arrays as the column Ray Data converts fastest: stacked ``[N, ...]`` when every row has the
    same shape (a fixed-shape tensor column), else a 1-D object array (a variable-shaped one).

    Ray 2.60 turns a plain list of equally-shaped arrays into a tensor column ~30x slower than the stacked array
    (34 ms vs 1 ms per 5-frame 640x360 clip, measured here).
    """
    first = arrays[0]
    if all(a.shape == first.shape and a.dtype == first.dtype for a in arrays):
        return np.stack(arrays)
    column = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):  # item by item: a slice assignment would try to broadcast the arrays together
        column[i] = a
    return column


_BLOCK_BYTES = 16 * 2**20  # target size of the clip blocks (~3 clips of 5 frames at 640x360)

# the shard columns clip sampling reads (not the frame codec or source)
CLIP_COLUMNS = (
    "video_id",
    "dataset",
    "split",
    "frame_ids",
    "height",
    "width",
    "frames",
    "obj_ids",
    "masks",
    "visible",
    "has_gt",
    "expressions",
)


def _row_ranges(dest: str, videos_per_task: int | None, shuffle_files: bool):  # noqa: ANN202 - ray.data.Dataset
    """A dataset of ``(uri, start, stop)`` items, one per read task (a row group of a shard by default)."""
    import ray

    manifest = ingested.load_manifest(dest)
    ranges = ingested.row_ranges(dest, manifest, videos_per_task or shards.ROW_GROUP_ROWS)
    if not ranges:
        raise ingest.IngestError(f"the manifest of {dest} lists no videos; rerun `sgmg ingest` with more videos")
    items = [{"uri": u, "start": a, "stop": b} for u, a, b in ranges]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.randomize_block_order() if shuffle_files else ds


def _read_ranges(batch: dict[str, np.ndarray], columns: list[str] | None) -> Iterator[Any]:
    """Ray Data UDF: row ranges -> the shard rows they cover (one output block per range)."""
    for uri, a, b in zip(batch["uri"], batch["start"], batch["stop"], strict=True):
        yield shards.read_shard_rows(str(uri), int(a), int(b), columns)


def _clips_of_ranges(batch: dict[str, np.ndarray], cfg: dict, clips_per_block: int) -> Iterator[dict[str, Any]]:
    """Ray Data UDF: row ranges -> their clips, in output blocks of ``clips_per_block`` clips (streamed as made)."""
    config = ClipConfig(**cfg)
    pending: list[ClipSample] = []
    for row in ingested.iter_rows(zip(batch["uri"], batch["start"], batch["stop"], strict=True), CLIP_COLUMNS):
        for clip in clips_of_row(row, config):
            pending.append(clip)
            if len(pending) >= clips_per_block:
                yield _to_columns(pending)
                pending = []
    if pending:
        yield _to_columns(pending)


def read_videos(
    dest: str,
    columns: tuple[str, ...] | None = CLIP_COLUMNS,
    shuffle_files: bool = False,
    videos_per_task: int | None = None,
):  # noqa: ANN201 - ray.data.Dataset
    """The shard rows (one per video) of the completed ingest at ``dest`` as a Ray Dataset.

    Shards are read by this module's own tasks, one per row group (``videos_per_task`` rows), from the manifest's
    shard list: Ray 2.60's ``read_parquet`` starts footer-reader actors on every execution, ~5 s before the first row
    on a 2-core machine, i.e. on every epoch.

    Args:
        dest: the ingest output folder.
        columns: columns to keep (None: all).
        shuffle_files: read the row groups in a new random order on every pass.
        videos_per_task: rows per read task (None: one Parquet row group, 8 videos).

    Raises:
        pipelines.ingest.IngestError: ``dest`` has no manifest (the ingest did not finish) or no videos.
    """
    return _row_ranges(dest, videos_per_task, shuffle_files).map_batches(
        _read_ranges,
        fn_kwargs={"columns": list(columns) if columns else None},
        batch_size=1,
        batch_format="numpy",
        udf_modifying_row_count=True,
    )


def clip_dataset(
    dest: str,
    cfg: ClipConfig | None = None,
    *,
    parallelism: int | None = None,
    num_cpus: float = 1.0,
    videos_per_task: int | None = None,
    clips_per_block: int = 8,
    shuffle_files: bool = False,
):  # noqa: ANN201 - ray.data.Dataset
    """Training clips of the ingest at ``dest``, read, decoded and augmented on CPU by a task pool.

    Each task reads a row group of a shard (or ``videos_per_task`` videos) and emits its clips in blocks of
    ``clips_per_block`` as soon as they are made, stored as stacked (fixed-shape) or variable-shaped tensor columns
    (:func:`tensor_column`).

    Args:
        dest: the ingest output folder (its ``manifest.json`` lists the shards).
        cfg: clip sampling and augmentation (:class:`ClipConfig` defaults when None).
        parallelism: concurrent decode tasks (None: as many as fit).
        num_cpus: CPUs per decode task.
        videos_per_task: videos per task (None: a row group, 8; fewer spreads small datasets over more CPUs, at the
            cost of reading the row group once per task).
        clips_per_block: clips per output block (~5 MB each at 640 px): small blocks reach the trainer sooner.
        shuffle_files: visit the row groups in a new random order on every pass (combine with
            ``local_shuffle_buffer_size`` of :func:`iter_clip_batches` to mix clips of different videos).

    Returns:
        A ``ray.data.Dataset`` of clip rows with the columns of ``sgmg.data.collate.ARRAY_COLUMNS``.
    """
    import ray

    cfg = cfg or ClipConfig()
    compute = ray.data.TaskPoolStrategy(size=parallelism) if parallelism else None
    ds = _row_ranges(dest, videos_per_task, shuffle_files).map_batches(
        _clips_of_ranges,
        fn_kwargs={"cfg": asdict(cfg), "clips_per_block": max(1, int(clips_per_block))},
        batch_size=1,
        batch_format="numpy",
        compute=compute,
        num_cpus=num_cpus,
        udf_modifying_row_count=True,
    )
    # Ray buffers a task's outputs until they pass target_max_block_size (128 MiB: ~30 clips) before it emits a
    # block; a small target on this dataset's own context (the global one is untouched) sends clips on as they are
    # made: the first batch of an epoch arrives ~3x sooner (1.4 s vs 4 s here).
    ds.context.target_max_block_size = _BLOCK_BYTES
    return ds


class ClipCollate(NumpyBatchCollateFn):
    """``collate_fn`` for ``iter_torch_batches``: a numpy column batch of clips -> :class:`ClipBatch`.

    A ``NumpyBatchCollateFn`` subclass, the form Ray Data asks for since 2.47 (plain functions are deprecated);
    picklable, so Ray can ship it with the tokenizer to any worker.
    """

    def __init__(
        self, tokenizer: Any, pad_multiple: int = 32, normalize_text: bool = True, max_text_len: int | None = None
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.pad_multiple = pad_multiple
        self.normalize_text = normalize_text
        self.max_text_len = max_text_len

    def __call__(self, batch: dict[str, np.ndarray]) -> ClipBatch:
        from sgmg.data.collate import collate_arrays

        return collate_arrays(
            batch,
            tokenizer=self.tokenizer,
            pad_multiple=self.pad_multiple,
            normalize_text=self.normalize_text,
            max_text_len=self.max_text_len,
        )


def clip_collate(
    tokenizer: Any, pad_multiple: int = 32, normalize_text: bool = True, max_text_len: int | None = None
) -> ClipCollate:
    """The ``collate_fn`` of the training stream (see :class:`ClipCollate`)."""
    return ClipCollate(tokenizer, pad_multiple, normalize_text, max_text_len)


def iter_clip_batches(
    data_iterator: Any,
    batch_size: int,
    tokenizer: Any,
    prefetch_batches: int = 2,
    pad_multiple: int = 32,
    drop_last: bool = False,
    local_shuffle_buffer_size: int | None = None,
) -> Iterator[ClipBatch]:
    """Batches for one pass over a worker's shard (``ray.train.get_dataset_shard("train")``).

    Args:
        data_iterator: the worker's ``DataIterator``.
        batch_size: clips per batch on this worker.
        tokenizer: the text encoder's tokenizer (picklable).
        prefetch_batches: batches decoded ahead of the training step.
        pad_multiple: spatial padding multiple of the collate.
        drop_last: drop a final incomplete batch (keeps DDP steps equal across workers).
        local_shuffle_buffer_size: shuffle clips in a buffer of this many rows on the worker (None: no shuffle).
    """
    yield from data_iterator.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=clip_collate(tokenizer, pad_multiple=pad_multiple),
        prefetch_batches=prefetch_batches,
        drop_last=drop_last,
        local_shuffle_buffer_size=local_shuffle_buffer_size,
    )


def describe_clip_meta(meta: dict) -> str:
    """One-line summary of a clip's meta (logs)."""
    return json.dumps({k: meta.get(k) for k in ("video_id", "exp_id", "epoch", "frame_indices")})
