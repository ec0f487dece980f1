"""The MLflow model registry of SgMg checkpoints.

Model registry: :func:`register_candidate` makes a checkpoint a new version of a registered model (an MLflow pyfunc
whose artifact is the checkpoint), tagged with its validation J&F (``val_jf``), the identity of the validation set
(``val_set``: a content hash of its ingest manifest), where it came from (``source``: the sweep or run) and its
config; the alias ``champion`` (what Serve loads) moves to it only when it beats the current champion on the same
validation set (:func:`decide_promotion`). :func:`promote` and :func:`rollback` move an alias by hand; every move is
logged (who, why) and the replaced versions are kept in order in a registered-model tag, which rollback pops.
:func:`pipelines.model_uris.load_registered_model` reads ``models:/NAME@ALIAS`` back as the torch module.
"""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import tracking

logger = logging.getLogger(__name__)

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
    :func:`pipelines.model_uris.load_registered_model` (Serve) reads it back as a torch module. Logged into ``run_id``
    (e.g. the best trial's training run) when given, else into a new run.

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
    with tempfile.TemporaryDirectory(prefix="sgmg-register-") as tmp, tracking.mlflow_uris(tracking_uri):
        clean = Path(tmp) / "checkpoint"  # only the model files: not the optimizer state of a training checkpoint
        clean.mkdir()
        for name in CHECKPOINT_FILES:
            shutil.copy2(folder / name, clean / name)
        if run_id:
            run = mlflow.start_run(run_id=run_id)
        else:
            experiment_id = tracking.ensure_experiment(client, tracking_uri, "sgmg-registry")
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
