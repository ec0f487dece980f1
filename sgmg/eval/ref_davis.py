"""Ref-DAVIS17: the DAVIS 2017 *unsupervised* protocol, run once per annotator and averaged.

Protocol (the official SgMg ``inference_davis.py`` + ``eval_davis.py``, i.e. the davis2017 toolkit's ``unsupervised``
task, see ``DAVISEvaluation._evaluate_unsupervised``):

* Predictions are palette PNGs ``<predictions>/anno_<k>/<video>/<frame>.png`` (pixel value = predicted object id), one
  folder per annotator run ``k = 0..3``; a predictions folder without ``anno_*`` sub-folders is a single run.
* Ground truth is ``Annotations_unsupervised/480p/<video>/<frame>.png`` (palette, value = object id, 255 = void) under
  the DAVIS folder; the videos are listed by ``ImageSets/2017/val.txt`` when present, else every annotation folder.
* Per video, every frame of the ground truth is scored. The ground-truth objects are ids ``1..max(first frame)`` (the
  toolkit counts objects on the first frame only); the predicted objects are ids ``1..max(all frames)`` (at most 20),
  padded with empty objects up to the ground-truth count. J and F of every (prediction, object) pair are computed with
  void pixels excluded, and predictions are matched to objects by the Hungarian assignment
  (``scipy.optimize.linear_sum_assignment``) maximising ``(mean_t J + mean_t F) / 2``.
* Each matched object contributes its mean, recall and decay of J and F; the run's J-Mean, J-Recall, ... are means over
  all objects of all videos and J&F is ``(J-Mean + F-Mean) / 2``. The reported number is the mean over the 4 runs.

``per_item`` is keyed ``<run>/<video>/<gt object id>`` (the toolkit's per-object CSV numbers objects in the order of the
matched predictions instead; the global numbers are the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sgmg.eval.common import EvalInputError, EvalResult, raise_if_missing, stack_label_pngs
from sgmg.eval.metrics import object_statistics, pairwise_scores

__all__ = ["MAX_PROPOSALS", "VOID_LABEL", "evaluate", "match_video"]

MAX_PROPOSALS = 20  # the toolkit's limit on predicted object ids per video
VOID_LABEL = 255
_ANN_DIRS = ("Annotations_unsupervised/480p", "Annotations_unsupervised", "Annotations/480p", "Annotations")
_METRIC_NAMES = ("J&F", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
_MISSING_SHOWN = 10


def match_video(
    gt_labels: np.ndarray, pred_labels: np.ndarray, bound_th: float = 0.008
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unsupervised-protocol matching of one video: J and F per frame of each ground-truth object's matched prediction.

    Args:
        gt_labels: int ``[T, H, W]`` ground-truth ids (0 background, 255 void).
        pred_labels: int ``[T, H, W]`` predicted ids (0 background, at most :data:`MAX_PROPOSALS`).
        bound_th: F boundary tolerance.

    Returns:
        ``(j, f, pred_ids)``: float ``[G, T]`` J and F in the toolkit's row order (sorted by matched prediction), and
        int ``[G, 2]`` pairs ``(gt id, pred id)`` for each row (pred id above the predicted count = an empty pad).

    Raises:
        ValueError: shapes differ or more than :data:`MAX_PROPOSALS` predicted ids.
    """
    gt_labels = np.asarray(gt_labels)
    pred_labels = np.asarray(pred_labels)
    if gt_labels.shape != pred_labels.shape or gt_labels.ndim != 3:
        raise ValueError(f"gt and pred label maps must both be [T, H, W], got {gt_labels.shape}, {pred_labels.shape}")
    void = gt_labels == VOID_LABEL
    gt = np.where(void, 0, gt_labels)
    n_gt = int(gt[0].max()) if gt.size else 0
    n_pred = int(pred_labels.max()) if pred_labels.size else 0
    if n_pred > MAX_PROPOSALS:
        raise ValueError(f"predicted object id {n_pred} exceeds the protocol's maximum of {MAX_PROPOSALS} proposals")
    n_rows = max(n_pred, n_gt)  # empty pads when there are fewer predictions than objects
    j, f = pairwise_scores(
        gt, pred_labels, n_gt=n_gt, n_pred=n_rows, void=void if void.any() else None, bound_th=bound_th
    )  # [P, G, T]
    from scipy.optimize import linear_sum_assignment

    score = (j.mean(axis=2) + f.mean(axis=2)) / 2  # [P, G]
    rows, cols = linear_sum_assignment(-score)
    pairs = np.stack([cols + 1, rows + 1], axis=1)
    return j[rows, cols], f[rows, cols], pairs


def _annotation_dir(gt_root: Path) -> Path:
    for rel in _ANN_DIRS:
        if (gt_root / rel).is_dir():
            return gt_root / rel
    raise EvalInputError(
        f"no DAVIS annotations under {gt_root}: expected one of {', '.join(_ANN_DIRS)} "
        "(pass the DAVIS folder, e.g. .../DAVIS or the converted .../valid folder)"
    )


