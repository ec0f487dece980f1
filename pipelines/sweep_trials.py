"""What became of a sweep's trials (:mod:`pipelines.tune`): read from Tune's ``ResultGrid`` (:func:`trial_rows`:
finished, stopped early by the scheduler, failed), each trial's MLflow run ended with that verdict
(:func:`close_trial_runs`), and the results table and plot logged on the sweep's parent run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pipelines.sweep_config import SweepConfig

TRIAL_TAG = "sgmg.trial_id"


_MLFLOW_STATUS = {"finished": "FINISHED", "stopped early": "KILLED", "failed": "FAILED"}


def trial_rows(grid: Any, cfg: SweepConfig, max_t: int) -> list[Any]:
    """What became of each trial of a ``ResultGrid``: failed (an error), stopped early (fewer reports than the
    schedule's ``max_t`` while not at ``max_steps``), or finished; best first."""
    from pipelines.sweep_report import FAILED, FINISHED, STOPPED_EARLY, TrialRow

    rows = []
    for result in grid:
        if result.config is None:
            continue
        m = dict(result.metrics or {})
        if result.error is not None:
            status = FAILED
        elif m.get("step", 0) >= cfg.job.train.max_steps or m.get("training_iteration", 0) >= max_t:
            status = FINISHED
        else:
            status = STOPPED_EARLY
        error = str(result.error)[:5000] if result.error is not None else None
        params = {k: result.config[k] for k in cfg.space}
        rows.append(TrialRow(str(m.get("trial_id", "?")), status, params, m, error=error))
    sign = -1.0 if cfg.mode == "max" else 1.0

    def key(r: Any) -> tuple[int, float]:
        value = r.metrics.get(cfg.metric)
        ok = isinstance(value, int | float) and math.isfinite(value)
        return (0, sign * value) if ok else (1, 0.0)

    return sorted(rows, key=key)


def trial_run_ids(tracking_uri: str, parent: str) -> dict[str, str]:
    from pipelines import tracking

    return {
        r.data.tags[TRIAL_TAG]: r.info.run_id
        for r in tracking.child_runs(tracking_uri, parent)
        if TRIAL_TAG in r.data.tags
    }


def close_trial_runs(tracking_uri: str, parent: str, rows: Sequence[Any]) -> dict[str, str]:
    """End every trial run under ``parent`` with what became of its trial: ``KILLED`` for one the scheduler stopped,
    ``FAILED`` for one that failed or never reported, ``FINISHED`` otherwise; every trial run gets the tag
    ``sgmg.trial_status``. Returns each trial's final status (``sweep_report`` labels) by trial id.

    Who decides: a run that its trial's own process ended ``FINISHED`` trained to the end (the process ends its run
    only when ``fit`` returns; see :func:`pipelines.tune._trial`) and stays so, even when Tune saw no report from it
    (a trial that had finished just before the sweep was killed is started again by the restored sweep, resumes at
    its last step and reports nothing). Any other run gets Tune's verdict (``rows``), over a status an older trial
    process may have written; a failed trial's run gets its error as the tag ``sgmg.error``, removed from any other.
    """
    from pipelines import tracking
    from pipelines.sweep_report import FAILED, FINISHED

    row_of = {r.trial_id: r for r in rows}
    final = {}
    for run in tracking.child_runs(tracking_uri, parent):
        trial_id = run.data.tags.get(TRIAL_TAG)
        row = row_of.get(trial_id)
        status = row.status if row is not None else FAILED
        if run.info.status == "FINISHED":
            status = FINISHED
        tags = {"sgmg.trial_status": status}
        if status == FAILED and row is not None and row.error:
            tags[tracking.ERROR_TAG] = row.error
        if run.info.status != _MLFLOW_STATUS[status]:
            tracking.end_run(tracking_uri, run.info.run_id, _MLFLOW_STATUS[status], tags=tags)
        else:
            tracking.log_to_run(tracking_uri, run.info.run_id, tags=tags)
        if status != FAILED and tracking.ERROR_TAG in run.data.tags:
            tracking.delete_tag(tracking_uri, run.info.run_id, tracking.ERROR_TAG)
        if trial_id is not None:
            final[trial_id] = status
    return final


def log_sweep_results(
    cfg: SweepConfig, rows: Sequence[Any], tracking_uri: str, parent: str, best: dict[str, Any], best_trial: Any
) -> None:
    """The results table (CSV, Markdown) and the metric-vs-hyperparameter plot on the parent run, and the best
    trial's metric as the parent's."""
    import tempfile

    from pipelines import sweep_report, tracking

    log_keys = [k for k, spec in cfg.space.items() if "loguniform" in spec]
    with tempfile.TemporaryDirectory(prefix="sgmg-sweep-") as tmp:
        sweep_report.write(rows, cfg.metric, tmp, title=f"Sweep {cfg.name}", log_scale=log_keys)
        tracking.log_to_run(
            tracking_uri,
            parent,
            metrics={f"best_{cfg.metric}": best.get(cfg.metric, math.nan)},
            tags={"sgmg.best_trial": str(best_trial)},
            artifacts=tmp,
            artifact_path="sweep",
        )
