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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.train import RayTrainJob, prepare_tracking, register_run
from sgmg.config_io import ConfigValueError, require

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint", "grid")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep.

    Attributes:
        job: the base Ray Train job (``val_shards`` is required: trials are compared on validation J&F).
        space: ``{dotted job key: {distribution: args}}``, distributions ``uniform: [lo, hi]``,
            ``loguniform: [lo, hi]``, ``choice: [a, b, ...]``, ``randint: [lo, hi)``, ``grid: [a, b, ...]``.
        num_samples: trials (each grid point is repeated this many times).
        metric: reported metric to select on.
        mode: ``max`` or ``min``.
        scheduler: ``asha`` (early stopping by the metric at every report) or ``fifo`` (every trial runs to the end).
        grace_period: reports before ASHA may stop a trial.
        reduction_factor: ASHA's halving rate.
        max_concurrent_trials: trials at once (each takes ``job.num_workers`` workers).
        name: the sweep's name (its trials' Train runs are ``NAME-<trial id>``).
        register_as: registered model name for the best checkpoint (None: do not register).
        seed: search seed.
    """

    job: RayTrainJob | None = None
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 4
    metric: str = "val_jf"
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    max_concurrent_trials: int = 1
    name: str = "sgmg-sweep"
    register_as: str | None = "sgmg"
    seed: int = 0

    def __post_init__(self) -> None:
        require("job", self.job, self.job is not None, "the base Ray Train job (pipelines.train.RayTrainJob fields)")
        require(
            "space",
            self.space,
            bool(self.space),
            "a search space, e.g. {'train.optim.lr': {'loguniform': [1e-5, 1e-3]}}",
        )
        for key, spec in self.space.items():
            check_dimension(self.job, key, spec)
        require("mode", self.mode, self.mode in ("max", "min"), "max or min")
        require(
            "metric",
            self.metric,
            not self.metric.startswith("val_") or bool(self.job.val_shards),
            "a metric the trials report; val_* metrics need job.val_shards (an ingest with ground truth)",
        )
        for name in ("num_samples", "grace_period", "max_concurrent_trials"):
            require(name, getattr(self, name), getattr(self, name) >= 1, "an integer >= 1")
        require("reduction_factor", self.reduction_factor, self.reduction_factor >= 2, "an integer >= 2")
        require("name", self.name, bool(self.name.strip()), "a non-empty sweep name")
        require("register_as", self.register_as, self.register_as != "", "a registered model name, or null")


def check_dimension(job: RayTrainJob, key: str, spec: Any) -> None:
    """Check one dimension of a search space before any trial runs: a known distribution with valid arguments, on a
    job field, whose extreme values (or every listed value) make a valid job.

    Raises:
        ConfigValueError: naming ``space.KEY``.
    """
    where = f"space.{key}"
    expected = f"one of {list(DISTRIBUTIONS)} with its arguments, e.g. {{loguniform: [1.0e-5, 1.0e-3]}}"
    require(where, spec, isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS, expected)
    kind, args = next(iter(spec.items()))
    if kind in ("uniform", "loguniform", "randint"):
        numbers = [_finite(a) for a in args] if isinstance(args, list) and len(args) == 2 else [None]
        require(where, spec, None not in numbers, f"{kind}: [low, high], two finite numbers")
        low, high = numbers
        require(where, spec, low < high, f"{kind}: [low, high] with low < high")
        if kind == "loguniform":
            require(where, spec, low > 0, "loguniform: [low, high] with 0 < low < high")
        if kind == "randint":
            require(where, spec, low.is_integer() and high.is_integer(), "randint: [low, high) integers")
            low, high = int(low), int(high)
        values = [low, high - 1] if kind == "randint" else [low, high]
    else:
        require(where, spec, isinstance(args, list) and len(args) > 0, f"{kind}: a non-empty list of values")
        values = list(args)
    base = dataclasses.asdict(job)
    for value in values:
        try:
            trial_job(base, {key: value}, "check")
        except ConfigValueError as err:
            raise ConfigValueError(where, spec, f"values that make a valid job ({err})") from None
        except ValueError as err:
            raise ConfigValueError(where, spec, f"a dotted field of the job ({err})") from None


def load_sweep(path: str | Path | None, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep YAML (optional) and dotted overrides (``job.train.max_steps=200``) into a :class:`SweepConfig`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file and dotted key of a bad value.
    """
    from sgmg.config_io import load_config

    return load_config(SweepConfig, path, overrides, "sweep config")


