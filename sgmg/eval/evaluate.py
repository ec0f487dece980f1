"""One entry point for every benchmark: ``evaluate(benchmark, predictions, ground_truth) -> EvalResult``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sgmg.eval.common import EvalResult

__all__ = ["BENCHMARKS", "evaluate"]

# benchmark name -> module whose ``evaluate(predictions, ground_truth, **kwargs)`` scores it
BENCHMARKS: dict[str, str] = {
    "ref-davis": "sgmg.eval.ref_davis",
    "ref-youtube-vos": "sgmg.eval.ref_ytvos",
    "mevis": "sgmg.eval.mevis",
    "refcoco": "sgmg.eval.refcoco",
}


def evaluate(benchmark: str, predictions: str | Path, ground_truth: str | Path, **kwargs: Any) -> EvalResult:
    """Score a predictions folder against ground truth with ``benchmark``'s protocol.

    Args:
        benchmark: one of :data:`BENCHMARKS` (``ref-davis``, ``ref-youtube-vos``, ``mevis``, ``refcoco``).
        predictions: the predictions folder (layout per benchmark, see each module's docstring).
        ground_truth: the ground-truth folder or file.
        **kwargs: protocol options (``videos=[...]``, ``split="valid"`` for Ref-YouTube-VOS, ``bound_th`` for DAVIS).

    Raises:
        ValueError: an unknown benchmark.
        EvalInputError: missing or malformed inputs (a ``ValueError`` too).
    """
    import importlib

    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[benchmark]).evaluate(predictions, ground_truth, **kwargs)
