"""Hyperparameter sweeps on Ray Tune: ``sgmg sweep --config sweep.yaml [key=value ...]``.

Each trial is a whole Ray Train job (:mod:`pipelines.train`) with some fields of the base job replaced by sampled
values (dotted keys: ``train.optim.lr``, ``train.loss.weight_dice``, ...). Under Ray Train V2 a Tune trial is a
function that builds and fits a ``TorchTrainer`` with ``TuneReportCallback`` (``Tuner(trainer)`` is gone), so Tune
sees the metrics every checkpoint reports and ASHA stops weak trials early. Trials are selected on ``val_jf`` (J&F
on the job's ``val_shards``): the training loss is no measure across loss-weight trials.

At the end the best trial's checkpoint is registered in the MLflow Model Registry as a new version of
``register_as``, logged into that trial's MLflow run and tagged with its ``val_jf``, the hash of the validation
ingest's manifest, the sweep and the trial's config (``pipelines.train.register_run``). It becomes
``models:/NAME@champion`` (what the Serve deployment loads) only if its ``val_jf`` is higher than the champion's on
the same validation set; otherwise it is registered without the alias and the log says why.

Needs the Ray dashboard (Train V2 frees the placement groups of stopped trials through the State API; without it an
early-stopped trial's resources leak and later trials hang): a local Ray is started with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.sweep_config import SweepConfig, load_sweep, param_space, trial_job
from pipelines.sweep_trials import TRIAL_TAG, close_trial_runs, log_sweep_results, trial_rows, trial_run_ids
from pipelines.train import ray_storage, register_run
from pipelines.train_job import RayTrainJob, prepare_tracking

BASE_KEY, PARENT_KEY = "__base__", "__parent_run__"  # constant entries of the param space


def _trial(config: dict[str, Any]) -> None:
    """A Tune function trainable: one Ray Train job reporting to Tune through ``TuneReportCallback``, tracked as an
    MLflow run nested under the sweep's (params: the sampled values, and the whole job under ``job.``)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines import cluster, train

    ctx = ray.tune.get_context()
    base = config[BASE_KEY]
    params = {k: v for k, v in config.items() if k not in (BASE_KEY, PARENT_KEY)}
    trial_id = ctx.get_trial_id()
    job = trial_job(base, params, f"{base['name']}-{trial_id}")
    # earlier trials' Train runs and clip streams leave resource requests behind that starve this trial's clip stream
    # (see release_leftover_reservations); a concurrent trial's own, if cancelled too, is sent again within 20 s
    released = cluster.release_leftover_reservations()
    if released:
        print(f"[sweep] released {len(released)} resource request(s) left by earlier trials: {released}", flush=True)
    train.fit(
        job,
        log=lambda m: print(m, flush=True),
        callbacks=[TuneReportCallback()],
        parent_run_id=config.get(PARENT_KEY),
        run_params={**params, "job": dataclasses.asdict(job)},
        run_tags={TRIAL_TAG: trial_id},
        end_run_on_error=False,  # a trial the scheduler stops dies mid-fit: the sweep's driver ends its run
    )


@dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
        best_params: the sampled values of the best trial.
        best_metrics: its last reported metrics.
        best_checkpoint: its last checkpoint (URI/path).
        trials: ``(params, last metrics)`` of every trial.
        registered_version: the registry version made from the best checkpoint (None when not registered).
        seconds: wall time.
        registration: version, whether it became the champion, and why (None when not registered).
        mlflow_run_id: the sweep's parent MLflow run (None without tracking).
    """

    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    best_checkpoint: str | None
    trials: list[tuple[dict[str, Any], dict[str, Any]]]
    registered_version: str | None
    seconds: float
    registration: Any = None
    mlflow_run_id: str | None = None


def sweep(cfg: SweepConfig, *, log: Callable[[str], None] = print) -> SweepResult:
    """Run the sweep on the current Ray cluster (started with the dashboard), register the best checkpoint.

    MLflow: a parent run for the sweep (found again when the sweep is rerun) with one nested run per trial; at the
    end every trial run is ended with what became of it (``FINISHED``; ``KILLED`` and the tag
    ``sgmg.trial_status=stopped early`` for a trial the scheduler stopped; ``FAILED``), and the results table (CSV,
    Markdown) and the plot of the metric against each hyperparameter (PNG) are logged on the parent, under ``sweep/``.

    Resume: a sweep interrupted (its driver killed) and rerun with the same ``name`` and ``job.storage_path`` is
    restored by Tune (``Tuner.restore``): finished trials are kept as they are, unfinished ones continue (each from
    its Train run's last checkpoint), and the same parent run is used.

    Raises:
        RuntimeError: no trial reported the metric.
    """
    from pipelines import ingested, storage, tracking

    started = time.perf_counter()
    ingested.load_manifest(cfg.job.shards)  # fail now, not in every trial
    job = prepare_tracking(cfg.job)  # one tracking URI for every trial; tables made before trials race to create them
    base = dataclasses.asdict(dataclasses.replace(job, name=cfg.name))
    sweep_path = storage.join(cfg.job.storage_path, cfg.name)
    parent, changed = _open_sweep_run(cfg, job, base, sweep_path)
    max_t = max(1, math.ceil(cfg.job.train.max_steps / cfg.job.train.checkpoint_every))
    tuner = _tuner(cfg, base, parent, changed, max_t, sweep_path, log)
    try:
        grid = tuner.fit()
    except (KeyboardInterrupt, SystemExit):
        if parent is not None:
            tracking.end_run(job.tracking.tracking_uri, parent, "KILLED")
        raise
    rows = trial_rows(grid, cfg, max_t)
    if parent is not None:
        final = close_trial_runs(job.tracking.tracking_uri, parent, rows)
        run_ids = trial_run_ids(job.tracking.tracking_uri, parent)
        rows = [
            dataclasses.replace(r, run_id=run_ids.get(r.trial_id), status=final.get(r.trial_id, r.status)) for r in rows
        ]
    best = _best_result(grid, cfg, job.tracking.tracking_uri, parent)
    metrics = dict(best.metrics or {})
    best_params = {k: best.config[k] for k in cfg.space}
    checkpoint = metrics.get("checkpoint_path")
    if checkpoint:
        checkpoint = storage.as_uri(cfg.job.storage_path, str(checkpoint))
    log(f"[sweep] best {cfg.metric}={metrics.get(cfg.metric)} with {best_params}; checkpoint {checkpoint}")
    registration, done_before = _register_best(cfg, job, base, parent, best_params, checkpoint, metrics, log)
    if parent is not None:
        _close_sweep_run(
            cfg, rows, job.tracking.tracking_uri, parent, metrics, best.metrics.get("trial_id"), registration
        )
    return SweepResult(
        best_params,
        metrics,
        checkpoint,
        [(r.params, r.metrics) for r in rows],
        registration.version if registration else (done_before or None),
        time.perf_counter() - started,
        registration,
        parent,
    )


def _open_sweep_run(
    cfg: SweepConfig, job: RayTrainJob, base: dict[str, Any], sweep_path: str
) -> tuple[str | None, list[str]]:
    """Open the sweep's parent MLflow run, or find it again on a rerun (keyed by ``sweep:<sweep_path>``).

    Returns:
        ``(run id, params that differ from those the run was opened with)``; ``(None, [])`` without tracking.
    """
    from pipelines import tracking

    if not job.tracking.enabled:
        return None, []
    params = {"sweep": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "job"}, "job": base}
    parent = tracking.open_run(
        job.tracking.tracking_uri,
        job.tracking.experiment,
        cfg.name,
        key=f"sweep:{sweep_path}",
        params=params,
        tags={"sgmg.kind": "sweep"},
    )
    return parent, tracking.changed_params(job.tracking.tracking_uri, parent, params)


def _scheduler(cfg: SweepConfig, max_t: int) -> Any:
    """The trial scheduler: ASHA over ``max_t`` reports (one per checkpoint), or FIFO (every trial runs to the end)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler != "asha":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
    )


def _tuner(
    cfg: SweepConfig,
    base: dict[str, Any],
    parent: str | None,
    changed: Sequence[str],
    max_t: int,
    sweep_path: str,
    log: Callable[[str], None],
) -> Any:
    """The sweep's ``Tuner``: restored from its experiment folder (``storage_path/name``) when an interrupted run of
    the sweep left one there, new otherwise.

    A restored sweep continues as it was started: ``changed`` settings (see :func:`_open_sweep_run`) are only noted.
    """
    import ray.tune
    from ray.tune.search import BasicVariantGenerator

    scheduler = _scheduler(cfg, max_t)
    trainable = ray.tune.with_resources(_trial, {"CPU": 0.01})  # the trial only drives its TorchTrainer (0 is refused)
    experiment, fs = ray_storage(sweep_path)  # Tune's experiment folder: storage_path/name
    if ray.tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log(f"[sweep] {cfg.name}: resuming the interrupted sweep in {sweep_path} (finished trials are kept)")
        if changed:
            log(
                f"[sweep] note: {changed} differ from the settings the sweep started with; Tune continues the sweep "
                "as it was started (give a new name to run a sweep with the new settings)"
            )
        return ray.tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    tuner = ray.tune.Tuner(
        trainable,
        param_space={BASE_KEY: base, PARENT_KEY: parent, **param_space(cfg.space)},
        tune_config=ray.tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials),
        ),
        run_config=ray.tune.RunConfig(
            name=cfg.name,
            storage_path=ray_storage(cfg.job.storage_path)[0],
            storage_filesystem=fs,
        ),
    )
    log(f"[sweep] {cfg.name}: {cfg.num_samples} trial(s) of {sorted(cfg.space)}, {cfg.scheduler}, on {cfg.metric}")
    return tuner


