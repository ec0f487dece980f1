"""``sgmg serve --model URI [--host H] [--port P] [--config FILE.yaml] [key=value ...]``: deploy the Serve application
on a local Ray (or the cluster at ``RAY_ADDRESS``), print its URL, serve until Ctrl-C or SIGTERM, then take the
application down and exit 0.

The config file is a plain Serve config (``pipelines/configs/serve.yaml`` by default), deployed the way ``serve run
CONFIG`` deploys it, so the file that works here works unchanged with ``serve deploy`` and in a KubeRay RayService.
Overrides: ``limits.max_frames=100`` or ``window=12`` set application arguments;
``SgMgModel.user_config.max_batch_size=1`` or ``SgMgModel.ray_actor_options.num_gpus=1`` set a deployment's options;
``http_options.request_timeout_s=60`` the HTTP options. Everything is checked before Ray starts, and the model URI
is looked up too (a typo fails in a second).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "serve.yaml"
APP_NAME = "sgmg"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgmg serve``."""
    parser.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION (registry at MLFLOW_TRACKING_URI, default the sqlite database "
        "of sgmg train/sweep in the current folder), a checkpoint folder, file:// or s3:// (default: the config's)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI, else ...)")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the model to load")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see the module doc)")


def load_serve_config(
    path: str | Path,
    *,
    model: str | None = None,
    host: str | None = None,
    port: int | None = None,
    tracking_uri: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """The Serve config of ``path`` with the command line applied, checked (:func:`check_serve_config`).

    Raises:
        FileNotFoundError: no such config file.
        ValueError: a bad key or value, naming it and whether it came from the file or an override.
    """
    from pipelines.serve.settings import IMPORT_PATH, SettingsError, check_serve_config
    from sgmg.config_io import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Serve config {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a Serve config mapping, got {type(config).__name__}")
    try:
        check_serve_config(config)
    except SettingsError as exc:
        raise ValueError(f"{path}: {exc}") from None
    apps = [a for a in config["applications"] if a.get("import_path") == IMPORT_PATH]
    if len(apps) != 1:
        raise ValueError(f"{path}: expected one application with import_path {IMPORT_PATH}, found {len(apps)}")
    app = apps[0]
    deployments = {d["name"]: d for d in app.setdefault("deployments", [])}
    by_target: dict[str, list[str]] = {}
    for item in overrides:
        key = item.partition("=")[0]
        head = key.split(".", 1)[0]
        by_target.setdefault(head if head in (*deployments, "http_options") and "." in key else "args", []).append(item)
    try:
        app["args"] = apply_overrides(app.get("args") or {}, by_target.pop("args", []))
        if "http_options" in by_target:
            config = apply_overrides(config, by_target.pop("http_options"))
        for name, items in by_target.items():
            stripped = [i[len(name) + 1 :] for i in items]
            deployments[name].update(apply_overrides(deployments[name], stripped))
    except ValueError as exc:
        raise ValueError(f"overrides: {exc}") from None
    if model:
        app["args"]["model_uri"] = model
    if tracking_uri:
        app["args"]["tracking_uri"] = tracking_uri
    http = config.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    try:
        check_serve_config(config)
    except SettingsError as exc:
        raise ValueError(f"{path} with the command line: {exc}") from None
    return config


def check_model(model_uri: str, tracking_uri: str) -> str:
    """Fail fast on a model URI that names nothing; returns a description of what it names now."""
    from pipelines import storage
    from pipelines.serve.runner import is_registry_uri

    if is_registry_uri(model_uri):
        from pipelines import model_uris

        return f"{model_uris.resolve_model_version(tracking_uri, model_uri).uri} ({model_uri})"
    from sgmg.checkpoint.io import CONFIG_NAME, WEIGHTS_NAME

    if model_uri.endswith(".safetensors"):
        needed = [model_uri]
    else:
        needed = [storage.join(model_uri, WEIGHTS_NAME), storage.join(model_uri, CONFIG_NAME)]
    missing = [n for n in needed if not storage.exists(n)]
    if missing:
        raise FileNotFoundError(f"{model_uri} is not a checkpoint: {missing} missing")
    return model_uri


def run(args: argparse.Namespace) -> int:
    """Run ``sgmg serve``."""
    from pipelines import tracking

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(".")
    try:
        config = load_serve_config(
            args.config,
            model=args.model,
            host=args.host,
            port=args.port,
            tracking_uri=tracking_uri,
            overrides=args.overrides,
        )
        app_args = config["applications"][0]["args"]
        described = check_model(app_args["model_uri"], tracking_uri)
    except (FileNotFoundError, ValueError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _serve(config, described, args.ready_timeout)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM for the block. Installed after ``ray.init``, whose core worker puts its own
    SIGTERM handler in place (it logs a stack trace and aborts the process, skipping the shutdown)."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(config: dict[str, Any], described: str, ready_timeout: float) -> int:
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve run CONFIG` uses to deploy a config file
    from ray.serve.schema import ServeDeploySchema

    from pipelines.cluster import ray_session

    http = config["http_options"]
    host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
    url = f"http://{host}:{http['port']}"
    t0 = time.perf_counter()
    with ray_session(include_dashboard=False) as local, _stop_on_signals() as stop:
        schema = ServeDeploySchema.model_validate(config)
        client = serve_api.serve_start(
            http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
        )
        try:
            client.deploy_apps(schema, _blocking=False)
            print(f"deploying {described} ...", flush=True)
            if not _wait_ready(url, ready_timeout, stop):
                return 0 if stop.is_set() else 1
            print(f"SgMg is serving {described} at {url}/ (API docs {url}/docs) after {time.perf_counter() - t0:.1f} s")
            print("Ctrl-C or SIGTERM stops it.", flush=True)
            stop.wait()
            print("stopping ...", flush=True)
        finally:
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
    print("stopped.", flush=True)
    return 0


def _wait_ready(url: str, timeout: float, stop: threading.Event) -> bool:
    """Wait for the application to deploy and ``/healthz`` to answer 200; False (with the reason printed) otherwise."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        if app is not None and app.status == "DEPLOY_FAILED":
            print(f"error: the application failed to deploy: {app.message}", file=sys.stderr)
            return False
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(1.0)
    if not stop.is_set():
        print(f"error: the model was not ready after {timeout:.0f} s", file=sys.stderr)
    return False
