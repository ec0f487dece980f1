"""Ref-YouTube-VOS: the submission writer and local scoring where ground truth exists.

The official Ref-YouTube-VOS ``valid`` ground truth is held by the (CodaLab) server, which takes a ``submission.zip``
with the ``Annotations`` folder at its root::

    Annotations/<video>/<exp_id>/<frame>.png       8-bit grayscale, 0 = background, 255 = the referred object

(the layout ``inference_ytvos.py`` of the official SgMg code writes before ``zip -q -r submission.zip Annotations``).
:func:`write_expression_masks` writes those PNGs, :func:`zip_submission` builds the zip, and
:func:`check_submission` lists what is missing against a ``meta_expressions.json``.

Where the ground truth is available (this project's synthetic set, a held-out part of ``train``), :func:`evaluate`
scores the same layout as the server: per expression, J and F are averaged over the expression's frames (the referred
object is ``Annotations/<video>/<frame>.png == obj_id``), then over expressions; J&F is their mean.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sgmg.eval.common import (
    EvalInputError,
    EvalResult,
    foreground,
    raise_if_missing,
    stack_label_pngs,
    write_binary_png,
)
from sgmg.eval.metrics import f_measure, jaccard

__all__ = ["check_submission", "evaluate", "write_expression_masks", "zip_submission"]

_MISSING_SHOWN = 10


def _check_name(kind: str, name: str) -> str:
    name = str(name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{kind} {name!r} is not a valid file name (no slashes, not empty, not '.' or '..')")
    return name


def write_expression_masks(
    out_dir: str | Path, video: str, exp_id: str | int, frame_names: Sequence[str], masks: np.ndarray
) -> list[Path]:
    """Write one expression's masks as ``<out_dir>/Annotations/<video>/<exp_id>/<frame>.png`` (0/255, atomically).

    Args:
        out_dir: the submission folder (``Annotations`` is created inside it).
        video: video id.
        exp_id: expression id (the key in ``meta_expressions.json``).
        frame_names: frame names without extension, one per mask (``"00000"``, ...).
        masks: bool ``[T, H, W]`` masks at the original frame resolution.

    Returns:
        The written paths.

    Raises:
        ValueError: a name with a path separator, or a frame count that does not match ``masks``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [T, H, W], got shape {masks.shape}")
    if len(frame_names) != masks.shape[0]:
        raise ValueError(f"{len(frame_names)} frame names for {masks.shape[0]} masks of {video}/{exp_id}")
    folder = Path(out_dir) / "Annotations" / _check_name("video", video) / _check_name("exp_id", str(exp_id))
    paths = []
    for name, mask in zip(frame_names, masks, strict=True):
        path = folder / f"{_check_name('frame', name)}.png"
        write_binary_png(path, mask.astype(bool))
        paths.append(path)
    return paths


def zip_submission(out_dir: str | Path, zip_path: str | Path | None = None) -> Path:
    """Zip ``<out_dir>/Annotations`` into ``submission.zip`` with ``Annotations/`` at the archive root.

    The archive is written to a temporary name in the destination folder and renamed, so an interrupted run never
    leaves a truncated ``submission.zip``. Entries are sorted (a reproducible archive) and folders get their own
    entries, like ``zip -r submission.zip Annotations``.

    Args:
        out_dir: the folder holding ``Annotations/``.
        zip_path: destination; default ``<out_dir>/submission.zip``.

    Returns:
        The path of the zip.

    Raises:
        EvalInputError: ``<out_dir>/Annotations`` is missing or holds no PNG.
    """
    root = Path(out_dir)
    ann = root / "Annotations"
    if not ann.is_dir():
        raise EvalInputError(f"no Annotations folder in {root}; write masks with write_expression_masks first")
    files = sorted(p for p in ann.rglob("*.png") if not p.name.startswith("."))
    if not files:
        raise EvalInputError(f"{ann} holds no PNG mask")
    dest = Path(zip_path) if zip_path is not None else root / "submission.zip"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            dirs = sorted({p.relative_to(root).parent for p in files} | {Path("Annotations")})
            all_dirs = sorted({d for p in dirs for d in [p, *p.parents] if str(d) != "."}, key=lambda d: d.as_posix())
            for d in all_dirs:
                zf.writestr(zipfile.ZipInfo(d.as_posix() + "/", date_time=(1980, 1, 1, 0, 0, 0)), b"")
            for p in files:
                info = zipfile.ZipInfo(p.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, p.read_bytes())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _load_meta(path: Path) -> dict[str, dict]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise EvalInputError(f"meta_expressions file not found: {path}") from err
    except (OSError, ValueError) as err:
        raise EvalInputError(f"{path}: not a readable JSON file ({err})") from err
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise EvalInputError(f'{path}: expected {{"videos": {{video: {{"expressions": ..., "frames": [...]}}}}}}')
    return videos


def check_submission(out_dir: str | Path, meta_expressions: str | Path) -> list[str]:
    """Every ``<video>/<exp_id>/<frame>.png`` that ``meta_expressions.json`` lists but ``<out_dir>/Annotations`` lacks.

    Returns:
        Missing relative paths (empty when the submission is complete).
    """
    ann = Path(out_dir) / "Annotations"
    missing = []
    for vid, entry in sorted(_load_meta(Path(meta_expressions)).items()):
        for exp_id in sorted(entry.get("expressions", {}), key=_natural):
            for frame in entry.get("frames", []):
                rel = f"{vid}/{exp_id}/{frame}.png"
                if not (ann / rel).is_file():
                    missing.append(rel)
    return missing


def _natural(key: str) -> tuple[int, str]:
    return (int(key), "") if str(key).isdigit() else (1 << 62, str(key))