def _best_result(grid: Any, cfg: SweepConfig, tracking_uri: str, parent: str | None) -> Any:
    """The best trial's ``Result`` (on ``cfg.metric``, its last report).

    Raises:
        RuntimeError: no trial reported the metric (the parent run is ended ``FAILED`` first).
    """
    from pipelines import tracking

    try:
        return grid.get_best_result(metric=cfg.metric, mode=cfg.mode, scope="last")
    except RuntimeError as exc:
        errors = [str(r.error) for r in grid if r.error is not None]
        if parent is not None:
            tracking.end_run(tracking_uri, parent, "FAILED")
        raise RuntimeError(f"no trial of {cfg.name} reported {cfg.metric!r}: {errors[:3]}") from exc


def _register_best(
    cfg: SweepConfig,
    job: RayTrainJob,
    base: dict[str, Any],
    parent: str | None,
    best_params: dict[str, Any],
    checkpoint: str | None,
    metrics: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[Any, str | None]:
    """Register the best trial's checkpoint as a version of ``cfg.register_as`` (:func:`pipelines.train.register_run`),
    unless the sweep was registered before (its parent run carries the version: a rerun of a finished sweep) or
    there is nothing to register (no ``register_as``, no checkpoint or no tracking).

    Returns:
        ``(the new registration or None, the version registered before or None)``.
    """
    from pipelines import tracking

    done_before = tracking.run_tags(job.tracking.tracking_uri, parent).get(REGISTERED_TAG) if parent else None
    if done_before:
        log(f"[sweep] {cfg.name} was finished and registered before (version {done_before}); not registered again")
        return None, done_before
    if cfg.register_as and checkpoint and job.tracking.enabled:
        best_job = trial_job(base, best_params, cfg.name)
        registration = register_run(
            best_job, str(checkpoint), cfg.register_as, metrics=metrics, source=f"sweep:{cfg.name}", log=log
        )
        return registration, done_before
    return None, done_before


def _close_sweep_run(
    cfg: SweepConfig,
    rows: Sequence[Any],
    tracking_uri: str,
    parent: str,
    best: dict[str, Any],
    best_trial: Any,
    registration: Any,
) -> None:
    """End the sweep's parent run ``FINISHED`` with the results (:func:`log_sweep_results`) and the registered
    version (the tag that keeps a rerun from registering again)."""
    from pipelines import tracking

    log_sweep_results(cfg, rows, tracking_uri, parent, best, best_trial)
    if registration is not None:
        tracking.log_to_run(tracking_uri, parent, tags={REGISTERED_TAG: registration.version})
    tracking.end_run(tracking_uri, parent, "FINISHED")


REGISTERED_TAG = "sgmg.registered_version"


# ------------------------------------------------------------------------------------------------ CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgmg sweep``."""
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="sweep config (SweepConfig fields; job: a RayTrainJob); rerunning an interrupted sweep (same name and "
        "job.storage_path) restores it: finished trials are kept, unfinished ones continue from their checkpoints",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. num_samples=16 job.shards=s3://b/shards job.train.max_steps=2000",
    )
    parser.add_argument("--summary", metavar="FILE.json", help="write the result (trials, best, registration) as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``sgmg sweep``; returns the exit code."""
    try:
        cfg = load_sweep(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"sgmg sweep: {exc}", file=sys.stderr)
        return 2
    from pipelines import ingest
    from pipelines.cluster import ray_session

    try:
        with ray_session(include_dashboard=True):  # Train V2 frees stopped trials' placement groups through it
            result = sweep(cfg)
    except (ingest.IngestError, RuntimeError) as exc:
        print(f"sgmg sweep: {exc}", file=sys.stderr)
        return 1
    reg = result.registration
    verdict = "" if reg is None else f" ({'champion' if reg.promoted else 'not champion'}: {reg.reason})"
    print(
        f"done in {result.seconds:.0f}s: best {cfg.metric}={result.best_metrics.get(cfg.metric)} "
        f"{result.best_params}; registered version {result.registered_version}{verdict}"
    )
    if args.summary:
        from pipelines.train import write_summary

        summary = dataclasses.asdict(result)
        summary["trials"] = [{"params": p, "metrics": m} for p, m in result.trials]
        summary["metric"] = cfg.metric
        write_summary(args.summary, summary)
    return 0
