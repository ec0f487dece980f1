"""A sweep's configuration (``sgmg sweep --config sweep.yaml [key=value ...]``): :class:`SweepConfig`, the search space
and its distributions, checked against the base job before Ray starts; :func:`param_space` turns it into Tune's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.train_job import RayTrainJob, job_from_dict
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
        require(
            "job", self.job, self.job is not None, "the base Ray Train job (pipelines.train_job.RayTrainJob fields)"
        )
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
        require(
            "metric",
            self.metric,
            self.metric != "val_loss" or self.job.val_loss,
            "a metric the trials report; val_loss needs job.val_loss: true",
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


def trial_job(base: dict[str, Any], params: dict[str, Any], name: str) -> RayTrainJob:
    """The job of one trial: ``base`` (``asdict`` of the job) with the sampled dotted ``params`` set, named ``name``.

    Raises:
        ValueError: a key of the space is not a job field.
    """
    import copy

    from sgmg.config_io import set_dotted

    data = copy.deepcopy(base)
    for key, value in params.items():
        try:
            set_dotted(data, key, value, create=False, what="the job")
        except ValueError as err:
            raise ValueError(f"space key {key!r}: {err}") from None
    return dataclasses.replace(job_from_dict(data), name=name)


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
