"""MLflow tracking of training runs; with :mod:`pipelines.registry` and :mod:`pipelines.model_uris`, the only modules
that talk to MLflow.

A training job's MLflow run is opened on the driver, before any worker starts (:func:`open_run`): it is found by the
job's identity (its ``storage_path/name``, the tag ``sgmg.run_path``) or created, so a job that restarts (its worker
group after a failure, even before the first checkpoint, or its driver rerun with the same name) keeps one run; the
driver ends it (:func:`end_run`). Rank 0 of the workers logs into it through a :class:`RunTracker` (every other rank
gets a no-op one): metrics by optimizer step, each step at most once per metric (the steps a restarted worker group
trains again after its checkpoint are not logged twice), and the checkpoint files as artifacts. A sweep opens a parent
run and one nested run per trial (``parent_run_id``).

Why not ``ray.air.integrations.mlflow.setup_mlflow``: it always creates a new MLflow run, so a Ray Train run that
restarts would split its history over two MLflow runs.

Tracking URIs: ``sqlite:///ABS/PATH/mlflow.db`` (the one-machine default, :func:`default_tracking_uri`), a file
store, or ``http(s)://`` tracking server (the multi-node setting: every node must reach it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
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
    from sgmg.config_io import flatten

    return {k: str(v)[:_MAX_PARAM_CHARS] for k, v in flatten(tree, prefix, keep_empty=True).items()}


def _artifact_location(tracking_uri: str) -> str | None:
    """``file://<db folder>/mlartifacts`` for a sqlite tracking DB (MLflow's default, ``./mlruns``, would follow the
    current directory); None (the server decides) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()


def ensure_experiment(client: Any, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a sqlite DB) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri))


def prepare(tracking_uri: str, experiment: str) -> str:
    """Create the tracking store's tables and the experiment now, from one process (the driver): trials that start
    together on a fresh sqlite DB would otherwise race to create the tables ("table ... already exists").

    Returns:
        The experiment id.
    """
    from mlflow.tracking import MlflowClient

    return ensure_experiment(MlflowClient(tracking_uri=tracking_uri), tracking_uri, experiment)


