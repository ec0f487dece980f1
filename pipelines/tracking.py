"""MLflow tracking of training runs: the only module of the project that talks to MLflow.

A :class:`RunTracker` is opened by rank 0 of a Ray Train run (every other rank gets a no-op one): it creates or reopens
an MLflow run, logs the flattened config as params, metrics by optimizer step, and the checkpoint files as artifacts.

Why not ``ray.air.integrations.mlflow.setup_mlflow``: it always creates a new MLflow run, so a Ray Train run that
restarts from its checkpoint (worker failure, or the driver rerun with the same ``RunConfig(name=...)``) would split
its history over two MLflow runs. The tracker stores its run id in the training checkpoint and reattaches to it.

Tracking URIs: ``sqlite:///ABS/PATH/mlflow.db`` (the one-machine default, :func:`default_tracking_uri`), a file
store, or ``http(s)://`` tracking server (the multi-node setting: every node must reach it).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MAX_PARAM_CHARS = 6000  # MLflow 3 rejects longer param values


def default_tracking_uri(work_dir: str | os.PathLike = ".") -> str:
    """``sqlite:///<abs work_dir>/mlflow.db`` (the embedded default; the folder is created)."""
    path = Path(work_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 1e-4}}`` -> ``{"optim.lr": "0.0001"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten_params(value, name + ".")
        else:
            out[name] = str(value)[:_MAX_PARAM_CHARS]
    return out


class RunTracker:
    """One MLflow run of a training job (rank 0), or a no-op (other ranks, or tracking disabled).

    Args:
        tracking_uri: MLflow tracking URI; None disables tracking.
        experiment: experiment name (created when missing).
        run_name: the run's name (the Ray Train run name).
        run_id: reattach to this run (resumed job); None starts a new run.
        params: logged once, when the run is new (flattened with :func:`flatten_params`).
        tags: set on the run.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        run_name: str,
        *,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.run_id: str | None = None
        self._client = None
        if tracking_uri is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        experiment_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        if run_id is not None:
            try:
                client.get_run(run_id)
            except Exception:  # noqa: BLE001 - MlflowException for a run of another store: start afresh
                logger.warning("MLflow run %s not found at %s; starting a new run", run_id, tracking_uri)
                run_id = None
        if run_id is None:
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
            run_id = run.info.run_id
            items = sorted(flatten_params(params or {}).items())
            for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
                from mlflow.entities import Param

                client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        else:
            client.update_run(run_id, status="RUNNING")
        self._client = client
        self.run_id = run_id

    @property
    def active(self) -> bool:
        """True when this tracker logs (rank 0 with a tracking URI)."""
        return self._client is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log finite numeric metrics at ``step`` (non-finite values are skipped: MLflow stores them badly)."""
        if self._client is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, int(step))
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str) -> None:
        """Copy a folder's files into the run's artifacts under ``artifact_path``."""
        if self._client is not None:
            self._client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED`` (or ``FAILED`` / ``KILLED``)."""
        if self._client is not None:
            self._client.set_terminated(self.run_id, status=status)


def run_metrics(tracking_uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of a run, steps ascending (reports and tests)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    names = client.get_run(run_id).data.metrics.keys()
    return {n: sorted((m.step, m.value) for m in client.get_metric_history(run_id, n)) for n in names}