def _finite(value: Any) -> float | None:
    """``value`` as a finite float (YAML reads ``1e-3`` as a string), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def param_space(space: dict[str, Any]) -> dict[str, Any]:
    """Tune search-space objects for :attr:`SweepConfig.space` (keys unchanged)."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        kind, args = next(iter(spec.items()))
        if kind == "uniform":
            out[key] = tune.uniform(float(args[0]), float(args[1]))
        elif kind == "loguniform":
            out[key] = tune.loguniform(float(args[0]), float(args[1]))
        elif kind == "choice":
            out[key] = tune.choice(list(args))
        elif kind == "randint":
            out[key] = tune.randint(int(args[0]), int(args[1]))
        else:
            out[key] = tune.grid_search(list(args))
    return out


def trial_job(base: dict[str, Any], params: dict[str, Any], name: str) -> RayTrainJob:
    """The job of one trial: ``base`` (``asdict`` of the job) with the sampled dotted ``params`` set, named ``name``.

    Raises:
        ValueError: a key of the space is not a job field.
    """
    import copy

    from pipelines.train import job_from_dict
    from sgmg.config_io import set_dotted

    data = copy.deepcopy(base)
    for key, value in params.items():
        try:
            set_dotted(data, key, value, create=False, what="the job")
        except ValueError as err:
            raise ValueError(f"space key {key!r}: {err}") from None
    return dataclasses.replace(job_from_dict(data), name=name)


def _trial(config: dict[str, Any]) -> None:
    """A Tune function trainable: one Ray Train job reporting to Tune through ``TuneReportCallback``."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines import train

    ctx = ray.tune.get_context()
    params = {k: v for k, v in config.items() if k != "__base__"}
    job = trial_job(config["__base__"], params, f"{config['__base__']['name']}-{ctx.get_trial_id()}")
    train.fit(job, log=lambda m: print(m, flush=True), callbacks=[TuneReportCallback()])


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
    """

    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    best_checkpoint: str | None
    trials: list[tuple[dict[str, Any], dict[str, Any]]]
    registered_version: str | None
    seconds: float
    registration: Any = None


def sweep(cfg: SweepConfig, *, log: Callable[[str], None] = print) -> SweepResult:
    """Run the sweep on the current Ray cluster (started with the dashboard), register the best checkpoint.

    Raises:
        RuntimeError: no trial reported the metric.
    """
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from pipelines import ingest, storage

    started = time.perf_counter()
    ingest.load_manifest(cfg.job.shards)  # fail now, not in every trial
    job = prepare_tracking(cfg.job)  # one tracking URI for every trial; tables made before trials race to create them
    base = dataclasses.asdict(dataclasses.replace(job, name=cfg.name))
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=max(1, math.ceil(cfg.job.train.max_steps / cfg.job.train.checkpoint_every)),
            grace_period=cfg.grace_period,
            reduction_factor=cfg.reduction_factor,
        )
        if cfg.scheduler == "asha"
        else FIFOScheduler()
    )
    loc = storage.resolve(cfg.job.storage_path)
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(_trial, {"CPU": 0.01}),  # the trial only drives its TorchTrainer (0 is refused)
        param_space={"__base__": base, **param_space(cfg.space)},
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
            storage_path=loc.path if loc.is_s3 else loc.uri,
            storage_filesystem=loc.fs if loc.is_s3 else None,
        ),
    )
    log(f"[sweep] {cfg.name}: {cfg.num_samples} trial(s) of {sorted(cfg.space)}, {cfg.scheduler}, on {cfg.metric}")
    grid = tuner.fit()
    trials = [({k: r.config[k] for k in cfg.space}, dict(r.metrics or {})) for r in grid if r.config is not None]
    try:
        best = grid.get_best_result(metric=cfg.metric, mode=cfg.mode, scope="last")
    except RuntimeError as exc:
        errors = [str(r.error) for r in grid if r.error is not None]
        raise RuntimeError(f"no trial of {cfg.name} reported {cfg.metric!r}: {errors[:3]}") from exc
    metrics = dict(best.metrics or {})
    best_params = {k: best.config[k] for k in cfg.space}
    checkpoint = metrics.get("checkpoint_path")
    if checkpoint and loc.is_s3 and not str(checkpoint).startswith("s3://"):
        checkpoint = "s3://" + str(checkpoint)
    log(f"[sweep] best {cfg.metric}={metrics.get(cfg.metric)} with {best_params}; checkpoint {checkpoint}")
    registration = None
    if cfg.register_as and checkpoint and job.tracking.enabled:
        best_job = trial_job(base, best_params, cfg.name)
        registration = register_run(
            best_job, str(checkpoint), cfg.register_as, metrics=metrics, source=f"sweep:{cfg.name}", log=log
        )
    return SweepResult(
        best_params,
        metrics,
        checkpoint,
        trials,
        registration.version if registration else None,
        time.perf_counter() - started,
        registration,
    )


# ------------------------------------------------------------------------------------------------ CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgmg sweep``."""
    parser.add_argument("--config", metavar="FILE.yaml", help="sweep config (SweepConfig fields; job: a RayTrainJob)")
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