@contextlib.contextmanager
def mlflow_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at ``tracking_uri`` for a block, then restore it, and the
    environment too (``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``, which later commands of the
    same process would take for the user's choice)."""
    import mlflow

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


RUN_PATH_TAG = "sgmg.run_path"  # the identity of a training job's run: its storage_path/name
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nested-run link
_TERMINAL = ("FINISHED", "FAILED", "KILLED")
ERROR_TAG = "sgmg.error"  # the error a run ended FAILED with


def _find_run(client: Any, experiment_id: str, key: str) -> Any | None:
    """The newest run of the experiment tagged ``sgmg.run_path = key``, or None."""
    if "'" in key:  # not expressible in a filter string: compare here
        runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
        runs = [r for r in runs if r.data.tags.get(RUN_PATH_TAG) == key]
    else:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_PATH_TAG}` = '{key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    return runs[0] if runs else None


def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    key: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """The MLflow run of the job ``key`` (its ``storage_path/name``): the existing one, set ``RUNNING`` again (a
    rerun resumes the job, and its history continues in the same run), or a new one with ``params`` logged.

    MLflow params cannot change: when a rerun's params differ (e.g. a larger ``max_steps``), the new values are set
    as tags ``sgmg.rerun.<param>`` on the run.

    Args:
        tracking_uri / experiment / run_name: where and under which name (a new run).
        key: the job's identity, stored in the tag ``sgmg.run_path``.
        params: the config (flattened with :func:`flatten_params`).
        tags: set on the run.
        parent_run_id: nest the run under this one (a sweep's trial).

    Returns:
        The run id.
    """
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, tracking_uri, experiment)
    flat = flatten_params(params or {})
    found = _find_run(client, experiment_id, key)
    if found is not None:
        run_id = found.info.run_id
        client.update_run(run_id, status="RUNNING")
        for k, v in sorted(flat.items()):
            if k in found.data.params and found.data.params[k] != v:
                client.set_tag(run_id, f"sgmg.rerun.{k}", v)
        logger.info("MLflow run %s of %s continues", run_id, key)
        return run_id
    all_tags = {**dict(tags or {}), RUN_PATH_TAG: key} | ({PARENT_TAG: parent_run_id} if parent_run_id else {})
    run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
    items = sorted(flat.items())
    for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    return run_id


def changed_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> list[str]:
    """The keys of ``params`` (flattened) whose value differs from the one the run logged."""
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.params
    return sorted(k for k, v in flatten_params(params).items() if k in logged and logged[k] != v)


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED", tags: Mapping[str, str] | None = None) -> None:
    """Mark a run ``FINISHED``, ``FAILED`` or ``KILLED`` (and set ``tags``)."""
    from mlflow.tracking import MlflowClient

    if status not in _TERMINAL:
        raise ValueError(f"status: expected one of {list(_TERMINAL)}, got {status!r}")
    client = MlflowClient(tracking_uri=tracking_uri)
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status=status)


def delete_tag(tracking_uri: str, run_id: str, key: str) -> None:
    """Remove tag ``key`` from a run."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).delete_tag(run_id, key)


def run_status(tracking_uri: str, run_id: str) -> str:
    """A run's status (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``, ``SCHEDULED``)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.status


def child_runs(tracking_uri: str, parent_run_id: str) -> list[Any]:
    """The runs nested under ``parent_run_id`` (a sweep's trials), as MLflow ``Run`` objects."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000
    )


def run_tags(tracking_uri: str, run_id: str) -> dict[str, str]:
    """A run's tags."""
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags)


def log_to_run(
    tracking_uri: str,
    run_id: str,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: str | os.PathLike | None = None,
    artifact_path: str | None = None,
) -> None:
    """Log finite ``metrics`` (step 0), set ``tags`` and copy the files of folder ``artifacts`` (under
    ``artifact_path``) into a run from the driver."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    import time

    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, 0)
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    client.log_batch(run_id, metrics=batch, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    if artifacts is not None:
        client.log_artifacts(run_id, str(artifacts), artifact_path)


class RunTracker:
    """One MLflow run of a training job (rank 0), or a no-op (other ranks, or tracking disabled).

    Reattaching to a run that already has metrics (a restarted worker group replays the steps after its checkpoint)
    logs each metric only at steps after the last one it already holds: the history keeps one value per step.

    Args:
        tracking_uri: MLflow tracking URI; None disables tracking.
        experiment: experiment name (created when missing).
        run_name: the run's name (the Ray Train run name).
        run_id: log into this run (opened by the driver, :func:`open_run`); None, or a run the store does not have,
            starts a new run.
        params: logged once, when the run is new (flattened with :func:`flatten_params`).
        tags: set on a new run.
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
        self._logged: dict[str, int] = {}
        if tracking_uri is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = ensure_experiment(client, tracking_uri, experiment)
        if run_id is not None:
            try:
                client.get_run(run_id)
            except Exception:  # noqa: BLE001 - MlflowException for a run of another store: start afresh
                logger.warning("MLflow run %s not found at %s; starting a new run", run_id, tracking_uri)
                run_id = None
        if run_id is None:
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
            run_id = run.info.run_id
            from mlflow.entities import Param

            items = sorted(flatten_params(params or {}).items())
            for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
                client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        self._client = client
        self.run_id = run_id
        self._logged = {  # metric -> the last step it holds
            name: max((m.step for m in client.get_metric_history(run_id, name)), default=-1)
            for name in client.get_run(run_id).data.metrics
        }

    @property
    def active(self) -> bool:
        """True when this tracker logs (rank 0 with a tracking URI)."""
        return self._client is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log finite numeric metrics at ``step`` (non-finite values are skipped: MLflow stores them badly), each
        only if the run holds no value of it at ``step`` or later (a replayed step)."""
        if self._client is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, int(step))
            for k, v in metrics.items()
            if isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and step > self._logged.get(k, -1)
        ]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)
            self._logged.update((m.key, m.step) for m in batch)

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
