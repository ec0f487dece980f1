"""J, F and per-object statistics against numbers exported from the DAVIS 2017 toolkit itself (tolerance 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sgmg.eval.boundary import boundary_map, boundary_radius, dilate, disk
from sgmg.eval.metrics import (
    f_measure,
    jaccard,
    object_statistics,
    pairwise_scores,
)

TOL = 1e-6


def _void(edge_cases: dict, key: str) -> np.ndarray | None:
    return edge_cases.get(f"{key}__void")


def test_real_masks_match_toolkit(golden: dict, davis_labels: dict) -> None:
    """jaccard/f_measure on [T,H,W] stacks of real OSVOS (annotation) vs RVOS (segmentation) objects."""
    worst_j = worst_f = 0.0
    for seq, entry in golden["pairs"].items():
        annotation, segmentation = davis_labels[seq]
        assert list(annotation.shape) == entry["shape"]
        for pair in entry["pairs"]:
            if pair["pred_id"] > 4:  # the rest are covered through pairwise_scores below
                continue
            gt, pred = annotation == pair["gt_id"], segmentation == pair["pred_id"]
            j, f = jaccard(gt, pred), f_measure(gt, pred)
            assert j.shape == f.shape == (len(entry["frames"]),)
            worst_j = max(worst_j, float(np.abs(j - pair["J"]).max()))
            worst_f = max(worst_f, float(np.abs(f - pair["F"]).max()))
    assert worst_j <= TOL and worst_f <= TOL, (worst_j, worst_f)


def test_pairwise_scores_match_toolkit_on_every_pair(golden: dict, davis_labels: dict) -> None:
    n_pairs = 0
    for seq, entry in golden["pairs"].items():
        annotation, segmentation = davis_labels[seq]
        n_gt, n_pred = int(annotation.max()), int(segmentation.max())
        j, f = pairwise_scores(annotation, segmentation, n_gt=n_gt, n_pred=n_pred)
        assert j.shape == f.shape == (n_pred, n_gt, annotation.shape[0])
        for pair in entry["pairs"]:
            np.testing.assert_allclose(j[pair["pred_id"] - 1, pair["gt_id"] - 1], pair["J"], rtol=0, atol=TOL)
            np.testing.assert_allclose(f[pair["pred_id"] - 1, pair["gt_id"] - 1], pair["F"], rtol=0, atol=TOL)
            n_pairs += 1
    assert n_pairs == 260


def test_edge_cases_match_toolkit_at_several_thresholds(golden: dict, edge_cases: dict) -> None:
    assert len(golden["edge_cases"]) == 45
    for name, expected in golden["edge_cases"].items():
        gt, pred, void = edge_cases[f"{name}__gt"], edge_cases[f"{name}__pred"], _void(edge_cases, name)
        j, f = jaccard(gt, pred, void), f_measure(gt, pred, void)
        assert isinstance(j, float) and isinstance(f, float)
        assert abs(j - expected["J"]) <= TOL, (name, j, expected["J"])
        assert abs(f - expected["F"]) <= TOL, (name, f, expected["F"])
        for th, value in expected["F_th"].items():  # includes 2.5 px: an even 6x6 footprint off its anchor
            got = f_measure(gt, pred, void, bound_th=float(th))
            assert abs(got - value) <= TOL, (name, th, got, value)


def test_named_edge_cases_have_the_toolkit_semantics(golden: dict, edge_cases: dict) -> None:
    ec = golden["edge_cases"]
    assert (ec["empty_both"]["J"], ec["empty_both"]["F"]) == (1.0, 1.0)
    assert (ec["empty_gt"]["J"], ec["empty_gt"]["F"]) == (0.0, 0.0)
    assert (ec["empty_pred"]["J"], ec["empty_pred"]["F"]) == (0.0, 0.0)
    assert ec["pixel_near"]["J"] == 0.0 and ec["pixel_near"]["F"] == 1.0  # within the disk: boundaries match
    assert ec["void_all"]["J"] == 1.0 and ec["void_all"]["F"] == 1.0


def test_stacks_use_frame_size_for_radius(golden: dict, edge_cases: dict) -> None:
    for name, expected in golden["stacks"].items():
        gt, pred = edge_cases[f"stack_{name}__gt"], edge_cases[f"stack_{name}__pred"]
        void = edge_cases.get(f"stack_{name}__void")
        assert gt.shape == (130, 12, 16)
        np.testing.assert_allclose(jaccard(gt, pred, void), expected["J"], rtol=0, atol=TOL)
        np.testing.assert_allclose(f_measure(gt, pred, void), expected["F"], rtol=0, atol=TOL)


def test_object_statistics_match_toolkit(golden: dict) -> None:
    for case in golden["statistics"]:
        values = np.array([np.nan if v is None else v for v in case["values"]])
        stats = object_statistics(values)
        assert stats.mean == pytest.approx(case["M"], abs=TOL)
        assert stats.recall == pytest.approx(case["R"], abs=TOL)
        if len(values) < 256:
            assert stats.decay == pytest.approx(case["D"], abs=TOL)
        else:  # the toolkit's uint8 bin indices wrap under NumPy 2 (255 + 1 == 0): its decay is NaN, ours is not
            assert np.isnan(case["D"]) and np.isfinite(stats.decay)


def test_radius_and_disk() -> None:
    assert boundary_radius(480, 854) == 8.0
    assert boundary_radius(600, 800) == 8.0  # diagonal exactly 1000
    assert boundary_radius(480, 1152) == 10.0
    assert boundary_radius(480, 854, bound_th=3) == 3.0
    d = disk(2)
    expected = np.array(
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=bool
    )
    np.testing.assert_array_equal(d, expected)
    assert disk(8).sum() == 197  # skimage.morphology.disk(8).sum()


def test_dilate_equals_scipy_for_symmetric_footprints() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((3, 40, 57)) > 0.97
    for radius in (1, 3, 8):
        fp = disk(radius)
        ours = dilate(masks, fp)
        ref = np.stack([ndimage.binary_dilation(m, structure=fp) for m in masks])
        np.testing.assert_array_equal(ours, ref)


def test_boundary_map_of_a_square() -> None:
    seg = np.zeros((6, 6), dtype=bool)
    seg[2:4, 2:4] = True
    b = boundary_map(seg)
    # offset towards the origin: the pixel before each edge and the object's own last row/column
    assert b[1, 1] and b[1, 2] and b[2, 1] and b[3, 3] and not b[2, 2]
    full = np.ones((5, 7), dtype=bool)
    assert not boundary_map(full).any()  # a full frame has no boundary


def test_vectorised_equals_per_frame(edge_cases: dict) -> None:
    gt, pred = edge_cases["stack_long_tiny_void__gt"], edge_cases["stack_long_tiny_void__pred"]
    void = edge_cases["stack_long_tiny_void__void"]
    stacked = f_measure(gt, pred, void)
    single = [f_measure(g, p, v) for g, p, v in zip(gt[:20], pred[:20], void[:20], strict=True)]
    np.testing.assert_allclose(stacked[:20], single, rtol=0, atol=0)


def test_pairwise_equals_single_pair_calls_with_void() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, size=(3, 30, 40))
    pred = rng.integers(0, 5, size=(3, 30, 40))
    void = rng.random((3, 30, 40)) > 0.9
    j, f = pairwise_scores(gt, pred, n_gt=3, n_pred=4, void=void)
    for p in range(4):
        for g in range(3):
            np.testing.assert_allclose(j[p, g], jaccard(gt == g + 1, pred == p + 1, void), atol=1e-12)
            np.testing.assert_allclose(f[p, g], f_measure(gt == g + 1, pred == p + 1, void), atol=1e-12)


def test_input_validation() -> None:
    a = np.zeros((4, 5), dtype=bool)
    with pytest.raises(ValueError, match="same shape"):
        jaccard(a, np.zeros((4, 6), dtype=bool))
    with pytest.raises(ValueError, match="255"):
        f_measure(a, np.full((4, 5), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W\] or \[T, H, W\]"):
        jaccard(np.zeros(5, dtype=bool), np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="void must have the shape"):
        jaccard(a, a, void=np.zeros((3, 5), dtype=bool))
    with pytest.raises(TypeError, match="dtype"):
        jaccard(a.astype(str), a)
    with pytest.raises(ValueError, match="bound_th"):
        f_measure(a, a, bound_th=0)
    # 0/1 integer masks are accepted and equal the bool result
    gt = np.zeros((4, 5), dtype=np.uint8)
    gt[1:3, 1:3] = 1
    assert jaccard(gt, gt.astype(bool)) == 1.0 and f_measure(gt, gt) == 1.0
