"""MeViS: one expression may refer to several objects; the target is the union of their masks.

Protocol (the MeViS authors' ``eval_mevis.py`` for the ``valid_u`` split, which has public ground truth):

* Ground truth: ``<split>/meta_expressions.json`` (``{"videos": {vid: {"expressions": {exp_id: {"anno_id": [...]}},
  "frames": [...]}}}``) and ``<split>/mask_dict.json`` (``{anno_id: [COCO RLE or null, one per frame]}``). The target of
  an expression in a frame is the union of its ``anno_id`` masks (an object missing in a frame contributes nothing).
* Predictions: ``<predictions>/<video>/<exp_id>/<frame>.png``, any non-zero pixel is foreground (0/255 or palette).
* Per expression, J and F are averaged over its frames (no void); J and F are then averaged over expressions and
  J&F is their mean. (The official script scores a missing *video* as J = F = 0; here every missing file is an error,
  listed by name, so an incomplete run is never mistaken for a score.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sgmg.data import rle as rle_codec
from sgmg.eval.common import EvalInputError, EvalResult, foreground, raise_if_missing, stack_label_pngs
from sgmg.eval.metrics import f_measure, jaccard

__all__ = ["decode_rle", "evaluate"]

_MISSING_SHOWN = 10


def decode_rle(rle: dict, where: str) -> np.ndarray:
    """bool ``[H, W]`` of a COCO RLE (:func:`sgmg.data.rle.decode`), an :class:`EvalInputError` naming ``where``."""
    try:
        return rle_codec.decode(rle)
    except ValueError as err:
        raise EvalInputError(f"{where}: {err}") from err


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise EvalInputError(f"MeViS ground-truth file not found: {path}") from err
    except (OSError, ValueError) as err:
        raise EvalInputError(f"{path}: not a readable JSON file ({err})") from err


def _resolve_gt(ground_truth: Path) -> Path:
    for folder in (ground_truth, ground_truth / "valid_u"):
        if (folder / "meta_expressions.json").is_file() and (folder / "mask_dict.json").is_file():
            return folder
    raise EvalInputError(
        f"MeViS ground truth not found: {ground_truth} must hold meta_expressions.json and mask_dict.json "
        "(the valid_u split; the 'valid' split is scored by the server)"
    )


def evaluate(
    predictions: str | Path, ground_truth: str | Path, videos: Sequence[str] | None = None, progress: bool = False
) -> EvalResult:
    """Score MeViS predictions (see the module docstring).

    Args:
        predictions: folder with ``<video>/<exp_id>/<frame>.png``.
        ground_truth: split folder with ``meta_expressions.json`` and ``mask_dict.json`` (or its parent holding
            ``valid_u/``).
        videos: score only these videos (default: all).
        progress: show a progress bar on stderr.

    Returns:
        ``metrics = {"J&F", "J", "F"}``, one ``per_item`` entry ``"<video>/<exp_id>"`` per expression.

    Raises:
        EvalInputError: missing files (listed), bad RLE, unknown ``anno_id``, mask sizes that differ.
    """
    pred_root = Path(predictions)
    if not pred_root.is_dir():
        raise EvalInputError(f"predictions folder not found: {pred_root}")
    gt_root, vids, mask_dict = _load_ground_truth(Path(ground_truth))
    selected = sorted(vids) if videos is None else list(videos)
    unknown = [v for v in selected if v not in vids]
    if unknown:
        raise EvalInputError(f"videos not in {gt_root / 'meta_expressions.json'}: {unknown[:_MISSING_SHOWN]}")
    missing = [
        str(pred_root / vid / exp_id / f"{frame}.png")
        for vid in selected
        for exp_id in vids[vid].get("expressions", {})
        for frame in vids[vid].get("frames", [])
        if not (pred_root / vid / exp_id / f"{frame}.png").is_file()
    ]
    raise_if_missing(missing, "predicted frame(s)")

    per_item: dict[str, dict[str, float]] = {}
    from tqdm import tqdm

    for vid in tqdm(selected, desc="mevis videos", unit="video", disable=not progress):
        frames = [str(f) for f in vids[vid].get("frames", [])]
        if not frames:
            continue
        for exp_id, exp in vids[vid].get("expressions", {}).items():
            where = f"{vid}/{exp_id}"
            paths = [pred_root / vid / exp_id / f"{fr}.png" for fr in frames]
            pred = foreground(stack_label_pngs(paths, f"predictions of {where}"))  # [T, H, W]
            gt = _target(exp.get("anno_id", []), mask_dict, pred.shape, where, pred_root)  # [T, H, W]
            j = float(np.mean(jaccard(gt, pred)))
            f = float(np.mean(f_measure(gt, pred)))
            per_item[where] = {"J": j, "F": f, "J&F": (j + f) / 2}
    if not per_item:
        raise EvalInputError(f"nothing to score in {gt_root}")
    j_mean = float(np.mean([v["J"] for v in per_item.values()]))
    f_mean = float(np.mean([v["F"] for v in per_item.values()]))
    return EvalResult(
        benchmark="mevis", metrics={"J&F": (j_mean + f_mean) / 2, "J": j_mean, "F": f_mean}, per_item=per_item
    )


def _load_ground_truth(ground_truth: Path) -> tuple[Path, dict, dict]:
    """Read the ground truth of the split at ``ground_truth`` (or its ``valid_u/``).

    Returns:
        ``(split folder, the "videos" of meta_expressions.json, mask_dict.json)``.

    Raises:
        EvalInputError: a file is missing, unreadable or not of the expected shape.
    """
    gt_root = _resolve_gt(ground_truth)
    meta = _read_json(gt_root / "meta_expressions.json")
    vids = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(vids, dict):
        raise EvalInputError(f"{gt_root / 'meta_expressions.json'}: expected a top-level 'videos' object")
    mask_dict = _read_json(gt_root / "mask_dict.json")
    if not isinstance(mask_dict, dict):
        raise EvalInputError(f"{gt_root / 'mask_dict.json'}: expected {{anno_id: [RLE or null per frame]}}")
    return gt_root, vids, mask_dict


def _target(anno_ids: Sequence, mask_dict: dict, shape: tuple[int, ...], where: str, pred_root: Path) -> np.ndarray:
    """The target of an expression: the union of its ``anno_ids``' masks per frame, bool ``shape`` ``[T, H, W]`` (an
    object missing in a frame contributes nothing).

    Raises:
        EvalInputError: an ``anno_id`` without a mask per frame, a bad RLE, or a mask size other than the prediction's.
    """
    num_frames = shape[0]
    gt = np.zeros(shape, dtype=bool)
    for anno_id in anno_ids:
        per_frame = mask_dict.get(str(anno_id))
        if not isinstance(per_frame, list) or len(per_frame) < num_frames:
            raise EvalInputError(
                f"mask_dict.json has no per-frame masks for anno_id {anno_id} of {where} (need {num_frames} entries)"
            )
        for t, rle in enumerate(per_frame[:num_frames]):
            if not rle:
                continue
            m = decode_rle(rle, f"mask_dict.json anno_id {anno_id} frame {t}")
            if m.shape != gt.shape[1:]:
                raise EvalInputError(
                    f"{pred_root / where}: predicted masks are {gt.shape[1:]} but the ground truth of "
                    f"anno_id {anno_id} is {m.shape}; resize predictions to the original frame size"
                )
            gt[t] |= m
    return gt
