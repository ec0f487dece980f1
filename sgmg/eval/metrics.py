"""Region (J) and boundary (F) similarity with the DAVIS 2017 evaluation toolkit's exact semantics.

The definitions follow the toolkit used by every R-VOS benchmark (Ref-YouTube-VOS, Ref-DAVIS17, MeViS): Pont-Tuset et
al., "The 2017 DAVIS Challenge on Video Object Segmentation" (arXiv 1704.00675), code at
github.com/davisvideochallenge/davis2017-evaluation (``davis2017/metrics.py``, ``davis2017/utils.py``). This is an
independent re-implementation, verified against that toolkit to 1e-6 on real DAVIS result masks and edge cases
(``tests/eval/test_metrics.py``, golden numbers in ``tests/eval/fixtures/davis_toolkit_golden.json``).

Semantics reproduced exactly:

* **J** is ``|gt & pred & ~void| / |(gt | pred) & ~void|`` per frame, and 1 when that union is empty.
* **F** zeroes both masks on void pixels, takes their 1-pixel boundary maps
  (:func:`sgmg.eval.boundary.boundary_map`, the toolkit's ``seg2bmap``: a pixel is on the boundary when it differs
  from its east, south or south-east neighbour, with the last row/column compared along the image edge only and the
  bottom-right pixel never a boundary), dilates each map with a disk of radius
  ``ceil(bound_th * sqrt(H**2 + W**2))`` pixels (``bound_th`` itself when ``bound_th >= 1``; the disk is
  scikit-image's ``disk``: offsets with ``dx**2 + dy**2 <= r**2``), and matches each boundary against the other's
  dilation. Precision is matched prediction-boundary pixels over prediction-boundary pixels, recall the same for the
  ground truth. Edge cases: no prediction boundary and some gt boundary -> P=1, R=0; the reverse -> P=0, R=1; neither
  -> P=R=1; F = 2PR/(P+R), and 0 when P+R = 0. The radius always comes from the frame size (H, W), also for
  ``[T,H,W]``.
* Per-object statistics (:func:`object_statistics`): the NaN-ignoring mean, the recall (fraction of frames with a score
  above 0.5) and the decay (mean of the first of 4 temporal bins minus the mean of the last; the bins are the
  toolkit's overlapping ``ids = round(linspace(1, T, 5)) - 1`` slices ``[ids[i], ids[i+1]]``).

The boundary maps, the disk and the matching are in :mod:`sgmg.eval.boundary`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sgmg.eval.boundary import Boundary, boundary_radius

__all__ = [
    "ObjectStatistics",
    "f_measure",
    "jaccard",
    "object_statistics",
    "pairwise_scores",
]


# ----------------------------------------------------------------------------------------------------- validation
def _check_mask(name: str, value: object) -> np.ndarray:
    """``value`` as a bool ndarray ``[H, W]`` or ``[T, H, W]``; 0/1 integer or float arrays are accepted too."""
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a bool array, got dtype {arr.dtype}")
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            example = arr[bad].flat[0]
            raise ValueError(
                f"{name} must be a binary mask (bool, or 0/1 values), but it holds the value {example!r} "
                f"(dtype {arr.dtype}); threshold it first, e.g. `{name} > 0` for a 0/255 PNG or `labels == obj_id` "
                "for a label map"
            )
        arr = arr.astype(bool)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be [H, W] or [T, H, W], got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.shape[-2] == 0:
        raise ValueError(f"{name} has an empty frame size {arr.shape[-2:]}; H and W must be positive")
    return arr


def _check_inputs(gt: object, pred: object, void: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    gt_arr = _check_mask("gt", gt)
    pred_arr = _check_mask("pred", pred)
    if gt_arr.shape != pred_arr.shape:
        raise ValueError(f"gt and pred must have the same shape, got gt {gt_arr.shape} and pred {pred_arr.shape}")
    void_arr = None
    if void is not None:
        void_arr = _check_mask("void", void)
        if void_arr.shape != gt_arr.shape:
            raise ValueError(f"void must have the shape of gt {gt_arr.shape}, got {void_arr.shape}")
    return gt_arr, pred_arr, void_arr


def _check_bound_th(bound_th: float) -> float:
    if isinstance(bound_th, bool) or not isinstance(bound_th, int | float | np.floating | np.integer):
        raise TypeError(f"bound_th must be a number, got {bound_th!r}")
    if not math.isfinite(bound_th) or bound_th <= 0:
        raise ValueError(
            f"bound_th must be a positive finite number (a fraction of the image diagonal below 1, pixels from 1 on), "
            f"got {bound_th!r}"
        )
    return float(bound_th)


# ---------------------------------------------------------------------------------------------------------------- J
def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray | float:
    """Region similarity J (intersection over union) per frame, void pixels excluded.

    Args:
        gt: bool ``[T, H, W]`` or ``[H, W]`` ground-truth mask.
        pred: bool mask of the same shape (the prediction).
        void: optional bool mask of the same shape; True pixels are ignored.

    Returns:
        float64 ``[T]`` for ``[T, H, W]`` input, a float for ``[H, W]``. A frame whose union (outside void) is empty
        scores 1.

    Raises:
        ValueError: shapes differ, a rank other than 2 or 3, or non-binary values.
        TypeError: a non-numeric dtype.
    """
    gt, pred, void = _check_inputs(gt, pred, void)
    inter = gt & pred
    union = gt | pred
    if void is not None:
        inter &= ~void
        union &= ~void
    n_inter = np.count_nonzero(inter, axis=(-2, -1))
    n_union = np.count_nonzero(union, axis=(-2, -1))
    j = np.where(n_union == 0, 1.0, n_inter / np.maximum(n_union, 1))
    return float(j) if j.ndim == 0 else j.astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------- F


def _f_from_counts(n_fg: np.ndarray, n_gt: np.ndarray, fg_match: np.ndarray, gt_match: np.ndarray) -> np.ndarray:
    """F from boundary pixel counts, with the toolkit's precision/recall edge cases (elementwise)."""
    n_fg = np.asarray(n_fg)
    n_gt = np.asarray(n_gt)
    precision = np.where(n_fg == 0, 1.0, fg_match / np.maximum(n_fg, 1).astype(np.float64))
    recall = np.where(n_gt == 0, 1.0, gt_match / np.maximum(n_gt, 1).astype(np.float64))
    precision = np.where((n_fg > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where((n_fg == 0) & (n_gt > 0), 0.0, recall)
    denom = precision + recall
    f = np.where(denom == 0, 0.0, 2 * precision * recall / np.where(denom == 0, 1.0, denom))
    return f.astype(np.float64)


def f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> np.ndarray | float:
    """Boundary similarity F per frame (DAVIS 2017 toolkit ``db_eval_boundary``), vectorised over frames.

    Args:
        gt: bool ``[T, H, W]`` or ``[H, W]`` ground-truth mask.
        pred: bool mask of the same shape (the prediction).
        void: optional bool mask of the same shape; both masks are zeroed there before taking boundaries.
        bound_th: boundary tolerance, a fraction of the frame diagonal (< 1) or pixels (>= 1). Default 0.008.

    Returns:
        float64 ``[T]`` for ``[T, H, W]`` input, a float for ``[H, W]``.

    Raises:
        ValueError: shapes differ, a rank other than 2 or 3, non-binary values, or a non-positive ``bound_th``.
        TypeError: a non-numeric dtype or ``bound_th``.
    """
    gt, pred, void = _check_inputs(gt, pred, void)
    bound_th = _check_bound_th(bound_th)
    single = gt.ndim == 2
    if single:
        gt, pred, void = gt[None], pred[None], None if void is None else void[None]
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    radius = boundary_radius(gt.shape[-2], gt.shape[-1], bound_th)
    fg, gb = Boundary(pred), Boundary(gt)
    f = _f_from_counts(fg.count, gb.count, fg.matched_by(gb, radius), gb.matched_by(fg, radius))
    return float(f[0]) if single else f


def pairwise_scores(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    n_gt: int,
    n_pred: int,
    void: np.ndarray | None = None,
    bound_th: float = 0.008,
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (predicted object, ground-truth object) pair of a video, from label maps.

    Object ``k`` is ``labels == k``; ground-truth labels above ``n_gt`` count as background, predicted labels must not
    exceed ``n_pred``. Each object's boundary is computed once (not once per pair) and the intersections of all pairs
    come from one joint histogram of the two label maps, so matching ``P`` proposals against ``G`` objects costs
    about ``P + G`` single-object evaluations. Every value equals :func:`jaccard` / :func:`f_measure` of that pair.

    Args:
        gt_labels: int ``[T, H, W]`` ground-truth object ids (0 = background).
        pred_labels: int ``[T, H, W]`` predicted object ids (0 = background).
        n_gt: number of ground-truth objects ``G`` (ids ``1..G``).
        n_pred: number of predicted objects ``P`` (ids ``1..P``; ids without pixels are empty objects).
        void: optional bool ``[T, H, W]`` pixels ignored for every object.
        bound_th: as in :func:`f_measure`.

    Returns:
        ``(j, f)``, each float64 ``[P, G, T]``.

    Raises:
        ValueError: shapes differ, or a predicted label exceeds ``n_pred``.
    """
    gt_labels = np.asarray(gt_labels)
    pred_labels = np.asarray(pred_labels)
    if gt_labels.ndim != 3 or gt_labels.shape != pred_labels.shape:
        raise ValueError(
            f"gt_labels and pred_labels must both be [T, H, W], got {gt_labels.shape}, {pred_labels.shape}"
        )
    if void is not None:
        void = np.asarray(void, dtype=bool)
        if void.shape != gt_labels.shape:
            raise ValueError(f"void must be [T, H, W] = {gt_labels.shape}, got {void.shape}")
    if pred_labels.size and (pred_labels.min() < 0 or pred_labels.max() > n_pred):
        raise ValueError(f"pred_labels must lie in 0..{n_pred}, got {pred_labels.min()}..{pred_labels.max()}")
    bound_th = _check_bound_th(bound_th)
    n_frames, height, width = gt_labels.shape
    # joint histogram [T, P+1, G+2] of (pred id, gt id) per frame; gt ids above n_gt count as background and void
    # pixels go to the spare gt bin G+1 that no score reads. Chunks of frames bound the int64 temporaries.
    n_bins = (n_pred + 1) * (n_gt + 2)
    hist = np.empty((n_frames, n_bins), dtype=np.int64)
    chunk = max(1, 4_000_000 // (height * width))
    for t0 in range(0, n_frames, chunk):
        gt_c = gt_labels[t0 : t0 + chunk].astype(np.int64)  # [t, H, W]
        gt_c[(gt_c < 0) | (gt_c > n_gt)] = 0
        if void is not None:
            gt_c[void[t0 : t0 + chunk]] = n_gt + 1
        codes = pred_labels[t0 : t0 + chunk].astype(np.int64) * (n_gt + 2) + gt_c
        codes += np.arange(codes.shape[0])[:, None, None] * n_bins
        hist[t0 : t0 + chunk] = np.bincount(codes.ravel(), minlength=codes.shape[0] * n_bins).reshape(-1, n_bins)
    hist = hist.reshape(n_frames, n_pred + 1, n_gt + 2)
    inter = hist[:, 1:, 1 : n_gt + 1].transpose(1, 2, 0)  # [P, G, T]
    pred_area = hist[:, 1:, : n_gt + 1].sum(axis=2).T  # [P, T], void excluded
    gt_area = hist[:, :, 1 : n_gt + 1].sum(axis=1).T  # [G, T]
    union = pred_area[:, None, :] + gt_area[None, :, :] - inter  # [P, G, T]
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))

    valid = None if void is None else ~void
    radius = boundary_radius(height, width, bound_th)

    def boundary(labels: np.ndarray, k: int) -> Boundary:
        mask = labels == k  # [T, H, W]
        return Boundary(mask if valid is None else mask & valid)

    gts = [boundary(gt_labels, g) for g in range(1, n_gt + 1)]
    preds = [boundary(pred_labels, p) for p in range(1, n_pred + 1)]
    f = np.empty((n_pred, n_gt, n_frames))
    for p, pb in enumerate(preds):
        for g, gb in enumerate(gts):
            f[p, g] = _f_from_counts(pb.count, gb.count, pb.matched_by(gb, radius), gb.matched_by(pb, radius))
    return j.astype(np.float64), f


# ----------------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class ObjectStatistics:
    """Per-object summary of per-frame scores, as the toolkit's ``db_statistics``.

    Attributes:
        mean: mean over frames, NaN frames ignored.
        recall: fraction of frames scoring above 0.5 (a NaN frame counts as not above).
        decay: mean of the first of 4 temporal bins minus mean of the last (positive = the score drops over time).
    """

    mean: float
    recall: float
    decay: float


def object_statistics(per_frame: np.ndarray) -> ObjectStatistics:
    """Mean, recall and decay of one object's per-frame scores (float ``[T]``), as the toolkit computes them.

    The 4 decay bins are the toolkit's overlapping slices ``[ids[i], ids[i + 1]]`` (both ends included) with
    ``ids = round(linspace(1, T, 5) + 1e-10) - 1``. (The toolkit stores ``ids`` as uint8, and under NumPy 2 its
    ``ids[4] + 1`` wraps to 0 from 256 frames on, which empties the last bin and makes its decay NaN; the indices here
    do not wrap, so the two agree up to 255 frames.)

    Raises:
        ValueError: ``per_frame`` is not 1-D or is empty.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"per_frame must be a non-empty 1-D array of per-frame scores, got shape {values.shape}")
    mean = _nanmean(values)
    recall = float(np.mean(values > 0.5))
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    first = values[ids[0] : ids[1] + 1]
    last = values[ids[3] : ids[4] + 1]
    return ObjectStatistics(mean=mean, recall=recall, decay=_nanmean(first) - _nanmean(last))


def _nanmean(values: np.ndarray) -> float:
    """``np.nanmean`` without its all-NaN warning (NaN when every value is NaN or there are none)."""
    if values.size == 0 or np.isnan(values).all():
        return float("nan")
    return float(np.nanmean(values))
