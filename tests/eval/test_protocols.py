"""Benchmark protocols: Ref-DAVIS17 (against the toolkit), Ref-YouTube-VOS submission/scoring, MeViS, RefCOCO."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgmg.eval import mevis, ref_davis, ref_ytvos, refcoco
from sgmg.eval.common import EvalInputError
from sgmg.eval.metrics import f_measure, jaccard

TOL = 1e-6


def _palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [255] * (3 * 251))
    im.save(path)


def _gray_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def _void_labels(labels: np.ndarray, transform: dict) -> np.ndarray:
    out = labels.copy()
    out[..., transform["rows"][0] : transform["rows"][1], :] = transform["value"]
    out[..., :, transform["cols"][0] : transform["cols"][1]] = transform["value"]
    return out


# --------------------------------------------------------------------------------------------------- Ref-DAVIS17
def test_match_video_matches_toolkit_unsupervised_with_void(golden: dict, davis_labels: dict) -> None:
    expected = golden["unsupervised"]["void"]["per_sequence"]
    transform = golden["unsupervised"]["void_transform"]
    for seq, (annotation, segmentation) in davis_labels.items():
        j, f, pairs = ref_davis.match_video(_void_labels(annotation, transform), segmentation)
        assert j.shape[0] == expected[seq]["n_gt"] == pairs.shape[0]
        np.testing.assert_allclose(j, expected[seq]["J"], rtol=0, atol=TOL)
        np.testing.assert_allclose(f, expected[seq]["F"], rtol=0, atol=TOL)


def test_ref_davis_end_to_end_matches_toolkit(golden: dict, davis_masks: Path, tmp_path: Path) -> None:
    gt_root = tmp_path / "DAVIS"
    (gt_root / "ImageSets" / "2017").mkdir(parents=True)
    seqs = sorted(p.name for p in (davis_masks / "setB").iterdir())
    (gt_root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(seqs) + "\n")
    (gt_root / "Annotations_unsupervised").mkdir()
    os.symlink(davis_masks / "setB", gt_root / "Annotations_unsupervised" / "480p")
    result = ref_davis.evaluate(davis_masks / "setA", gt_root)  # no anno_* folders: a single run
    expected = golden["unsupervised"]["plain"]
    names = {"J&F": "J&F-Mean"}
    for metric, value in result.metrics.items():
        assert value == pytest.approx(expected[names.get(metric, metric)], abs=TOL), metric
    # per-object means: same multiset as the toolkit's (which labels objects in matched-prediction order)
    ours = sorted((v["J"], v["F"]) for v in result.per_item.values())
    theirs = sorted(tuple(v) for v in expected["M_per_object"].values())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)


def _tiny_davis(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Ground truth: 3 frames, 2 objects (ids 1, 2) and a void strip."""
    labels = np.zeros((3, 24, 32), dtype=np.uint8)
    labels[:, 2:10, 3:12] = 1
    labels[:, 14:22, 15:30] = 2
    labels[1, 14:22, 15:20] = 0
    labels[:, :, 0] = 255
    for t in range(3):
        _palette_png(tmp_path / "gt" / "Annotations_unsupervised" / "480p" / "vid" / f"{t:05d}.png", labels[t])
    return tmp_path / "gt", labels


def test_ref_davis_matching_ignores_predicted_ids_and_averages_runs(tmp_path: Path) -> None:
    gt_root, labels = _tiny_davis(tmp_path)
    clean = np.where(labels == 255, 0, labels)
    swapped = np.select([clean == 1, clean == 2], [2, 1], 0)  # object ids permuted
    worse = swapped.copy()
    worse[:, 2:10, 3:8] = 0  # run 1 misses part of an object
    for t in range(3):
        _palette_png(tmp_path / "pred" / "anno_0" / "vid" / f"{t:05d}.png", swapped[t])
        _palette_png(tmp_path / "pred" / "anno_1" / "vid" / f"{t:05d}.png", worse[t])
    result = ref_davis.evaluate(tmp_path / "pred", gt_root)
    runs = result.details["runs"]
    assert set(runs) == {"anno_0", "anno_1"}
    assert runs["anno_0"]["J-Mean"] == 1.0 and runs["anno_0"]["F-Mean"] == 1.0  # permutation is matched away
    assert runs["anno_1"]["J-Mean"] < 1.0
    for metric in result.metrics:
        assert result.metrics[metric] == pytest.approx((runs["anno_0"][metric] + runs["anno_1"][metric]) / 2)
    assert result.per_item["anno_0/vid/1"]["pred_id"] == 2.0
    # the expected J of run 1's damaged object, by hand: 4 of 9 columns kept, void column 0 is outside the box
    j_obj1 = jaccard(clean == 1, worse == 2)
    assert result.per_item["anno_1/vid/1"]["J"] == pytest.approx(float(np.mean(j_obj1)))


