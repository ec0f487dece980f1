"""RefCOCO / RefCOCO+ / RefCOCOg: overall IoU, mean IoU and precision@k of one mask per referring sample.

Definitions (as in the MTTR/ReferFormer/SgMg evaluation, ``datasets/a2d_eval.py``): for each sample the intersection
``I`` and union ``U`` of the predicted and ground-truth masks are counted; **overall IoU** is ``sum(I) / sum(U)`` over
all samples (large objects weigh more), **mean IoU** the mean of the per-sample ``I / U``, and **P@k** the fraction of
samples with IoU above ``k`` for k in 0.5..0.9. A sample where both masks are empty has IoU 1 (the reference adds
``1e-6`` to ``I`` and ``U``, which gives 1 there and differs elsewhere by less than ``1e-6 / U``).

On disk (:func:`evaluate`): predictions are ``<predictions>/<sample>.png`` (non-zero = foreground). The ground truth is
either a COCO-format JSON (the official conversion ``instances_<dataset>_<split>.json`` has one "image" per sentence;
``<sample>`` is the image ``id`` and its annotations' segmentations, polygons or RLE, are merged) or a folder of PNG
masks with the same file names as the predictions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sgmg.data import rle
from sgmg.eval.common import EvalInputError, EvalResult, foreground, raise_if_missing, read_label_png

__all__ = ["PRECISION_THRESHOLDS", "IoUAccumulator", "evaluate"]

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class IoUAccumulator:
    """Running overall/mean IoU over samples: call :meth:`update` per sample, then :meth:`result`."""

    intersection: int = 0
    union: int = 0
    ious: dict[str, float] = field(default_factory=dict)

    def update(self, name: str, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one sample (bool ``[H, W]`` masks of the same shape); returns its IoU."""
        pred = np.asarray(pred, dtype=bool)
        gt = np.asarray(gt, dtype=bool)
        if pred.shape != gt.shape:
            raise ValueError(f"sample {name}: pred {pred.shape} and gt {gt.shape} differ in shape")
        inter = int(np.count_nonzero(pred & gt))
        union = int(np.count_nonzero(pred | gt))
        iou = 1.0 if union == 0 else inter / union
        self.intersection += inter
        self.union += union
        self.ious[name] = iou
        return iou

    def result(self) -> EvalResult:
        """``metrics``: oIoU, mIoU and P@0.5 .. P@0.9; ``per_item``: each sample's IoU."""
        if not self.ious:
            raise EvalInputError("refcoco: no samples were scored")
        values = np.array(list(self.ious.values()))
        metrics = {
            "oIoU": 1.0 if self.union == 0 else self.intersection / self.union,
            "mIoU": float(values.mean()),
        }
        for k in PRECISION_THRESHOLDS:
            metrics[f"P@{k}"] = float(np.mean(values > k))
        per_item = {name: {"IoU": iou} for name, iou in self.ious.items()}
        details = {"intersection": self.intersection, "union": self.union, "samples": len(self.ious)}
        return EvalResult(benchmark="refcoco", metrics=metrics, per_item=per_item, details=details)


def _coco_ground_truth(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise EvalInputError(f"{path}: not a readable COCO JSON file ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" not in data:
        raise EvalInputError(f"{path}: expected a COCO-format file with 'images' and 'annotations'")
    by_image: dict[object, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    for image in data["images"]:
        name = str(image["id"])
        height, width = int(image["height"]), int(image["width"])
        mask = np.zeros((height, width), dtype=bool)
        for ann in by_image.get(image["id"], []):
            seg = ann.get("segmentation")
            try:
                mask |= rle.decode_segmentation(seg, height, width)
            except ValueError as err:
                raise EvalInputError(f"{path}: bad segmentation in annotation {ann.get('id')} ({err})") from err
        yield name, mask


def _png_ground_truth(folder: Path, names: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    for name in names:
        yield name, foreground(read_label_png(folder / f"{name}.png"))


def evaluate(predictions: str | Path, ground_truth: str | Path, progress: bool = False) -> EvalResult:
    """Score RefCOCO-style predictions (see the module docstring).

    Args:
        predictions: folder of ``<sample>.png`` masks.
        ground_truth: a COCO-format JSON file, or a folder of ``<sample>.png`` ground-truth masks.
        progress: show a progress bar on stderr.

    Raises:
        EvalInputError: missing prediction files (listed), unreadable ground truth, size mismatches.
    """
    pred_root, gt_path = Path(predictions), Path(ground_truth)
    if not pred_root.is_dir():
        raise EvalInputError(f"predictions folder not found: {pred_root}")
    if gt_path.is_file():
        samples = _coco_ground_truth(gt_path)
    elif gt_path.is_dir():
        names = sorted(p.stem for p in gt_path.glob("*.png"))
        if not names:
            raise EvalInputError(f"no ground-truth PNG masks in {gt_path}")
        samples = _png_ground_truth(gt_path, names)
    else:
        raise EvalInputError(f"ground truth not found: {gt_path} (a COCO JSON file or a folder of PNG masks)")
    acc = IoUAccumulator()
    missing: list[str] = []
    from tqdm import tqdm

    for name, gt in tqdm(samples, desc="refcoco samples", unit="sample", disable=not progress):
        path = pred_root / f"{name}.png"
        if not path.is_file():
            missing.append(str(path))
            continue
        pred = foreground(read_label_png(path))
        if pred.shape != gt.shape:
            raise EvalInputError(f"{path}: mask is {pred.shape} but the ground truth of sample {name} is {gt.shape}")
        acc.update(name, pred, gt)
    raise_if_missing(missing, "predicted mask(s)")
    return acc.result()
