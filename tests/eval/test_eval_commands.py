"""``sgmg evaluate``: table on stdout, JSON file, clear errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgmg.cli import main


def _png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


@pytest.fixture
def refcoco_dirs(tmp_path: Path) -> tuple[Path, Path]:
    gt = np.zeros((10, 10), dtype=bool)
    gt[0:4, 0:5] = True
    pred = np.zeros_like(gt)
    pred[0:2, 0:5] = True
    _png(tmp_path / "gt" / "a.png", gt)
    _png(tmp_path / "pred" / "a.png", pred)
    _png(tmp_path / "gt" / "b.png", gt)
    _png(tmp_path / "pred" / "b.png", gt)
    return tmp_path / "pred", tmp_path / "gt"


def test_evaluate_prints_table_and_writes_json(refcoco_dirs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    pred, gt = refcoco_dirs
    out = tmp_path / "res" / "results.json"
    code = main(
        ["evaluate", "--benchmark", "refcoco", "--predictions", str(pred), "--ground-truth", str(gt), "--out", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "oIoU" in text and "mIoU" in text and "75.00" in text  # mIoU = (0.5 + 1) / 2
    data = json.loads(out.read_text())
    assert data["benchmark"] == "refcoco"
    assert data["metrics"]["oIoU"] == pytest.approx(30 / 40)
    assert data["per_item"]["a"]["IoU"] == pytest.approx(0.5)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_evaluate_ref_youtube_vos_json(tmp_path: Path, capsys) -> None:
    labels = np.zeros((2, 12, 14), dtype=np.uint8)
    labels[:, 2:6, 3:9] = 3
    for t in range(2):
        im = Image.fromarray(labels[t])
        im.putpalette([0, 0, 0] + [200, 0, 0] * 255)
        (tmp_path / "ds" / "valid" / "Annotations" / "v").mkdir(parents=True, exist_ok=True)
        im.save(tmp_path / "ds" / "valid" / "Annotations" / "v" / f"{t:05d}.png")
        _png(tmp_path / "pred" / "Annotations" / "v" / "0" / f"{t:05d}.png", labels[t] == 3)
    meta = {"videos": {"v": {"expressions": {"0": {"exp": "x", "obj_id": "3"}}, "frames": ["00000", "00001"]}}}
    (tmp_path / "ds" / "meta_expressions" / "valid").mkdir(parents=True)
    (tmp_path / "ds" / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    code = main(
        [
            "evaluate",
            "--benchmark",
            "ref-youtube-vos",
            "--predictions",
            str(tmp_path / "pred"),
            "--ground-truth",
            str(tmp_path / "ds"),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    assert "J&F" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == {"J&F": 1.0, "J": 1.0, "F": 1.0}


def test_evaluate_errors_name_the_missing_path(refcoco_dirs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    pred, gt = refcoco_dirs
    missing = tmp_path / "no_such_folder"
    code = main(["evaluate", "--benchmark", "mevis", "--predictions", str(pred), "--ground-truth", str(missing)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "mask_dict.json" in err
    (pred / "b.png").unlink()
    code = main(["evaluate", "--benchmark", "refcoco", "--predictions", str(pred), "--ground-truth", str(gt)])
    assert code == 2
    assert "b.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--benchmark", "kitti", "--predictions", str(pred), "--ground-truth", str(gt)])
