"""pipelines.ingest without Ray: row codecs, shard files, deterministic plan, quarantine, CLI arguments."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import ingest, ingest_shard, ingested, shards
from sgmg.data.schema import Expression, VideoData, VideoRecord


def _video(t: int = 3, h: int = 20, w: int = 24, n_obj: int = 2, seed: int = 0) -> VideoData:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((n_obj, t, h, w), dtype=bool)
    masks[0, :, 2:7, 3:11] = True
    if n_obj > 1:
        masks[1, 0, 10:19, 0:5] = True  # visible in frame 0 only
    rec = VideoRecord(
        dataset="ref-youtube-vos",
        split="train",
        video_id="v1",
        frame_ids=tuple(f"{i:05d}" for i in range(t)),
        expressions=(Expression("0", "a box", (1,)), Expression("1", "both", (1, 2))),
        source=(("frames", "train/JPEGImages/v1"),),
    )
    return VideoData(record=rec, frames=frames, obj_ids=[1, 2][:n_obj], masks=masks)


def test_row_roundtrip_png_is_exact() -> None:
    video = _video()
    row = shards.encode_video_row(video, codec="png")
    back = shards.row_to_video(row)
    np.testing.assert_array_equal(back.frames, video.frames)
    np.testing.assert_array_equal(back.masks, video.masks)
    assert back.record == video.record and back.obj_ids == [1, 2]
    assert row["visible"] == [True, True, True, True, False, False]
    # a subset of objects and frames, in the requested order
    sub = shards.row_masks(row, [2], [0, 2])
    assert sub.shape == (1, 2, 20, 24) and sub[0, 0].sum() == 45 and not sub[0, 1].any()


def test_row_roundtrip_jpeg_is_close() -> None:
    video = _video(h=64, w=64)
    video.frames[:] = np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None]  # smooth ramp: JPEG-friendly
    row = shards.encode_video_row(video, codec="jpeg", quality=90)
    back = shards.decode_frames(row["frames"])
    assert np.abs(back.astype(int) - video.frames).mean() < 2.0
    np.testing.assert_array_equal(shards.row_masks(row, [1, 2]), video.masks)  # masks stay exact


def test_validate_rejects_mask_frame_mismatch() -> None:
    video = _video()
    video.masks = video.masks[:, :, :10]
    with pytest.raises(ValueError, match="v1.*masks"):
        shards.encode_video_row(video)


def test_shard_bytes_are_deterministic_and_carry_metadata(tmp_path) -> None:
    rows = [shards.encode_video_row(_video(seed=s), codec="png") for s in range(2)]
    meta = {"config_hash": "abc", "video_ids": ["v1", "v1"], "quarantine": [{"video_id": "x"}], "rows": 2, "samples": 4}
    a = shards.write_shard_bytes(rows, meta)
    assert a == shards.write_shard_bytes(rows, meta)
    path = tmp_path / "shard-00000-of-00001.parquet"
    path.write_bytes(a)
    assert shards.read_shard_meta(str(path))["quarantine"] == [{"video_id": "x"}]
    table = pq.read_table(io.BytesIO(a))
    assert table.schema.remove_metadata() == shards.SHARD_SCHEMA and table.num_rows == 2


def test_plan_is_deterministic_and_complete() -> None:
    ids = [f"v{i}" for i in (5, 3, 9, 1, 7)]
    plan = ingest.plan_shards(ids, 2)
    assert plan == [["v1", "v3"], ["v5", "v7"], ["v9"]]
    assert plan == ingest.plan_shards(list(reversed(ids)), 2)
    assert ingest_shard.shard_name(1, 3) == "shard-00001-of-00003.parquet"


def test_config_validation_and_hash() -> None:
    a = ingest.IngestConfig(source="s3://a/x", dest="s3://b/y")
    assert a.config_hash() == ingest.IngestConfig(source="s3://a/x", dest="/elsewhere").config_hash()
    assert a.config_hash() != ingest.IngestConfig(source="s3://a/x", dest="s3://b/y", max_side=320).config_hash()
    with pytest.raises(ingest.IngestError, match="--format"):
        ingest.IngestConfig(source="a", dest="b", format="kinetics")
    with pytest.raises(ingest.IngestError, match="--shard-size"):
        ingest.IngestConfig(source="a", dest="b", shard_size=0)


def test_cli_configure_is_light_and_validates(tmp_path, capsys) -> None:

    from pipelines import ingest_cli

    parser = argparse.ArgumentParser()
    ingest_cli.configure(parser)
    assert ingest_cli.run(parser.parse_args(["--source", "x"])) == 2
    assert "--dest" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("format: mevis\nshard_sise: 3\n")
    assert ingest_cli.run(parser.parse_args(["--source", "x", "--dest", "y", "--config", str(cfg)])) == 2
    assert "shard_sise" in capsys.readouterr().err


def test_cli_import_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = (
        "import argparse, sys; import pipelines.ingest_cli as m; m.configure(argparse.ArgumentParser()); "
        "print('ray' in sys.modules, 'pyarrow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("name", ["ingest.yaml", "ingest_synthetic.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    from pathlib import Path

    from pipelines import ingest_cli

    parser = argparse.ArgumentParser()
    ingest_cli.configure(parser)
    path = Path(ingest.__file__).parent / "configs" / name
    job = ingest_cli.load_job(parser.parse_args(["--source", "s3://a/b", "--dest", "/tmp/x", "--config", str(path)]))
    cfg = job.ingest_config()
    assert cfg.format == "ref-youtube-vos" and cfg.source == "s3://a/b"


def test_read_shard_rows_reads_any_range_across_row_groups(tmp_path) -> None:
    n = shards.ROW_GROUP_ROWS + 3  # two row groups
    rows = [shards.encode_video_row(_video(t=1, h=4, w=4, seed=s), codec="png") for s in range(n)]
    for i, r in enumerate(rows):
        r["video_id"] = f"v{i:02d}"
    path = tmp_path / "shard-00000-of-00001.parquet"
    path.write_bytes(shards.write_shard_bytes(rows, {"rows": n}))
    assert pq.ParquetFile(path).num_row_groups == 2
    for start, stop in [(0, n), (0, 1), (5, shards.ROW_GROUP_ROWS + 2), (n - 1, n), (3, 3)]:
        table = shards.read_shard_rows(str(path), start, stop, ["video_id"])
        assert table.column_names == ["video_id"]
        assert table.column("video_id").to_pylist() == [f"v{i:02d}" for i in range(start, stop)]
    assert shards.read_shard_rows(str(path)).num_rows == n
    manifest = {"shards": [{"name": path.name, "rows": n}, {"name": "shard-x.parquet", "rows": 2}]}
    ranges = ingested.row_ranges(str(tmp_path), manifest)
    assert [(r[1], r[2]) for r in ranges] == [(0, shards.ROW_GROUP_ROWS), (shards.ROW_GROUP_ROWS, n), (0, 2)]
    assert ranges[0][0] == str(path)
    assert len(ingested.row_ranges(str(tmp_path), manifest, rows_per_range=1)) == n + 2


def test_manifest_hash_is_the_identity_of_the_ingest(tmp_path) -> None:
    import json

    a, b, c = (tmp_path / n for n in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    manifest = {"shards": [{"name": "s0", "sha256": "12"}], "num_videos": 1, "config": {"split": "valid"}}
    (a / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (b / "manifest.json").write_text(json.dumps(dict(reversed(manifest.items()))))  # same content, other layout
    (c / "manifest.json").write_text(json.dumps({**manifest, "shards": [{"name": "s0", "sha256": "13"}]}))
    assert ingested.manifest_hash(str(a)) == ingested.manifest_hash(str(b)) != ingested.manifest_hash(str(c))
    assert len(ingested.manifest_hash(str(a))) == 64
    with pytest.raises(ingest.IngestError, match="not a completed ingest"):
        ingested.manifest_hash(str(tmp_path / "none"))
