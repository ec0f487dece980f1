"""A sweep's results as files: the table of trials (CSV and Markdown) and a plot of the selection metric against each
hyperparameter (PNG), written by ``sgmg sweep`` and logged on the sweep's parent MLflow run."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# what became of a trial, as the table and the trial's MLflow run say it
FINISHED, STOPPED_EARLY, FAILED = "finished", "stopped early", "failed"


@dataclass(frozen=True)
class TrialRow:
    """One trial of a sweep.

    Attributes:
        trial_id: Tune's trial id.
        status: :data:`FINISHED`, :data:`STOPPED_EARLY` (by the scheduler) or :data:`FAILED`.
        params: the sampled values (dotted job keys).
        metrics: the trial's last reported metrics (``step``, the selection metric, ...).
        run_id: the trial's MLflow run (None without tracking).
        error: why a failed trial failed.
    """

    trial_id: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    error: str | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _cell(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "" if value is None else str(value)
    return f"{number:.6g}"


def table(rows: Sequence[TrialRow], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells: trial, status, each hyperparameter, reports, step, the metric, the MLflow run."""
    keys = sorted({k for r in rows for k in r.params})
    header = ["trial", "status", *keys, "reports", "step", metric, "mlflow_run"]
    cells = [
        [
            r.trial_id,
            r.status,
            *(_cell(r.params.get(k)) for k in keys),
            _cell(r.metrics.get("training_iteration")),
            _cell(r.metrics.get("step")),
            _cell(r.metrics.get(metric)),
            r.run_id or "",
        ]
        for r in rows
    ]
    return header, cells


def to_csv(rows: Sequence[TrialRow], metric: str) -> str:
    """The table as CSV."""
    header, cells = table(rows, metric)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(cells)
    return out.getvalue()


def to_markdown(rows: Sequence[TrialRow], metric: str, title: str = "") -> str:
    """The table as Markdown (best trial first by ``metric`` when sorted by the caller)."""
    header, cells = table(rows, metric)
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def plot_metric_vs_params(
    rows: Sequence[TrialRow], metric: str, path: str | Path, log_scale: Sequence[str] = ()
) -> Path:
    """A PNG with one panel per hyperparameter: the trials' last ``metric`` against the sampled value (marker by
    status; log x axis for the keys in ``log_scale``; categorical values as they come)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r.params}) or ["(none)"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    markers = {FINISHED: "o", STOPPED_EARLY: "v", FAILED: "x"}
    for ax, key in zip(axes[0], keys, strict=True):
        for status, marker in markers.items():
            points = [
                (r.params.get(key), _number(r.metrics.get(metric)))
                for r in rows
                if r.status == status and _number(r.metrics.get(metric)) is not None
            ]
            if not points:
                continue
            xs = [x if _number(x) is not None else str(x) for x, _ in points]
            ax.scatter(xs, [y for _, y in points], marker=marker, label=status)
        if key in log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{metric} of each trial (last report)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(rows: Sequence[TrialRow], metric: str, folder: str | Path, *, title: str, log_scale: Sequence[str]) -> Path:
    """``results.csv``, ``results.md`` and ``metric_vs_params.png`` in ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text(to_csv(rows, metric))
    (folder / "results.md").write_text(to_markdown(rows, metric, title))
    plot_metric_vs_params(rows, metric, folder / "metric_vs_params.png", log_scale)
    return folder
