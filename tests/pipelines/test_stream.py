"""pipelines.stream without Ray: clip sampling from shard rows (determinism, coverage, exactness, augmentation)."""

from __future__ import annotations

import io
from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import ingest, ingest_shard, shards, stream


@pytest.fixture(scope="module")
def shard(tmp_path_factory):  # noqa: ANN201 - (pyarrow table, local dataset root)
    from tiny_ytvos import write_tiny_ytvos

    root = tmp_path_factory.mktemp("ds") / "ytvos"
    write_tiny_ytvos(root, n_videos=3, n_frames=6)
    cfg = ingest.IngestConfig(source=str(root), dest=str(root) + "-out", max_side=64, shard_size=3, frame_codec="png")
    reader = ingest_shard.open_reader(cfg.format, cfg.source, cfg.split)
    data, result = ingest_shard.build_shard(cfg, 0, 1, reader.list_videos(), reader=reader)
    assert result.rows == 3 and result.quarantine == []
    return pq.read_table(io.BytesIO(data)), str(root)


def test_clips_are_exact_crops_of_the_source(shard) -> None:
    from sgmg.data.datasets import open_dataset

    table, root = shard
    reader = open_dataset("ref-youtube-vos", root, "train")
    videos = {r.video_id: reader.load_video(r, max_side=64) for r in reader.list_videos()}
    cfg = stream.ClipConfig(num_frames=3, recipe="none", seed=1)
    clips = [c for row in table.to_pylist() for c in stream.clips_of_row(row, cfg)]
    # anchored: anchors 0 and 3 of 6 frames, for each of the 2+4+2 expressions
    assert len(clips) == 2 * (2 + 4 + 2)
    for clip in clips:
        video = videos[clip.video_id]
        idx = clip.meta["frame_indices"]
        exp = next(e for e in video.record.expressions if e.exp_id == clip.exp_id)
        np.testing.assert_array_equal(clip.frames, video.frames[idx])
        np.testing.assert_array_equal(clip.masks, video.sample(exp).masks[:, idx])
        assert clip.valid.any() and clip.expression == exp.text


def test_clips_carry_expressions_of_other_objects_of_their_video(shard) -> None:
    from sgmg.data.collate import batch_to_samples
    from sgmg.data.datasets import open_dataset

    table, root = shard
    reader = open_dataset("ref-youtube-vos", root, "train")
    videos = {r.video_id: reader.load_video(r, max_side=64) for r in reader.list_videos()}
    rows = table.to_pylist()
    one = [c for row in rows for c in stream.clips_of_row(row, stream.ClipConfig(num_frames=3, recipe="none", seed=1))]
    cfg = stream.ClipConfig(num_frames=3, recipe="none", seed=1, expressions_per_clip=3)
    several = [c for row in rows for c in stream.clips_of_row(row, cfg)]
    assert [(c.video_id, c.exp_id, c.meta["frame_indices"]) for c in several] == [
        (c.video_id, c.exp_id, c.meta["frame_indices"]) for c in one
    ]  # the same clips; the referrals come from their own draws
    assert any(c.referrals for c in several)
    for clip in several:
        video, idx = videos[clip.video_id], clip.meta["frame_indices"]
        objects = {tuple(e.obj_ids) for e in video.record.expressions if e.obj_ids}
        assert len(clip.referrals) == min(2, len(objects) - 1)
        parts = clip.per_expression()
        assert len({tuple(p.obj_ids) for p in parts}) == len(parts)  # each part refers to other objects
        for part in parts:
            exp = next(e for e in video.record.expressions if e.exp_id == part.exp_id)
            assert part.expression == exp.text
            np.testing.assert_array_equal(part.masks, video.sample(exp).masks[:, idx])
    columns = stream.sample_clips(table, asdict(cfg))
    assert [s.referrals for s in batch_to_samples(columns)] == [c.referrals for c in several]


