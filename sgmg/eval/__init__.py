"""Evaluation: J/F metrics with the DAVIS 2017 toolkit's semantics, benchmark protocols and submission writers.

* :mod:`sgmg.eval.metrics` -- ``jaccard``, ``f_measure``, ``object_statistics``, ``pairwise_scores``.
* :mod:`sgmg.eval.ref_davis` -- Ref-DAVIS17 (unsupervised protocol, Hungarian matching, mean over 4 annotator runs).
* :mod:`sgmg.eval.ref_ytvos` -- Ref-YouTube-VOS submission writer/zip and local scoring where ground truth exists.
* :mod:`sgmg.eval.mevis` -- MeViS (union of the referred objects).
* :mod:`sgmg.eval.refcoco` -- RefCOCO/+/g overall and mean IoU, P@k.
* :mod:`sgmg.eval.evaluate` -- ``evaluate(benchmark, predictions, ground_truth)``; CLI in :mod:`sgmg.eval.commands`.
"""

from __future__ import annotations

from sgmg.eval.common import EvalInputError, EvalResult
from sgmg.eval.metrics import f_measure, jaccard, object_statistics

__all__ = ["EvalInputError", "EvalResult", "f_measure", "jaccard", "object_statistics"]
