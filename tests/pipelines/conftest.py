"""Shared fixtures of the pipeline tests: one S3-protocol server on loopback and one local Ray cluster per session.

Both are generic: Train, Tune and Serve tests reuse them.

* ``s3_server`` starts moto's ``ThreadedMotoServer`` on 127.0.0.1 at a free port and points the AWS environment
  (dummy credentials, ``AWS_ENDPOINT_URL``) at it, for boto3, pyarrow and every Ray worker started afterwards.
  ``s3_bucket`` makes a fresh empty bucket per test.
* ``ray_cluster`` starts ``ray.init(num_cpus=4, include_dashboard=True)`` with ``RAY_AUTH_MODE=disabled``: 4 logical
  CPUs on a 2-core box, because Ray Data + Train deadlock with fewer, and the dashboard on, because Train V2's
  placement-group cleaner needs it. It depends on ``s3_server`` so that the workers inherit the S3 environment. It
  always shuts Ray down.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from tiny_ytvos import write_tiny_ytvos

from pipelines.cluster import free_port


@dataclass(frozen=True)
class S3Server:
    """A running S3-protocol server on loopback.

    Attributes:
        endpoint_url: ``http://127.0.0.1:PORT``.
        env: the AWS environment variables that point clients at it.
    """

    endpoint_url: str
    env: dict[str, str]

    def client(self):  # noqa: ANN201 - boto3 client type is dynamic
        """A boto3 S3 client for the server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def make_bucket(self, prefix: str = "bkt") -> str:
        """Create a new, uniquely named bucket and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto S3 server on 127.0.0.1 (free port) with the AWS env set for the session; restored afterwards."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint_url=endpoint, env=env)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh empty bucket on the session's S3 server."""
    return s3_server.make_bucket()


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server) -> Iterator[Callable[[], dict]]:
    """A local Ray cluster for the session (4 logical CPUs, dashboard on, auth off); always shut down.

    Yields:
        ``ray.cluster_resources`` (call it to read the current resources).
    """
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        object_store_memory=1 << 30,
        _temp_dir=temp_dir,  # own, short folder: unix socket paths must stay < 108 chars; no clash with other clusters
    )
    try:
        yield ray.cluster_resources
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def tiny_ytvos(tmp_path) -> Callable[..., str]:
    """Factory: ``tiny_ytvos(**kwargs) -> root`` writes :func:`write_tiny_ytvos` under a fresh temp folder."""
    counter = [0]

    def make(**kwargs) -> str:
        counter[0] += 1
        root = tmp_path / f"ytvos{counter[0]}"
        write_tiny_ytvos(root, **kwargs)
        return str(root)

    return make


@pytest.fixture(scope="session")
def small_ingest(ray_cluster, tmp_path_factory) -> str:
    """A finished local ingest of 4 tiny videos (6 frames, 64 x 96) for the Train and Tune tests."""
    from pipelines import ingest

    root = tmp_path_factory.mktemp("train-ds") / "ytvos"
    write_tiny_ytvos(root, n_videos=4, n_frames=6, size=(64, 96))
    dest = str(root) + "-shards"
    cfg = ingest.IngestConfig(source=str(root), dest=dest, max_side=96, shard_size=2)
    ingest.run_ingest(cfg, printer=lambda m: None)
    return dest


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory) -> str:
    """A tiny SgMg checkpoint trained for a few steps on a bright moving square (the Serve tests' model)."""
    from serve_fixtures import train_tiny_checkpoint

    return str(train_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "checkpoint"))
