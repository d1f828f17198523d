"""The search space of `mktn tune`: a YAML of distributions over dotted job-config keys, checked up front.

    metric: R1@0.5              # validation metric to maximise: ASHA's signal and the best trial's
    num_samples: 8              # trials (`--num-samples` overrides)
    asha: {grace_period: 1, reduction_factor: 2}   # epochs a trial gets before ASHA may stop it
    space:                      # any dotted key of the job config
      train.lr: {loguniform: [3.0e-4, 3.0e-3]}
      model.dropout: {uniform: [0.0, 0.3]}
      model.csm.enabled: {choice: [true, false]}
      deepspeed.zero_stage: {choice: [1, 2, 3]}

Before Ray starts, every key and every value a trial can draw (each choice; each bound of a range, plus a
non-integer point inside it) is validated against the config schema (`load_search`), and `probe_jobs` gives
the jobs that must each pass the same preflight as `mktn train` (ZeRO/optimizer combinations, workers vs
CPUs, batch budgets).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import fsspec
import yaml
from pydantic import Field, ValidationError, model_validator

from cluster.job.config import ConfigError, JobConfig, with_values
from mktn.metrics import METRIC_KEYS
from strict_config import StrictConfig

FIXED_SECTIONS = ("cluster.", "mlflow.", "data.train", "data.val")  # per search, not per trial


class Distribution(StrictConfig):
    """Exactly one of: `choice: [values]`, `uniform: [low, high]`, `loguniform: [low, high]`."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in ("choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, uniform, loguniform (got {given or 'none'})")
        if self.kind != "choice":
            low, high = self.bounds
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"{self.kind} needs finite low < high, got [{low}, {high}]")
            if self.kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {low}")
        return self

    @property
    def kind(self) -> Literal["choice", "uniform", "loguniform"]:
        return (
            "choice" if self.choice is not None else "uniform" if self.uniform is not None else "loguniform"
        )

    @property
    def bounds(self) -> tuple[float, float]:
        return self.uniform or self.loguniform  # type: ignore[return-value]

    def probes(self) -> list[Any]:
        """Values that stand for every draw: each choice; a range's bounds and a non-integer point inside
        (which an integer key refuses)."""
        if self.choice is not None:
            return list(self.choice)
        low, high = self.bounds
        return [low, high, low + 0.37 * (high - low)]

    def sampler(self) -> Any:
        """The Ray Tune domain for this distribution."""
        from ray import tune

        if self.choice is not None:
            return tune.choice(self.choice)
        return tune.uniform(*self.bounds) if self.kind == "uniform" else tune.loguniform(*self.bounds)

    def describe(self) -> str:
        return f"{self.kind}{json.dumps(self.choice if self.choice is not None else list(self.bounds))}"


class AshaConfig(StrictConfig):
    grace_period: int = Field(1, ge=1)  # epochs before a trial can be stopped
    reduction_factor: float = Field(2.0, gt=1)


class SearchSpec(StrictConfig):
    """One search: the metric (maximised), the number of trials, ASHA's settings and the space."""

    metric: str = "R1@0.5"
    num_samples: int = Field(4, ge=1)
    asha: AshaConfig = AshaConfig()
    space: dict[str, Distribution] = Field(min_length=1)


def load_search(path: str, job: JobConfig, num_samples: int | None = None) -> SearchSpec:
    """Read the search YAML at `path` and validate it against `job`'s schema (see the module docstring)."""
    try:
        with fsspec.open(path, "r") as f:
            tree = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: search space file not found") from exc
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        spec = SearchSpec.model_validate(tree)
    except ValidationError as exc:
        problems = [f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid search space:\n  " + "\n  ".join(problems)) from None
    if num_samples is not None:
        spec = spec.model_copy(update={"num_samples": num_samples})
    if spec.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {spec.num_samples}")
    if spec.metric not in METRIC_KEYS:
        raise ConfigError(
            f"{path}: metric {spec.metric!r} is not a validation metric; expected one of "
            f"{', '.join(METRIC_KEYS)}"
        )
    if spec.asha.grace_period >= job.train.epochs:
        raise ConfigError(
            f"{path}: asha.grace_period={spec.asha.grace_period} must be below train.epochs="
            f"{job.train.epochs}: ASHA stops trials only at rungs before the last epoch"
        )
    for key, dist in spec.space.items():
        if key.startswith(FIXED_SECTIONS):
            raise ConfigError(
                f"{path}: space.{key}: {', '.join(FIXED_SECTIONS)}* are fixed for the whole search "
                "(resources, tracking, data); set them in the config or as overrides"
            )
        for value in dist.probes():
            with_values(job, {key: value}, f"{path}: space.{key}={value!r}")
    return spec


def probe_jobs(job: JobConfig, spec: SearchSpec) -> list[JobConfig]:
    """The jobs preflight checks: the base job and, per key, one job per probe value."""
    return [job] + [
        with_values(job, {key: value}, key) for key, dist in spec.space.items() for value in dist.probes()
    ]