def _obj_ids(value: object, where: str) -> list[int]:
    items = value if isinstance(value, list | tuple) else [value]
    try:
        ids = [int(v) for v in items]
    except (TypeError, ValueError) as err:
        raise EvalInputError(f"{where}: obj_id {value!r} is not an object id (or list of ids)") from err
    if not ids:
        raise EvalInputError(f"{where}: empty obj_id")
    return ids


def _resolve_gt(ground_truth: Path, split: str) -> tuple[Path, Path]:
    metas = [ground_truth / "meta_expressions" / split / "meta_expressions.json"]
    metas.append(ground_truth / "meta_expressions.json")
    anns = [ground_truth / split / "Annotations", ground_truth / "Annotations"]
    meta = next((p for p in metas if p.is_file()), None)
    ann = next((p for p in anns if p.is_dir()), None)
    if meta is None or ann is None:
        raise EvalInputError(
            f"ground truth not found under {ground_truth}: expected {metas[0]} (or {metas[1]}) and {anns[0]} "
            f"(or {anns[1]}). Ref-YouTube-VOS 'valid' has no public ground truth: submit submission.zip to the "
            "server instead"
        )
    return meta, ann


def evaluate(
    predictions: str | Path,
    ground_truth: str | Path,
    split: str = "valid",
    videos: Sequence[str] | None = None,
    progress: bool = False,
) -> EvalResult:
    """Score Ref-YouTube-VOS-layout predictions against ground truth in the same layout.

    Args:
        predictions: folder holding ``Annotations/<video>/<exp_id>/<frame>.png`` (or the video folders directly).
        ground_truth: dataset root with ``meta_expressions/<split>/meta_expressions.json`` and
            ``<split>/Annotations/<video>/<frame>.png`` (palette, value = object id); or a split folder holding
            ``meta_expressions.json`` and ``Annotations/``.
        split: split name used to find the files under a dataset root.
        videos: score only these videos (default: every video of the meta file).
        progress: show a progress bar on stderr.

    Returns:
        ``metrics = {"J&F", "J", "F"}``, one ``per_item`` entry ``"<video>/<exp_id>"`` per expression.

    Raises:
        EvalInputError: missing folders/frames (all listed at once), expressions without ``obj_id``, size mismatches.
    """
    pred_root = Path(predictions)
    if (pred_root / "Annotations").is_dir():
        pred_root = pred_root / "Annotations"
    if not pred_root.is_dir():
        raise EvalInputError(f"predictions folder not found: {pred_root}")
    meta_path, ann_root = _resolve_gt(Path(ground_truth), split)
    meta = _load_meta(meta_path)
    selected = sorted(meta) if videos is None else list(videos)
    unknown = [v for v in selected if v not in meta]
    if unknown:
        raise EvalInputError(f"videos not in {meta_path}: {unknown[:_MISSING_SHOWN]}")

    missing: list[str] = []
    work: list[tuple[str, str, list[int], list[str]]] = []
    for vid in selected:
        entry = meta[vid]
        frames = [str(f) for f in entry.get("frames", [])]
        for exp_id in sorted(entry.get("expressions", {}), key=_natural):
            exp = entry["expressions"][exp_id]
            if "obj_id" not in exp:
                raise EvalInputError(
                    f"{meta_path}: expression {vid}/{exp_id} has no obj_id, so this split has no ground truth "
                    "(the Ref-YouTube-VOS server scores 'valid'; use zip_submission)"
                )
            work.append((vid, exp_id, _obj_ids(exp["obj_id"], f"{meta_path} {vid}/{exp_id}"), frames))
            for frame in frames:
                if not (pred_root / vid / exp_id / f"{frame}.png").is_file():
                    missing.append(f"{pred_root / vid / exp_id / frame}.png")
                if not (ann_root / vid / f"{frame}.png").is_file():
                    missing.append(f"{ann_root / vid / frame}.png (ground truth)")
    raise_if_missing(missing, "mask file(s)")

    per_item: dict[str, dict[str, float]] = {}
    gt_cache: tuple[str, np.ndarray] | None = None
    from tqdm import tqdm

    for vid, exp_id, obj_ids, frames in tqdm(work, desc="expressions", unit="exp", disable=not progress):
        if gt_cache is None or gt_cache[0] != vid:
            gt_cache = (vid, stack_label_pngs([ann_root / vid / f"{f}.png" for f in frames], f"ground truth of {vid}"))
        labels = gt_cache[1]
        gt = np.isin(labels, obj_ids)  # [T, H, W]
        pred = foreground(
            stack_label_pngs([pred_root / vid / exp_id / f"{f}.png" for f in frames], f"predictions of {vid}/{exp_id}")
        )
        if pred.shape != gt.shape:
            raise EvalInputError(
                f"{pred_root / vid / exp_id}: masks are {pred.shape[1:]} but the ground truth of {vid} is "
                f"{gt.shape[1:]}; resize predictions to the original frame size"
            )
        j = float(np.mean(jaccard(gt, pred))) if frames else float("nan")
        f = float(np.mean(f_measure(gt, pred))) if frames else float("nan")
        per_item[f"{vid}/{exp_id}"] = {"J": j, "F": f, "J&F": (j + f) / 2}
    return _summarise("ref-youtube-vos", per_item)


def _summarise(benchmark: str, per_item: dict[str, dict[str, float]]) -> EvalResult:
    if not per_item:
        raise EvalInputError(f"{benchmark}: nothing to score (no expressions found)")
    j = float(np.mean([v["J"] for v in per_item.values()]))
    f = float(np.mean([v["F"] for v in per_item.values()]))
    return EvalResult(benchmark=benchmark, metrics={"J&F": (j + f) / 2, "J": j, "F": f}, per_item=per_item)
