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


# Ray Data's AutoscalingCoordinator, a named detached actor that splits the cluster's resources between the Ray Train
# runs and the Ray Data executions on it (Ray 2.60: ray.data._internal.cluster_autoscaler).
_COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # (name, namespace)
LEFTOVER_PREFIXES = ("train-", "data-")  # Train V2: "train-<run id>"; Ray Data: "data-<execution id>"


def _leftover_requesters(coordinator: Any) -> list[str]:  # runs inside the coordinator actor (``__ray_call__``)
    return [str(r) for r in coordinator._ongoing_reqs if str(r).startswith(LEFTOVER_PREFIXES)]


def release_leftover_reservations(timeout_s: float = 10.0) -> list[str]:
    """Cancel every Ray Train run's and Ray Data execution's resource request held by Ray Data's
    AutoscalingCoordinator; returns their ids.

    Why: Ray Train V2 registers each run's worker resources with the coordinator, and each Ray Data execution its
    share of what is left; both cancel their request only when they shut down cleanly (Train's controller, Data's
    executor). A Tune trial's controller and its stream's executor (in its ``SplitCoordinator``) go down with the
    trial's actor (ASHA's stop, and even a finished trial), so their requests outlive them for 180 s, never refreshed.
    The coordinator gives a Ray Data execution only what no Train request holds, shared with every other Data
    request: the leftovers of earlier trials left the next trial's clip stream a budget of 0 CPUs, and training waited
    for clips until they expired (a 2 min stall around step 80 of the demo sweep's third trial, `Cluster resources
    are not enough to run any task from TaskPoolMapOperator[MapBatches(_clips_of_ranges)]` in Ray Data's log; seen
    first with two dead Train requests, then, once those were released, with a dead trial's Data request).

    Call it before a trial starts its own run. A live run or execution elsewhere on the cluster (a concurrent trial)
    loses its request only for a moment: Train's controller sends it again every 20 s, Data's executor every few
    seconds. Does nothing (returns []) when the coordinator is not there (no Ray Data execution yet) or does not
    answer.
    """
    import logging

    import ray

    try:
        coordinator = ray.get_actor(_COORDINATOR[0], namespace=_COORDINATOR[1])
    except ValueError:
        return []
    try:
        ids = ray.get(coordinator.__ray_call__.remote(_leftover_requesters), timeout=timeout_s)
        ray.get([coordinator.cancel_request.remote(i) for i in ids], timeout=timeout_s)
    except Exception as exc:  # an internal of Ray's: never fail a sweep over it
        logging.getLogger(__name__).warning("could not release leftover resource requests: %s", exc)
        return []
    return ids
