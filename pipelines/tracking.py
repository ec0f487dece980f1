"""MLflow tracking of training runs: the only module of the project that talks to MLflow.

Model registry: :func:`register_candidate` makes a checkpoint a new version of a registered model (an MLflow pyfunc
whose artifact is the checkpoint), tagged with its validation J&F (``val_jf``), the identity of the validation set
(``val_set``: a content hash of its ingest manifest), where it came from (``source``: the sweep or run) and its
config; the alias ``champion`` (what Serve loads) moves to it only when it beats the current champion on the same
validation set (:func:`decide_promotion`). :func:`promote` and :func:`rollback` move an alias by hand; every move is
logged (who, why) and the replaced versions are kept in order in a registered-model tag, which rollback pops.
:func:`load_registered_model` reads ``models:/NAME@ALIAS`` back as the torch module.

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
import dataclasses
import datetime
import getpass
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
def _mlflow_uris(tracking_uri: str) -> Iterator[None]:
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


# ------------------------------------------------------------------------------------------------ model registry

CHAMPION = "champion"
CHECKPOINT_FILES = ("model.safetensors", "config.json")
# model-version tags written by register_candidate
TAG_VAL_JF, TAG_VAL_SET, TAG_SOURCE, TAG_CONFIG = "val_jf", "val_set", "source", "config"
_HISTORY_KEEP = 100  # replaced champions remembered for rollback


def _pyfunc_model_class() -> type:
    """The MLflow ``PythonModel`` of a registered SgMg checkpoint (built lazily: mlflow is imported only here)."""
    import mlflow.pyfunc

    class SgMgPyfunc(mlflow.pyfunc.PythonModel):
        """Loads ``artifacts["checkpoint"]`` (this project's safetensors + JSON format) and predicts masks.

        ``predict`` takes rows ``{"video": path or frame folder, "text": sentence}`` and returns, per row, the COCO
        RLE masks (``{"size": [H, W], "counts": str}`` per frame) and per-frame scores of the referred object.
        """

        def load_context(self, context: Any) -> None:
            import sgmg

            self.model = sgmg.load_checkpoint(context.artifacts["checkpoint"]).eval()

        def predict(
            self, context: Any, model_input: list[dict[str, str]], params: dict | None = None
        ) -> list[dict[str, Any]]:  # noqa: ARG002
            import sgmg

            rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
            predictor = sgmg.RVOSPredictor(self.model, sgmg.load_tokenizer(self.model.config.text.tokenizer_source))
            out = []
            for row in rows:
                pred = predictor.predict(row["video"], row["text"])
                out.append(
                    {
                        "masks": predictor.postprocessor.rle(pred.masks),
                        "scores": [float(s) for s in pred.scores],
                    }
                )
            return out

    return SgMgPyfunc


def register_checkpoint(
    tracking_uri: str,
    checkpoint_dir: str | os.PathLike,
    model_name: str,
    *,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Register a local checkpoint folder as a new version of ``model_name`` (no alias is moved: see
    :func:`register_candidate`).

    The version is an MLflow pyfunc model whose artifact is the checkpoint (``model.safetensors`` + ``config.json``);
    :func:`load_registered_model` (Serve) reads it back as a torch module. Logged into ``run_id`` (e.g. the best
    trial's training run) when given, else into a new run.

    Returns:
        The new version's number (a string).

    Raises:
        FileNotFoundError: ``checkpoint_dir`` lacks ``model.safetensors`` or ``config.json``.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    folder = Path(checkpoint_dir)
    missing = [n for n in CHECKPOINT_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a model checkpoint: {missing} missing")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="sgmg-register-") as tmp, _mlflow_uris(tracking_uri):
        clean = Path(tmp) / "checkpoint"  # only the model files: not the optimizer state of a training checkpoint
        clean.mkdir()
        for name in CHECKPOINT_FILES:
            shutil.copy2(folder / name, clean / name)
        if run_id:
            run = mlflow.start_run(run_id=run_id)
        else:
            experiment_id = ensure_experiment(client, tracking_uri, "sgmg-registry")
            run = mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{model_name}")
        with run:
            info = mlflow.pyfunc.log_model(
                name="sgmg",
                python_model=_pyfunc_model_class()(),
                artifacts={"checkpoint": str(clean)},
                registered_model_name=model_name,
                pip_requirements=["sgmg"],  # this project; skips MLflow's slow requirement inference
            )
    version = str(info.registered_model_version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, version, key, value)
    return version


class RegistryError(Exception):
    """A registry request that cannot be done (unknown model or version, missing files, nothing to roll back to)."""


@dataclass(frozen=True)
class Registration:
    """What :func:`register_candidate` did.

    Attributes:
        version: the new model version.
        promoted: whether the alias now points at it.
        reason: why it was (or was not) promoted.
    """

    version: str
    promoted: bool
    reason: str


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as ``sgmg registry list/show`` prints it.

    Attributes:
        version: its number.
        val_jf: validation J&F it was registered with (None when unknown).
        val_set: content hash of its validation ingest's manifest (None when unknown).
        source: the sweep or run it came from.
        aliases: aliases pointing at it.
        created: creation time (UTC, ISO 8601, seconds).
        run_id: the MLflow run it was logged into.
        tags: every tag of the version.
    """

    version: str
    val_jf: float | None
    val_set: str | None
    source: str | None
    aliases: tuple[str, ...]
    created: str
    run_id: str | None
    tags: dict[str, str]


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _version_info(mv: Any) -> VersionInfo:
    tags = dict(mv.tags or {})
    created = datetime.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=datetime.UTC)
    return VersionInfo(
        version=str(mv.version),
        val_jf=_finite_or_none(tags.get(TAG_VAL_JF)),
        val_set=tags.get(TAG_VAL_SET) or None,
        source=tags.get(TAG_SOURCE),
        aliases=tuple(sorted(mv.aliases or ())),
        created=created.isoformat(timespec="seconds"),
        run_id=mv.run_id,
        tags=tags,
    )