def test_ref_davis_pads_missing_predictions_and_names_missing_frames(tmp_path: Path) -> None:
    gt_root, labels = _tiny_davis(tmp_path)
    only_one = np.where(labels == 1, 1, 0)
    for t in range(3):
        _palette_png(tmp_path / "pred" / "vid" / f"{t:05d}.png", only_one[t])
    result = ref_davis.evaluate(tmp_path / "pred", gt_root)
    assert result.per_item["vid/1"]["J"] == 1.0 and result.per_item["vid/2"]["J"] == 0.0
    (tmp_path / "pred" / "vid" / "00002.png").unlink()
    with pytest.raises(EvalInputError, match="00002.png"):
        ref_davis.evaluate(tmp_path / "pred", gt_root)
    with pytest.raises(EvalInputError, match="Annotations_unsupervised"):
        ref_davis.evaluate(tmp_path / "pred", tmp_path / "nowhere")


def test_ref_davis_rejects_more_than_20_proposals(tmp_path: Path) -> None:
    gt_root, labels = _tiny_davis(tmp_path)
    for t in range(3):
        _gray_png(tmp_path / "pred" / "vid" / f"{t:05d}.png", labels[t] == 1)  # 0/255: id 255
    with pytest.raises(EvalInputError, match="exceeds"):
        ref_davis.evaluate(tmp_path / "pred", gt_root)


# ----------------------------------------------------------------------------------------------- Ref-YouTube-VOS
def test_submission_zip_layout(tmp_path: Path) -> None:
    masks = np.zeros((2, 6, 8), dtype=bool)
    masks[1, 2:4, 2:5] = True
    ref_ytvos.write_expression_masks(tmp_path / "sub", "vidA", "0", ["00000", "00005"], masks)
    ref_ytvos.write_expression_masks(tmp_path / "sub", "vidA", 1, ["00000", "00005"], ~masks)
    zip_path = ref_ytvos.zip_submission(tmp_path / "sub")
    assert zip_path == tmp_path / "sub" / "submission.zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert all(n.startswith("Annotations/") for n in names)
        files = sorted(n for n in names if not n.endswith("/"))
        assert files == [f"Annotations/vidA/{e}/{f}.png" for e in ("0", "1") for f in ("00000", "00005")]
        with zf.open("Annotations/vidA/0/00005.png") as fh:
            arr = np.array(Image.open(fh))
    assert arr.dtype == np.uint8 and set(np.unique(arr)) == {0, 255}
    np.testing.assert_array_equal(arr == 255, masks[1])
    assert not [p for p in (tmp_path / "sub").rglob("*") if p.name.startswith(".")]  # no temporaries left
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"videos": {"vidA": {"expressions": {"0": {}, "1": {}, "2": {}}, "frames": ["00000"]}}}))
    assert ref_ytvos.check_submission(tmp_path / "sub", meta) == ["vidA/2/00000.png"]
    with pytest.raises(ValueError, match="valid file name"):
        ref_ytvos.write_expression_masks(tmp_path / "sub", "../x", "0", ["00000"], masks[:1])