def test_sampling_is_seeded_per_epoch(shard) -> None:
    table, _ = shard
    rows = table.to_pylist()

    def draw(seed: int, epochs: int) -> list:
        cfg = stream.ClipConfig(num_frames=3, recipe="video", seed=seed, epochs=epochs, anchored=False)
        return [
            (c.video_id, c.exp_id, c.meta["epoch"], tuple(c.meta["frame_indices"]), c.frames.shape)
            for row in rows
            for c in stream.clips_of_row(row, cfg)
        ]

    a = draw(3, 2)
    assert a == draw(3, 2)  # reproducible
    assert a != draw(4, 2)  # the seed matters
    by_epoch = [[x[:2] + x[3:] for x in a if x[2] == e] for e in (0, 1)]
    assert [x[:2] for x in by_epoch[0]] == [x[:2] for x in by_epoch[1]]  # each epoch covers every sample once
    assert by_epoch[0] != by_epoch[1]  # with different clips/augmentations


def test_sample_clips_columns_and_collate(shard) -> None:
    from sgmg.data.collate import ARRAY_COLUMNS, batch_to_samples

    table, _ = shard
    out = stream.sample_clips(table, asdict(stream.ClipConfig(num_frames=2, recipe="video", seed=0)))
    assert set(out) == set(ARRAY_COLUMNS) and len(out["frames"]) > 0
    samples = batch_to_samples(out)
    assert all(s.frames.shape[0] == 2 and s.masks.shape[1] == 2 and s.valid.any() for s in samples)
    assert all(max(s.frames.shape[1:3]) <= 640 for s in samples)
    assert stream.sample_clips(table.slice(0, 0), asdict(stream.ClipConfig())) == {}


def test_clip_config_validation() -> None:
    with pytest.raises(ValueError, match="recipe"):
        stream.ClipConfig(recipe="mixup")
    with pytest.raises(ValueError, match="num_frames"):
        stream.ClipConfig(num_frames=0)


def test_tensor_column_stacks_equal_shapes_and_keeps_ragged_ones() -> None:
    same = [np.full((2, 3, 4), i, np.uint8) for i in range(3)]
    col = stream.tensor_column(same)
    assert col.shape == (3, 2, 3, 4) and col.dtype == np.uint8 and (col[2] == 2).all()
    ragged = [np.zeros((2, 3, 4), np.uint8), np.ones((2, 5, 4), np.uint8)]  # same leading dim: no broadcasting
    col = stream.tensor_column(ragged)
    assert col.dtype == object and col.shape == (2,) and col[1].shape == (2, 5, 4) and (col[1] == 1).all()


def test_clip_blocks_stream_in_small_pieces(shard, monkeypatch) -> None:
    table, _ = shard
    batch = {"uri": np.array(["x"]), "start": np.array([0]), "stop": np.array([3])}
    cfg = asdict(stream.ClipConfig(num_frames=2, recipe="none", seed=0))
    monkeypatch.setattr(shards, "read_shard_rows", lambda uri, a, b, columns: table.slice(a, b - a))  # noqa: ARG005
    blocks = list(stream._clips_of_ranges(batch, cfg, clips_per_block=3))
    sizes = [len(b["video_id"]) for b in blocks]
    expected = [c for row in table.to_pylist() for c in stream.clips_of_row(row, stream.ClipConfig(**cfg))]
    assert sum(sizes) == len(expected) and all(s == 3 for s in sizes[:-1]) and 1 <= sizes[-1] <= 3
    assert [v for b in blocks for v in b["video_id"]] == [c.video_id for c in expected]


def test_recipe_none_keeps_the_frame_order_unless_asked(shard) -> None:
    # a time-reversed clip turns "moving left" into a clip moving right: the no-augmentation recipe must not reverse
    table, _ = shard
    rows = table.to_pylist()

    def orders(**kw) -> list[list[int]]:
        cfg = stream.ClipConfig(num_frames=3, seed=0, epochs=20, anchored=False, **kw)
        return [c.meta["frame_indices"] for row in rows for c in stream.clips_of_row(row, cfg)]

    def reversed_share(idx: list[list[int]]) -> float:
        return sum(i != sorted(i) for i in idx) / len(idx)

    assert stream.ClipConfig(recipe="none").clip_reverse_prob == 0.0
    assert stream.ClipConfig(recipe="video").clip_reverse_prob == 0.3  # official
    assert reversed_share(orders(recipe="none")) == 0.0
    assert 0.15 < reversed_share(orders(recipe="none", reverse_prob=0.3)) < 0.45
    with pytest.raises(ValueError, match="reverse_prob"):
        stream.ClipConfig(reverse_prob=1.5)
