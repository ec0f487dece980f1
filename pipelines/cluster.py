"""The Ray cluster a command runs on: ``RAY_ADDRESS`` (a running cluster, KubeRay's included) or a local Ray that the
command starts and shuts down again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def ray_session(**init_kwargs: Any) -> Iterator[bool]:
    """Connect to ``RAY_ADDRESS`` or start a local Ray (``ray.init(**init_kwargs)``) unless one is already up in this
    process; shut down only what was started here.

    Yields:
        True when no ``RAY_ADDRESS`` names a cluster: a local one, whose resources are fixed (no autoscaler adds any).
    """
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")  # Train V2's state polling, unneeded
    # Train V2 gives a worker group 60 s to start, then retries from scratch; each worker imports torch, and on a busy
    # 2-core machine two of them took longer (the driver passes this on to Train's controller)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    address = os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started:
        if address is None:
            init_kwargs = _own_state_api(init_kwargs)
        ray.init(address=address, **init_kwargs)
    previous = _exit_on_sigterm() if started else None
    try:
        yield address is None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if started:
            ray.shutdown()


def _own_state_api(init_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Point the new local cluster's processes at its own dashboard for Ray's state API.

    Without an address, the state API finds "the" cluster by scanning the machine's processes and fails with "Found
    multiple active Ray instances" when another Ray runs beside this one; Train V2's placement-group cleaner then
    dies, a finished sweep trial's placement group is never freed, and the next trial waits for its CPUs forever. So
    the dashboard gets a port chosen here, named in the job's ``RAY_API_SERVER_ADDRESS``.
    """
    if init_kwargs.get("include_dashboard") is False:
        return init_kwargs
    kwargs = dict(init_kwargs)
    port = kwargs.setdefault("dashboard_port", free_port())
    runtime_env = dict(kwargs.get("runtime_env") or {})
    env_vars = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}", **runtime_env.get("env_vars", {})}
    kwargs["runtime_env"] = {**runtime_env, "env_vars": env_vars}
    kwargs.setdefault("dashboard_host", "127.0.0.1")
    return kwargs


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exit_on_sigterm() -> Any:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, so the ``finally`` above shuts Ray down (a local
    cluster's agents outlive a process killed by the signal). Installed after ``ray.init``: its core worker puts a
    handler of its own in place that aborts the process. Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, _raise)