def _ytvos_dataset(root: Path) -> np.ndarray:
    labels = np.zeros((2, 20, 24), dtype=np.uint8)
    labels[:, 2:8, 2:9] = 1
    labels[:, 10:18, 12:22] = 2
    for t in range(2):
        _palette_png(root / "valid" / "Annotations" / "v1" / f"{t:05d}.png", labels[t])
    meta = {
        "videos": {
            "v1": {
                "expressions": {"0": {"exp": "a", "obj_id": "1"}, "1": {"exp": "b", "obj_id": "2"}},
                "frames": ["00000", "00001"],
            }
        }
    }
    (root / "meta_expressions" / "valid").mkdir(parents=True)
    (root / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    return labels


def test_ref_ytvos_scoring_on_written_submission(tmp_path: Path) -> None:
    labels = _ytvos_dataset(tmp_path / "ds")
    pred0 = labels == 1
    pred1 = np.zeros_like(pred0)
    pred1[:, 10:18, 12:17] = True  # half of object 2
    ref_ytvos.write_expression_masks(tmp_path / "out", "v1", "0", ["00000", "00001"], pred0)
    ref_ytvos.write_expression_masks(tmp_path / "out", "v1", "1", ["00000", "00001"], pred1)
    result = ref_ytvos.evaluate(tmp_path / "out", tmp_path / "ds")
    assert result.per_item["v1/0"] == {"J": 1.0, "F": 1.0, "J&F": 1.0}
    assert result.per_item["v1/1"]["J"] == pytest.approx(0.5)
    f1 = float(np.mean(f_measure(labels == 2, pred1)))
    assert result.metrics["F"] == pytest.approx((1.0 + f1) / 2)
    assert result.metrics["J&F"] == pytest.approx((result.metrics["J"] + result.metrics["F"]) / 2)
    (tmp_path / "out" / "Annotations" / "v1" / "1" / "00001.png").unlink()
    with pytest.raises(EvalInputError, match=r"v1/1/00001.png"):
        ref_ytvos.evaluate(tmp_path / "out", tmp_path / "ds")


# ---------------------------------------------------------------------------------------------------------- MeViS
def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_mevis_target_is_the_union_of_referred_objects(tmp_path: Path) -> None:
    a = np.zeros((16, 20), dtype=bool)
    a[2:6, 2:8] = True
    b = np.zeros((16, 20), dtype=bool)
    b[9:14, 10:18] = True
    gt_dir = tmp_path / "valid_u"
    gt_dir.mkdir()
    meta = {
        "videos": {
            "v": {
                "expressions": {
                    "0": {"exp": "both", "obj_id": [0, 1], "anno_id": [10, 11]},
                    "1": {"exp": "first", "obj_id": [0], "anno_id": [10]},
                },
                "frames": ["00000", "00001"],
            }
        }
    }
    (gt_dir / "meta_expressions.json").write_text(json.dumps(meta))
    (gt_dir / "mask_dict.json").write_text(json.dumps({"10": [_rle(a), _rle(a)], "11": [_rle(b), None]}))
    for t in range(2):
        _gray_png(tmp_path / "pred" / "v" / "0" / f"{t:05d}.png", a | b)  # union predicted in both frames
        _gray_png(tmp_path / "pred" / "v" / "1" / f"{t:05d}.png", a)
    result = mevis.evaluate(tmp_path / "pred", tmp_path)  # finds valid_u/
    # frame 1 of expression 0: object 11 is absent, so the target is a only and the prediction a|b
    j0 = (1.0 + a.sum() / (a | b).sum()) / 2
    assert result.per_item["v/0"]["J"] == pytest.approx(j0)
    assert result.per_item["v/1"] == {"J": 1.0, "F": 1.0, "J&F": 1.0}
    assert result.metrics["J"] == pytest.approx((j0 + 1.0) / 2)
    assert result.metrics["J&F"] == pytest.approx((result.metrics["J"] + result.metrics["F"]) / 2)
    with pytest.raises(EvalInputError, match="mask_dict.json"):
        mevis.evaluate(tmp_path / "pred", tmp_path / "pred")


# -------------------------------------------------------------------------------------------------------- RefCOCO
def test_refcoco_overall_vs_mean_iou_by_hand(tmp_path: Path) -> None:
    # sample "1": gt 100 px, pred covers 50 of them and nothing else -> I=50, U=100, IoU 0.5
    # sample "2": gt 4 px, pred 4 other px -> I=0, U=8, IoU 0
    # sample "3": both empty -> IoU 1, adds nothing to I or U
    gt1 = np.zeros((20, 20), dtype=bool)
    gt1[0:10, 0:10] = True
    pr1 = np.zeros_like(gt1)
    pr1[0:5, 0:10] = True
    gt2 = np.zeros((8, 8), dtype=bool)
    gt2[0:2, 0:2] = True
    pr2 = np.zeros_like(gt2)
    pr2[6:8, 6:8] = True
    empty = np.zeros((5, 5), dtype=bool)
    for name, gt, pr in (("1", gt1, pr1), ("2", gt2, pr2), ("3", empty, empty)):
        _gray_png(tmp_path / "gt" / f"{name}.png", gt)
        _gray_png(tmp_path / "pred" / f"{name}.png", pr)
    result = refcoco.evaluate(tmp_path / "pred", tmp_path / "gt")
    assert result.metrics["oIoU"] == pytest.approx(50 / 108)
    assert result.metrics["mIoU"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert result.metrics["P@0.5"] == pytest.approx(1 / 3)  # strictly above 0.5: only the empty-empty sample
    assert result.details["intersection"] == 50 and result.details["union"] == 108


def test_refcoco_coco_json_ground_truth(tmp_path: Path) -> None:
    gt = np.zeros((10, 12), dtype=bool)
    gt[2:6, 3:9] = True
    coco = {
        "images": [{"id": 7, "height": 10, "width": 12}],
        "annotations": [{"id": 1, "image_id": 7, "segmentation": [[3, 2, 9, 2, 9, 6, 3, 6]]}],
    }
    (tmp_path / "inst.json").write_text(json.dumps(coco))
    _gray_png(tmp_path / "pred" / "7.png", gt)
    result = refcoco.evaluate(tmp_path / "pred", tmp_path / "inst.json")
    assert result.metrics["mIoU"] > 0.6  # polygon rasterisation differs from the box by a border of pixels
    (tmp_path / "pred" / "7.png").unlink()
    _gray_png(tmp_path / "pred" / "8.png", gt)
    with pytest.raises(EvalInputError, match="7.png"):
        refcoco.evaluate(tmp_path / "pred", tmp_path / "inst.json")
