"""Settings of the Serve application: the arguments of :func:`pipelines.serve.app.build_app` and the request limits,
as frozen dataclasses validated when built (before Ray starts, in ``sgmg serve``; when the application is built, under
``serve run``/``serve deploy``/KubeRay).

The same dictionaries appear in ``pipelines/configs/serve.yaml`` under ``applications[].args`` and in the model
deployment's ``user_config``; :func:`check_serve_config` checks a whole Serve config file strictly (Ray's
``ServeDeploySchema`` accepts unknown keys silently).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

URI_SCHEMES = ("s3://", "file://")


class SettingsError(ValueError):
    """A bad setting; the message names the key, the value and what is expected."""


def _number(where: str, value: Any, *, minimum: float, maximum: float = math.inf, integer: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not minimum <= value <= maximum:
        kind = "an integer" if integer else "a finite number"
        bound = f">= {minimum}" if maximum == math.inf else f"in [{minimum}, {maximum}]"
        raise SettingsError(f"{where} must be {kind} {bound}, got {value!r}")
    return value


def _from_mapping(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; checked before the work is done (bytes from ``Content-Length`` first).

    Attributes:
        max_upload_bytes: request body (video upload) size.
        max_frames: frames of one video.
        max_pixels_per_frame: height x width of a frame.
        max_expressions: ``text`` fields in one request.
        max_text_chars: characters of one expression.
        max_zip_entries: entries of an uploaded zip of frames.
        allowed_uri_prefixes: ``video_uri`` values must start with one of these (``s3://bucket/videos/`` or
            ``file:///data/``); empty: ``video_uri`` is refused.
        request_timeout_s: wall time for one request before it is answered 504.
    """

    max_upload_bytes: int = 200_000_000
    max_frames: int = 600
    max_pixels_per_frame: int = 3840 * 2160
    max_expressions: int = 8
    max_text_chars: int = 256
    max_zip_entries: int = 2000
    allowed_uri_prefixes: tuple[str, ...] = ()
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_frames", "max_pixels_per_frame", "max_expressions", "max_text_chars"):
            _number(f"limits.{name}", getattr(self, name), minimum=1, integer=True)
        _number("limits.max_zip_entries", self.max_zip_entries, minimum=1, integer=True)
        _number("limits.request_timeout_s", self.request_timeout_s, minimum=0.1)
        prefixes = self.allowed_uri_prefixes
        if isinstance(prefixes, str) or not isinstance(prefixes, list | tuple):
            raise SettingsError(f"limits.allowed_uri_prefixes must be a list of URI prefixes, got {prefixes!r}")
        for p in prefixes:
            if not isinstance(p, str) or not p.startswith(URI_SCHEMES) or p in URI_SCHEMES:
                raise SettingsError(
                    f"limits.allowed_uri_prefixes: {p!r} must be an s3://BUCKET/... or file:///... prefix"
                )
        object.__setattr__(self, "allowed_uri_prefixes", tuple(prefixes))


