"""validate-dataset: the synthetic output passes; a broken copy gets every problem reported at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sgmg.cli import main as cli_main
from sgmg.data.io import encode_png
from sgmg.data.validate import validate_dataset


def test_synthetic_dataset_is_valid(synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    report = validate_dataset(synthetic_root)
    assert report.ok, report.problems
    assert report.format == "ref-youtube-vos" and report.splits == ["train", "valid"]
    # 6 videos, each counted once: their mp4 copies under videos/<split>/ are checked but are not more videos
    expressions = sum(
        len(v["expressions"])
        for split in ("train", "valid")
        for v in json.loads((synthetic_root / f"meta_expressions/{split}/meta_expressions.json").read_text())[
            "videos"
        ].values()
    )
    assert (report.videos, report.copies, report.expressions) == (6, 6, expressions)
    assert cli_main(["validate-dataset", str(synthetic_root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"6 videos (and 6 mp4 copies of them), {expressions} expressions checked: OK" in out


def test_every_problem_is_reported_with_its_file(tmp_path: Path, synthetic_root: Path, capsys) -> None:
    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    (root / "train/JPEGImages/vid00000/00002.jpg").unlink()  # missing frame
    (root / "train/JPEGImages/vid00001/00001.jpg").write_bytes(b"garbage")  # unreadable image
    (root / "train/Annotations/vid00002/00000.png").write_bytes(encode_png(np.zeros((10, 10), np.uint8)))  # size
    meta_path = root / "meta_expressions/train/meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["vid00003"]["expressions"]["0"]["obj_id"] = "9"  # object that never appears
    meta_path.write_text(json.dumps(meta))
    (root / "valid/meta.json").write_text("{not json")  # malformed JSON
    (root / "videos/valid/vid00005.mp4").write_bytes(b"\x00" * 64)  # unreadable video
    report = validate_dataset(root)
    text = "\n".join(report.problems)
    assert "vid00000/00002.jpg" in text
    assert "vid00001/00001.jpg" in text
    assert "vid00002/00000.png is 10x10 (WxH) but its frame is 128x96" in text
    assert "refers to object 9, which appears in none of the video's masks" in text
    assert "malformed JSON in" in text and "valid/meta.json" in text
    assert "vid00005.mp4" in text
    assert len(report.problems) == 6, text
    assert cli_main(["validate-dataset", str(root), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.count("PROBLEM:") == 6 and "6 problem(s)" in out


def test_missing_root_and_unknown_layout(tmp_path: Path) -> None:
    assert "does not exist" in validate_dataset(tmp_path / "nope").problems[0]
    (tmp_path / "empty").mkdir()
    assert "cannot tell the format" in validate_dataset(tmp_path / "empty").problems[0]


def test_real_format_fixtures_are_valid(
    davis_raw: Path, mevis_root: Path, refcoco_root: Path, videos_root: Path
) -> None:
    for root, fmt, videos in (
        (davis_raw, "ref-davis", 2),
        (mevis_root, "mevis", 1),
        (refcoco_root, "refcoco", 1),
        (videos_root, "videos", 2),
    ):
        report = validate_dataset(root)
        assert report.ok and report.format == fmt and report.videos == videos, (fmt, report)
    (davis_raw / "DAVIS/Annotations_unsupervised/480p/bike/00001.png").unlink()
    report = validate_dataset(davis_raw, fmt="ref-davis")
    assert len(report.problems) == 1 and "bike/00001.png" in report.problems[0]


def test_an_expression_naming_the_background_or_an_absent_object_is_reported(
    tmp_path: Path, synthetic_root: Path
) -> None:
    root = tmp_path / "planted"
    shutil.copytree(synthetic_root, root)
    meta_path = root / "meta_expressions/train/meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["vid00000"]["expressions"]["0"]["obj_id"] = "0"  # label 0 is the background: no object
    meta["videos"]["vid00001"]["expressions"]["1"]["obj_id"] = ["1", "7"]  # one of two objects never appears
    meta_path.write_text(json.dumps(meta))
    report = validate_dataset(root)
    assert len(report.problems) == 2, report.problems
    background, absent = sorted(report.problems)
    assert "'vid00000': expression '0'" in background and "refers to object 0" in background
    assert "0 is the background label" in background
    assert "'vid00001': expression '1'" in absent and "refers to object 7" in absent
    assert report.videos == 6 and report.copies == 6
