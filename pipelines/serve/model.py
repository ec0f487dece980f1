"""``SgMgModel``: the Serve deployment that runs the forward passes.

- Batching: ``segment`` takes one window (:class:`~pipelines.serve.runner.WindowJob`); ``@serve.batch`` gathers the
  windows of concurrent requests and :func:`~pipelines.serve.runner.run_jobs` runs one forward pass per group of equal
  shape, in a worker thread (the replica's event loop stays free for health checks and ``info``).
- Loading: in the background at start (``info`` answers None until then, so the ingress's ``/healthz`` says 503).
- Hot reload: serving an alias (``models:/NAME@ALIAS``), a thread asks the registry every ``reload_interval_s``;
  when the alias has moved it loads the new version, then swaps it in. Windows already running finish on the old
  model, and the old model is kept for a while so that the later windows of a request in flight are answered by the
  model that answered its first (:attr:`~pipelines.serve.runner.WindowJob.model_uri`).
- ``user_config`` (``reconfigure``): batching, precision, threads, and ``model_uri`` for RayService upgrades.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ray import serve

from pipelines.serve.runner import LoadedModel, WindowJob, WindowResult, load_model, resolve_version, run_jobs
from pipelines.serve.settings import ModelSettings

logger = logging.getLogger("ray.serve.sgmg")  # a child of Serve's logger: lands in the replica logs

RETAIN_S = 600.0  # how long a replaced model stays available to the requests that started on it


@serve.deployment(name="SgMgModel", max_ongoing_requests=16)
class SgMgModel:
    """Batched forward passes of one SgMg model (see the module docstring).

    Args:
        model_uri: what to serve (``user_config.model_uri`` wins when set).
        tracking_uri: MLflow registry; None: ``MLFLOW_TRACKING_URI``.
        reload_interval_s: alias polling period (0: never).
    """

    def __init__(self, model_uri: str, tracking_uri: str | None = None, reload_interval_s: float = 30.0) -> None:
        from sgmg.allocator import tune_malloc

        tune_malloc()  # this replica's process: freed tensors are reused, not faulted in again
        self.app_model_uri = model_uri
        self.tracking_uri = tracking_uri
        self.reload_interval_s = reload_interval_s
        self.settings = ModelSettings()
        self.current: LoadedModel | None = None
        self.retained: dict[str, tuple[LoadedModel, float]] = {}
        self.batches = 0
        self.windows = 0
        self._lock = threading.Lock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgmg-load")
        self._loading: Future = self._submit_load(model_uri)
        self._stop = threading.Event()
        if reload_interval_s > 0 and model_uri.startswith("models:/") and "@" in model_uri:
            threading.Thread(target=self._poll, daemon=True, name="sgmg-reload").start()

    # ---------------------------------------------------------------------------------------------- loading

    @property
    def model_uri(self) -> str:
        return self.settings.model_uri or self.app_model_uri

    def _submit_load(self, model_uri: str) -> Future:
        future = self._loader.submit(self._load, model_uri)
        future.add_done_callback(
            lambda f: f.exception() and logger.error("loading %s failed: %r", model_uri, f.exception())
        )
        return future

    def _load(self, model_uri: str) -> None:
        t0 = time.perf_counter()
        loaded = load_model(model_uri, self.tracking_uri, precision=self.settings.precision)
        self._swap(loaded)
        logger.info("serving %s (%.1f s to load)", loaded.info, time.perf_counter() - t0)

    def _swap(self, loaded: LoadedModel) -> None:
        with self._lock:
            now = time.monotonic()
            if self.current is not None:
                self.retained[self.current.info["uri"]] = (self.current, now)
            self.retained = {k: v for k, v in self.retained.items() if now - v[1] < RETAIN_S}
            self.current = loaded

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            current = self.current
            if current is None or not self.model_uri.startswith("models:/"):
                continue
            try:
                version = resolve_version(self.model_uri, self.tracking_uri)
            except Exception as exc:  # noqa: BLE001 - registry unreachable: keep serving, try again later
                logger.warning(
                    "cannot read %s from the registry (%s); still serving %s", self.model_uri, exc, current.ref
                )
                continue
            if version != current.info.get("version"):
                logger.info(
                    "%s moved from version %s to %s: loading it", self.model_uri, current.info["version"], version
                )
                try:
                    self._submit_load(self.model_uri).result()
                except Exception:  # noqa: BLE001 - a bad new version: keep the old one
                    logger.exception("loading %s failed; still serving %s", self.model_uri, current.ref)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (:class:`~pipelines.serve.settings.ModelSettings`) in place."""
        new = ModelSettings.from_dict(user_config)
        old, self.settings = self.settings, new
        self._segment_batch.set_max_batch_size(new.max_batch_size)
        self._segment_batch.set_batch_wait_timeout_s(new.batch_wait_timeout_s)
        if new.num_threads:
            import torch

            torch.set_num_threads(new.num_threads)
        if (new.model_uri or self.app_model_uri) != (old.model_uri or self.app_model_uri) or (
            new.precision != old.precision
        ):
            self._loading = self._submit_load(self.model_uri)

    def check_health(self) -> None:
        """Serve's health check: a failed first load makes the replica unhealthy (Serve replaces it)."""
        if self._loading.done() and self._loading.exception() is not None and self.current is None:
            raise RuntimeError(f"loading {self.model_uri} failed: {self._loading.exception()}")

    def __del__(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------------------------------------- serving

    async def info(self) -> dict[str, Any] | None:
        """The served model's description; None while the first load runs."""
        current = self.current
        if current is None:
            return None
        return {**current.info, "batches": self.batches, "windows": self.windows, "settings": vars(self.settings)}

    async def segment(self, job: WindowJob) -> WindowResult:
        """Answer one window (batched with the windows of other requests)."""
        if self.current is None:
            await asyncio.wrap_future(self._loading)
        return await self._segment_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _segment_batch(self, jobs: list[WindowJob]) -> list[WindowResult]:
        groups: dict[int, tuple[LoadedModel, list[int]]] = {}
        with self._lock:
            for i, job in enumerate(jobs):
                model = self.current
                if job.model_uri and job.model_uri != model.info["uri"] and job.model_uri in self.retained:
                    model = self.retained[job.model_uri][0]
                groups.setdefault(id(model), (model, []))[1].append(i)
        results: list[WindowResult | None] = [None] * len(jobs)
        for model, members in groups.values():
            answers = await asyncio.to_thread(run_jobs, model, [jobs[i] for i in members])
            for i, answer in zip(members, answers, strict=True):
                results[i] = answer
        self.batches += 1
        self.windows += len(jobs)
        return results
