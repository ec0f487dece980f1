"""MLflow tracking of training runs: the only module of the project that talks to MLflow.

Model registry: :func:`register_checkpoint` makes a checkpoint a version of a registered model (an MLflow pyfunc
whose artifact is the checkpoint) and points an alias at it (``champion``, what Serve loads);
:func:`load_registered_model` reads ``models:/NAME@ALIAS`` back as the torch module.

A :class:`RunTracker` is opened by rank 0 of a Ray Train run (every other rank gets a no-op one): it creates or reopens
an MLflow run, logs the flattened config as params, metrics by optimizer step, and the checkpoint files as artifacts.

Why not ``ray.air.integrations.mlflow.setup_mlflow``: it always creates a new MLflow run, so a Ray Train run that
restarts from its checkpoint (worker failure, or the driver rerun with the same ``RunConfig(name=...)``) would split
its history over two MLflow runs. The tracker stores its run id in the training checkpoint and reattaches to it.

Tracking URIs: ``sqlite:///ABS/PATH/mlflow.db`` (the one-machine default, :func:`default_tracking_uri`), a file
store, or ``http(s)://`` tracking server (the multi-node setting: every node must reach it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
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
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten_params(value, name + ".")
        else:
            out[name] = str(value)[:_MAX_PARAM_CHARS]
    return out


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
    """Point MLflow's fluent API (tracking and registry) at ``tracking_uri`` for a block, then restore it."""
    import mlflow

    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])


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


# ------------------------------------------------------------------------------------------------ model registry

CHAMPION = "champion"


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
            import numpy as np
            from pycocotools import mask as mask_utils

            import sgmg

            rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
            predictor = sgmg.RVOSPredictor(self.model, sgmg.load_tokenizer(self.model.config.text.tokenizer_source))
            out = []
            for row in rows:
                pred = predictor.predict(row["video"], row["text"])
                rles = mask_utils.encode(np.asfortranarray(pred.masks.transpose(1, 2, 0).astype(np.uint8)))
                out.append(
                    {
                        "masks": [{"size": r["size"], "counts": r["counts"].decode()} for r in rles],
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
    alias: str = CHAMPION,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Register a local checkpoint folder as a new version of ``model_name`` and point ``alias`` at it.

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
    missing = [n for n in ("model.safetensors", "config.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a model checkpoint: {missing} missing")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="sgmg-register-") as tmp, _mlflow_uris(tracking_uri):
        clean = Path(tmp) / "checkpoint"  # only the model files: not the optimizer state of a training checkpoint
        clean.mkdir()
        for name in ("model.safetensors", "config.json"):
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
    client.set_registered_model_alias(model_name, alias, version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, version, key, value)
    return version


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