def _registry_client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _is_not_found(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(err).lower()


def _model_version(client: Any, model_name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as err:
        if _is_not_found(err):
            raise RegistryError(f"model {model_name!r} has no version {version!r}") from None
        raise


def _alias_version(client: Any, model_name: str, alias: str) -> Any | None:
    """The version ``alias`` points at, None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if _is_not_found(err):
            return None
        raise


def decide_promotion(val_jf: float | None, val_set: str | None, champion: VersionInfo | None) -> tuple[bool, str]:
    """Whether a new version with ``val_jf`` on the validation set ``val_set`` replaces ``champion``, and why.

    It does only with a strictly higher J&F on the same validation set. A champion without a J&F or a validation-set
    hash, or scored on another set, is not comparable: it stays (move it by hand with ``sgmg registry promote``). A
    candidate without both is never promoted automatically. With no champion yet, a scored candidate becomes it.
    """
    if val_jf is None or not val_set:
        return False, "the new version has no validation J&F (val_jf) and validation-set hash; promote it by hand"
    if champion is None:
        return True, f"no champion yet; val_jf {val_jf:.4f}"
    if champion.val_jf is None or not champion.val_set:
        return False, (
            f"the champion (version {champion.version}) has no recorded val_jf or validation set, so the new val_jf "
            f"{val_jf:.4f} cannot be compared; promote by hand if it is better"
        )
    if champion.val_set != val_set:
        return False, (
            f"the champion (version {champion.version}) was scored on another validation set ({champion.val_set[:12]} "
            f"vs {val_set[:12]}); val_jf {val_jf:.4f} vs {champion.val_jf:.4f} are not comparable"
        )
    if val_jf > champion.val_jf:
        return True, f"val_jf {val_jf:.4f} > champion (version {champion.version}) {champion.val_jf:.4f}"
    return False, f"val_jf {val_jf:.4f} <= champion (version {champion.version}) {champion.val_jf:.4f}"


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def _history_key(alias: str) -> str:
    return f"sgmg.alias_history.{alias}"


def alias_history(tracking_uri: str, model_name: str, alias: str = CHAMPION) -> list[dict[str, str]]:
    """The versions ``alias`` pointed at before, oldest first: ``{"version", "replaced_by", "at", "who", "why"}``."""
    from mlflow.exceptions import MlflowException

    try:
        model = _registry_client(tracking_uri).get_registered_model(model_name)
    except MlflowException as err:
        if _is_not_found(err):
            raise RegistryError(f"no registered model {model_name!r} at {tracking_uri}") from None
        raise
    raw = (model.tags or {}).get(_history_key(alias))
    return json.loads(raw) if raw else []


def _move_alias(client: Any, model_name: str, alias: str, version: str, why: str, *, record: bool) -> None:
    """Point ``alias`` at ``version``, remember the replaced version when ``record`` and log who moved it and why."""
    current = _alias_version(client, model_name, alias)
    previous = str(current.version) if current is not None else None
    who = _who()
    if record and previous is not None and previous != str(version):
        model = client.get_registered_model(model_name)
        raw = (model.tags or {}).get(_history_key(alias))
        history = json.loads(raw) if raw else []
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        history.append({"version": previous, "replaced_by": str(version), "at": at, "who": who, "why": why})
        client.set_registered_model_tag(model_name, _history_key(alias), json.dumps(history[-_HISTORY_KEEP:]))
    client.set_registered_model_alias(model_name, alias, str(version))
    logger.info(
        "models:/%s@%s moved from version %s to %s by %s: %s",
        model_name,
        alias,
        previous or "(none)",
        version,
        who,
        why,
    )


def register_candidate(
    tracking_uri: str,
    checkpoint_dir: str | os.PathLike,
    model_name: str,
    *,
    val_jf: float | None,
    val_set: str | None,
    source: str,
    config: Mapping[str, Any] | None = None,
    alias: str = CHAMPION,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Registration:
    """Register a checkpoint as a new version of ``model_name`` and move ``alias`` to it only if it is better.

    Tags of the version: ``val_jf``, ``val_set`` (the validation ingest's manifest hash), ``source`` (e.g.
    ``sweep:NAME`` or ``run:NAME``), ``config`` (JSON) and ``tags``. The alias moves as :func:`decide_promotion`
    says; the reason is logged either way and returned.

    Raises:
        FileNotFoundError: ``checkpoint_dir`` is not a model checkpoint.
    """
    val_jf = _finite_or_none(val_jf)
    all_tags = {TAG_SOURCE: source, **dict(tags or {})}
    if val_jf is not None:
        all_tags[TAG_VAL_JF] = repr(val_jf)
    if val_set:
        all_tags[TAG_VAL_SET] = val_set
    if config is not None:
        all_tags[TAG_CONFIG] = json.dumps(config, sort_keys=True, default=str)[:100_000]
    version = register_checkpoint(tracking_uri, checkpoint_dir, model_name, run_id=run_id, tags=all_tags)
    client = _registry_client(tracking_uri)
    current = _alias_version(client, model_name, alias)
    champion = _version_info(current) if current is not None else None
    promote_it, reason = decide_promotion(val_jf, val_set, champion)
    if promote_it:
        _move_alias(client, model_name, alias, version, f"automatic ({source}): {reason}", record=True)
    else:
        logger.info("models:/%s version %s registered, %s not moved: %s", model_name, version, alias, reason)
    return Registration(version=version, promoted=promote_it, reason=reason)


def list_versions(tracking_uri: str, model_name: str) -> list[VersionInfo]:
    """Every version of ``model_name``, newest first.

    Raises:
        RegistryError: no such registered model.
    """
    client = _registry_client(tracking_uri)
    alias_history(tracking_uri, model_name)  # raises for an unknown model
    found = client.search_model_versions(f"name='{model_name}'")
    # search results may lack aliases in some stores: read each version (few)
    infos = [_version_info(client.get_model_version(model_name, mv.version)) for mv in found]
    return sorted(infos, key=lambda v: int(v.version), reverse=True)


def get_version(tracking_uri: str, model_name: str, version: str | None = None, alias: str = CHAMPION) -> VersionInfo:
    """One version (``version``, or the one ``alias`` points at).

    Raises:
        RegistryError: unknown model, version, or alias.
    """
    client = _registry_client(tracking_uri)
    if version is None:
        alias_history(tracking_uri, model_name)  # raises for an unknown model
        mv = _alias_version(client, model_name, alias)
        if mv is None:
            raise RegistryError(f"model {model_name!r} has no version with the alias {alias!r}")
        return _version_info(mv)
    return _version_info(_model_version(client, model_name, version))


def missing_files(tracking_uri: str, model_name: str, version: str) -> list[str]:
    """The checkpoint files (``model.safetensors``, ``config.json``) that cannot be found in the version's artifacts
    (empty: it can be loaded).

    Raises:
        RegistryError: unknown model or version.
    """
    import mlflow.artifacts

    client = _registry_client(tracking_uri)
    _model_version(client, model_name, version)
    root = client.get_model_version_download_uri(model_name, str(version)).rstrip("/")
    try:
        listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{root}/artifacts/checkpoint", tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001 - a missing folder or an unreachable store: nothing can be found
        listed = []
    present = {Path(f.path).name for f in listed if not f.is_dir and (f.file_size is None or f.file_size > 0)}
    return [n for n in CHECKPOINT_FILES if n not in present]


def promote(tracking_uri: str, model_name: str, version: str, *, alias: str = CHAMPION, why: str = "") -> str | None:
    """Point ``alias`` at ``version`` by hand (whatever its metrics), keeping the replaced version for rollback.

    Returns:
        The version the alias pointed at before (None: none).

    Raises:
        RegistryError: unknown model or version, or its checkpoint files cannot be found.
    """
    client = _registry_client(tracking_uri)
    _model_version(client, model_name, version)
    missing = missing_files(tracking_uri, model_name, version)
    if missing:
        raise RegistryError(
            f"version {version} of {model_name!r} cannot be loaded: its artifacts lack checkpoint/{', '.join(missing)}"
            f" (at {client.get_model_version_download_uri(model_name, str(version))}); not promoted"
        )
    current = _alias_version(client, model_name, alias)
    _move_alias(client, model_name, alias, str(version), f"manual promotion: {why or 'no reason given'}", record=True)
    return str(current.version) if current is not None else None


def rollback(tracking_uri: str, model_name: str, *, alias: str = CHAMPION, why: str = "") -> tuple[str | None, str]:
    """Point ``alias`` back at the version it pointed at before the last move, and forget that move.

    Returns:
        ``(version it pointed at, version it points at now)``.

    Raises:
        RegistryError: unknown model, no earlier version recorded, or that version's files cannot be found.
    """
    client = _registry_client(tracking_uri)
    history = alias_history(tracking_uri, model_name, alias)
    if not history:
        raise RegistryError(f"models:/{model_name}@{alias} has no earlier version to roll back to")
    previous = history[-1]["version"]
    missing = missing_files(tracking_uri, model_name, previous)
    if missing:
        raise RegistryError(
            f"cannot roll back models:/{model_name}@{alias} to version {previous}: its artifacts lack "
            f"checkpoint/{', '.join(missing)}"
        )
    current = _alias_version(client, model_name, alias)
    client.set_registered_model_tag(model_name, _history_key(alias), json.dumps(history[:-1]))
    _move_alias(client, model_name, alias, previous, f"rollback: {why or 'no reason given'}", record=False)
    return (str(current.version) if current is not None else None), previous


def load_registered_model(tracking_uri: str, model_uri: str = f"models:/sgmg@{CHAMPION}") -> Any:
    """The torch module of a registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), in eval mode.

    Raises:
        mlflow.exceptions.MlflowException: unknown model, alias or version (the message names it).
    """
    import mlflow

    import sgmg

    with tempfile.TemporaryDirectory(prefix="sgmg-model-") as tmp, _mlflow_uris(tracking_uri):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/artifacts/checkpoint", dst_path=tmp
        )
        return sgmg.load_checkpoint(local).eval()


@dataclasses.dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version: ``models:/NAME/VERSION`` (``alias`` when it was reached through one)."""

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION`` (fixed, unlike an alias)."""
        return f"models:/{self.name}/{self.version}"


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION).

    Raises:
        ValueError: anything else, naming the two accepted forms.
    """
    rest = model_uri[len("models:/") :] if model_uri.startswith("models:/") else ""
    if "@" in rest and "/" not in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, None, version
    raise ValueError(f"model URI {model_uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION (a number)")


def resolve_model_version(tracking_uri: str, model_uri: str) -> ModelVersionRef:
    """The version ``model_uri`` names now (an alias is read from the registry at each call: MLflow itself resolves
    ``models:/NAME@ALIAS`` only once, at load time).

    Raises:
        ValueError: malformed URI.
        LookupError: unknown model, alias or version (the message names it).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_model_uri(model_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if alias is not None:
            return ModelVersionRef(name, str(client.get_model_version_by_alias(name, alias).version), alias)
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise LookupError(f"{model_uri} not found in the registry at {tracking_uri}: {exc.message}") from exc
    return ModelVersionRef(name, version)