def _videos(gt_root: Path, ann_dir: Path, videos: Sequence[str] | None) -> list[str]:
    if videos is not None:
        names = list(videos)
    elif (gt_root / "ImageSets" / "2017" / "val.txt").is_file():
        names = [ln.strip() for ln in (gt_root / "ImageSets" / "2017" / "val.txt").read_text().splitlines()]
        names = [n for n in names if n]
    else:
        names = sorted(p.name for p in ann_dir.iterdir() if p.is_dir())
    missing = [n for n in names if not (ann_dir / n).is_dir()]
    if missing:
        raise EvalInputError(f"ground-truth folders missing in {ann_dir}: {missing[:_MISSING_SHOWN]}")
    if not names:
        raise EvalInputError(f"no videos to score in {ann_dir}")
    return names


def _runs(pred_root: Path) -> list[tuple[str, Path]]:
    if not pred_root.is_dir():
        raise EvalInputError(f"predictions folder not found: {pred_root}")
    runs = sorted((p.name, p) for p in pred_root.iterdir() if p.is_dir() and p.name.startswith("anno_"))
    return runs or [("", pred_root)]


def evaluate(
    predictions: str | Path,
    ground_truth: str | Path,
    videos: Sequence[str] | None = None,
    bound_th: float = 0.008,
    progress: bool = False,
) -> EvalResult:
    """Score Ref-DAVIS17 predictions with the unsupervised protocol, averaged over annotator runs.

    Args:
        predictions: folder with ``anno_0..anno_3/<video>/<frame>.png`` (or ``<video>/<frame>.png`` for one run).
        ground_truth: DAVIS folder holding ``Annotations_unsupervised/480p`` (and optionally ``ImageSets/2017``).
        videos: score only these videos (default: ``val.txt`` or every annotated video).
        bound_th: F boundary tolerance.
        progress: show a progress bar on stderr.

    Returns:
        ``metrics``: J&F, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay, each the mean over runs;
        ``details["runs"]``: the same per run.

    Raises:
        EvalInputError: missing folders or frames (all listed at once), sizes that differ, more than 20 predicted ids.
    """
    gt_root, pred_root = Path(ground_truth), Path(predictions)
    ann_dir = _annotation_dir(gt_root)
    names = _videos(gt_root, ann_dir, videos)
    runs = _runs(pred_root)
    frames = {v: sorted(p.stem for p in (ann_dir / v).glob("*.png")) for v in names}
    missing = [
        str(run_dir / v / f"{fr}.png")
        for _, run_dir in runs
        for v in names
        for fr in frames[v]
        if not (run_dir / v / f"{fr}.png").is_file()
    ]
    raise_if_missing(missing, "predicted frame(s)")

    per_run: dict[str, dict[str, float]] = {}
    per_item: dict[str, dict[str, float]] = {}
    stats: dict[str, list[list[float]]] = {name: [[] for _ in range(6)] for name, _ in runs}
    from tqdm import tqdm

    for v in tqdm(names, desc="ref-davis videos", unit="video", disable=not progress):
        gt = stack_label_pngs([ann_dir / v / f"{fr}.png" for fr in frames[v]], f"ground truth of {v}")
        for run_name, run_dir in runs:
            pred = stack_label_pngs([run_dir / v / f"{fr}.png" for fr in frames[v]], f"predictions {run_dir / v}")
            if pred.shape != gt.shape:
                raise EvalInputError(
                    f"{run_dir / v}: masks are {pred.shape[1:]} but the ground truth is {gt.shape[1:]}"
                )
            try:
                j, f, pairs = match_video(gt, pred, bound_th=bound_th)
            except ValueError as err:
                raise EvalInputError(f"{run_dir / v}: {err}") from err
            for row in range(j.shape[0]):
                js, fs = object_statistics(j[row]), object_statistics(f[row])
                for k, value in enumerate((js.mean, js.recall, js.decay, fs.mean, fs.recall, fs.decay)):
                    stats[run_name][k].append(value)
                key = f"{run_name}/{v}/{int(pairs[row, 0])}" if run_name else f"{v}/{int(pairs[row, 0])}"
                per_item[key] = {
                    "J": js.mean,
                    "F": fs.mean,
                    "J&F": (js.mean + fs.mean) / 2,
                    "pred_id": float(pairs[row, 1]),
                }
    for run_name, values in stats.items():
        if not values[0]:
            raise EvalInputError(f"no ground-truth objects to score in {ann_dir}")
        jm, jr, jd, fm, fr, fd = (float(np.mean(x)) for x in values)
        per_run[run_name or "run"] = dict(zip(_METRIC_NAMES, ((jm + fm) / 2, jm, jr, jd, fm, fr, fd), strict=True))
    metrics = {m: float(np.mean([r[m] for r in per_run.values()])) for m in _METRIC_NAMES}
    return EvalResult(benchmark="ref-davis", metrics=metrics, per_item=per_item, details={"runs": per_run})
