"""``models:/`` URIs of the registry (:mod:`pipelines.registry`): parsed (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``), an alias resolved to the version it names now (MLflow resolves it only once, at load), and
a version loaded as the torch module (what ``sgmg serve`` and the tests load).
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

from pipelines import tracking
from pipelines.registry import CHAMPION


def load_registered_model(tracking_uri: str, model_uri: str = f"models:/sgmg@{CHAMPION}") -> Any:
    """The torch module of a registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), in eval mode.

    Raises:
        mlflow.exceptions.MlflowException: unknown model, alias or version (the message names it).
    """
    import mlflow

    import sgmg

    with tempfile.TemporaryDirectory(prefix="sgmg-model-") as tmp, tracking.mlflow_uris(tracking_uri):
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
