"""The Ray cluster a command runs on: ``RAY_ADDRESS`` (a running cluster, KubeRay's included) or a local Ray that the
command starts and shuts down again."""

from __future__ import annotations

import contextlib
import os
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
    address = os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **init_kwargs)
    try:
        yield address is None
    finally:
        if started:
            ray.shutdown()