@dataclass(frozen=True)
class AppSettings:
    """Arguments of the Serve application (``applications[].args`` in the Serve config).

    Attributes:
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a checkpoint folder, ``file://`` or ``s3://``.
        tracking_uri: MLflow tracking/registry URI; None: ``MLFLOW_TRACKING_URI`` of the replicas' environment.
        reload_interval_s: serving an alias, how often the replicas look for a move of the alias (0: never).
        window: frames per forward pass (as ``sgmg predict --window``).
        short_side: frames are resized so their short side has this many pixels (as ``sgmg predict``).
        limits: :class:`Limits`.
    """

    model_uri: str = "models:/sgmg@champion"
    tracking_uri: str | None = None
    reload_interval_s: float = 30.0
    window: int = 36
    short_side: int = 360
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not isinstance(self.model_uri, str) or not self.model_uri.strip():
            raise SettingsError(f"model_uri must be a model URI or checkpoint location, got {self.model_uri!r}")
        if self.tracking_uri is not None and not isinstance(self.tracking_uri, str):
            raise SettingsError(f"tracking_uri must be a string or null, got {self.tracking_uri!r}")
        _number("reload_interval_s", self.reload_interval_s, minimum=0)
        _number("window", self.window, minimum=1, integer=True)
        _number("short_side", self.short_side, minimum=32, integer=True)
        if isinstance(self.limits, Mapping):
            object.__setattr__(self, "limits", _from_mapping(Limits, self.limits, "limits"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AppSettings:
        """Build from ``applications[].args`` (unknown keys refused)."""
        return _from_mapping(cls, data, "args")

    def to_dict(self) -> dict[str, Any]:
        """Back to the plain ``args`` dictionary (lists, not tuples: YAML/JSON friendly)."""
        out = dataclasses.asdict(self)
        out["limits"]["allowed_uri_prefixes"] = list(self.limits.allowed_uri_prefixes)
        return out


@dataclass(frozen=True)
class ModelSettings:
    """The model deployment's ``user_config`` (applied in place by ``reconfigure``: a RayService upgrade that changes
    only these keys moves the running replicas without restarting them).

    Attributes:
        model_uri: None keeps the application's ``model_uri``.
        max_batch_size: windows per batched forward pass (``max_ongoing_requests`` must be at least this).
        batch_wait_timeout_s: how long a batch waits to fill.
        precision: ``fp32`` (the official numerics) or ``bf16`` (faster, on CPU and GPU: :mod:`sgmg.model.precision`).
        num_threads: torch CPU threads of the replica; 0: what Ray gives it (its ``num_cpus``).
    """

    model_uri: str | None = None
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    precision: str = "fp32"
    num_threads: int = 0

    def __post_init__(self) -> None:
        _number("user_config.max_batch_size", self.max_batch_size, minimum=1, integer=True)
        _number("user_config.batch_wait_timeout_s", self.batch_wait_timeout_s, minimum=0, maximum=60)
        _number("user_config.num_threads", self.num_threads, minimum=0, integer=True)
        if self.precision not in ("fp32", "bf16"):
            raise SettingsError(f"user_config.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.model_uri is not None and (not isinstance(self.model_uri, str) or not self.model_uri.strip()):
            raise SettingsError(f"user_config.model_uri must be a model URI or null, got {self.model_uri!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelSettings:
        """Build from ``user_config`` (unknown keys refused)."""
        return _from_mapping(cls, data, "user_config")


DEPLOYMENTS = ("SgMgIngress", "SgMgModel")
IMPORT_PATH = "pipelines.serve.app:build_app"


def serve_config_problems(config: Any) -> list[str]:
    """Every problem of a whole Serve config: a strict key check at each level against the fields of Ray's own schema
    models (``ServeDeploySchema`` accepts unknown keys silently), ``AutoscalingConfig`` (which that schema does not
    check deeply), ``ServeDeploySchema`` itself, and this application's ``args`` and ``user_config``."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    problems: list[str] = []

    def keys(obj: Any, model: Any, where: str) -> None:
        if isinstance(obj, Mapping):
            unknown = sorted(set(obj) - set(model.model_fields))
            if unknown:
                problems.append(f"{where}: unknown key(s) {unknown}")

    if not isinstance(config, Mapping):
        return [f"a Serve config is a mapping, got {type(config).__name__}"]
    keys(config, ServeDeploySchema, "config")
    keys(config.get("http_options"), HTTPOptionsSchema, "http_options")
    apps = config.get("applications")
    if not isinstance(apps, list) or not apps:
        problems.append("applications must be a non-empty list")
        apps = []
    for i, app in enumerate(apps):
        where = f"applications[{i}]"
        keys(app, ServeApplicationSchema, where)
        ours = isinstance(app, Mapping) and app.get("import_path") == IMPORT_PATH
        for j, dep in enumerate((app.get("deployments") or []) if isinstance(app, Mapping) else []):
            dwhere = f"{where}.deployments[{j}]"
            keys(dep, DeploymentSchema, dwhere)
            if not isinstance(dep, Mapping):
                continue
            keys(dep.get("ray_actor_options"), RayActorOptionsSchema, f"{dwhere}.ray_actor_options")
            auto = dep.get("autoscaling_config")
            if isinstance(auto, Mapping):
                keys(auto, AutoscalingConfig, f"{dwhere}.autoscaling_config")
                try:
                    AutoscalingConfig(**auto)
                except (TypeError, ValidationError, ValueError) as exc:
                    problems.append(f"{dwhere}.autoscaling_config: {str(exc).splitlines()[0]}")
            if ours and dep.get("name") not in DEPLOYMENTS:
                problems.append(f"{dwhere}.name must be one of {list(DEPLOYMENTS)}, got {dep.get('name')!r}")
            if ours and dep.get("name") == "SgMgModel":
                try:
                    user = ModelSettings.from_dict(dep.get("user_config"))
                except SettingsError as exc:
                    problems.append(f"{dwhere}: {exc}")
                    continue
                ongoing = dep.get("max_ongoing_requests", 5)
                if isinstance(ongoing, int) and ongoing < user.max_batch_size:
                    problems.append(
                        f"{dwhere}: max_ongoing_requests ({ongoing}) < user_config.max_batch_size "
                        f"({user.max_batch_size}): batches could never fill; raise max_ongoing_requests"
                    )
        if ours:
            try:
                AppSettings.from_dict(app.get("args"))
            except (SettingsError, TypeError) as exc:
                problems.append(f"{where}.args: {exc}")
    try:
        ServeDeploySchema.model_validate(dict(config))
    except ValidationError as exc:
        problems.append(f"not a valid Serve config: {exc}")
    return problems


def check_serve_config(config: Any) -> None:
    """:func:`serve_config_problems`, raised.

    Raises:
        SettingsError: naming every problem found.
    """
    problems = serve_config_problems(config)
    if problems:
        raise SettingsError("; ".join(problems))
