"""The job config: one typed schema for every YAML in `configs/`, with dotted command-line overrides.

`load_config("configs/synthetic.yaml", ["train.lr=3e-4", "cluster.num_workers=2"])` returns a
validated `JobConfig`; unknown keys fail with a "did you mean" hint, wrong types name the key path.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, Field, ValidationError

from data_pipeline.config import DataConfig
from data_pipeline.errors import echo
from data_pipeline.safe_yaml import load_yaml
from mktn.config import ModelConfig
from strict_config import StrictConfig


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (message names the key)."""


class TrainConfig(StrictConfig):
    epochs: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_frac: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)
    grad_accum: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, lt=2**32)  # the range numpy and torch seeds accept
    checkpoint_every_epochs: int = Field(1, ge=1)
    keep_best: int = Field(2, ge=1)
    best_metric: str = "R1@0.5"
    log_every_steps: int = Field(5, ge=1)
    record_batches: bool = (
        False  # audit: each worker writes the video/query ids of its batches to <output>/batches/
    )


class ClusterConfig(StrictConfig):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    address: str | None = None  # None = local Ray; "auto", "ray://host:10001" or "host:6379" joins a cluster
    max_failures: int = Field(2, ge=0)
    storage_path: str | None = (
        None  # Ray Train storage (shared across nodes: NFS or s3://); default <output>/ray
    )


class DeepSpeedConfig(StrictConfig):
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPUs, fp32 on CPU
    offload_optimizer: bool = False  # ZeRO-3/2 optimizer state on CPU (large models on GPUs)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    overrides: dict[str, Any] = Field(default_factory=dict)  # merged into the generated DeepSpeed JSON


class MlflowConfig(StrictConfig):
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite under the output folder
    experiment: str = "mktn"
    run_name: str | None = None
    register_as: str | None = None  # registered model name, e.g. mktn-charades
    patience_s: float = Field(900.0, gt=0)  # how long tracking calls keep retrying an unreachable server


class JobConfig(StrictConfig):
    """The full job: data, model, training loop, cluster, DeepSpeed and MLflow sections."""

    dataset: str = "synthetic"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    cluster: ClusterConfig = ClusterConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.model_dump())
        return out


def _field_names(model: type[BaseModel], path: tuple) -> list[str]:
    """Names allowed at `path` (a tuple of keys from the root), for "did you mean" hints."""
    for key in path:
        field = model.model_fields.get(str(key))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _field_names(JobConfig, loc[:-1]), n=1)
            hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?)" if close else ""
            lines.append(f"unknown key '{key}'{hint}")
        else:
            lines.append(f"'{key}': {err['msg']} (got {echo(err.get('input'))})")
    return ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines))


def apply_override(tree: dict, dotted: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}': expected KEY=VALUE, e.g. train.lr=3e-4")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{dotted}': empty key segment")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # also a 5000-digit number, deep nesting
        raise ConfigError(f"override '{dotted}': value is not valid YAML ({exc})") from exc
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def with_values(job: JobConfig, values: dict[str, Any], source: str) -> JobConfig:
    """`job` with dotted keys set to Python values (e.g. a Tune trial's sampled hyper-parameters), validated
    like `load_config`: an unknown key gets a "did you mean", a wrong type names the key; `source` leads the error."""
    tree = job.model_dump(mode="json")
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: '{dotted}': '{section}' is a value, not a section")
        node[key] = value
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def override_config(job: JobConfig, overrides: list[str], source: str) -> JobConfig:
    """`job` with dotted `KEY=VALUE` overrides applied, validated like `load_config` (`source` leads errors)."""
    tree = job.model_dump(mode="json")
    for ov in overrides:
        apply_override(tree, ov)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, f"{source} with overrides {list(overrides)}") from None


def load_config(path: str | None, overrides: list[str] = ()) -> JobConfig:
    """Read a YAML config (any fsspec URL; None = embedded defaults), apply overrides, validate."""
    tree: dict = {}
    source = path or "<defaults>"
    if path:
        try:
            with fsspec.open(path, "r") as f:
                tree = load_yaml(f) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except (yaml.YAMLError, ValueError, RecursionError) as exc:  # also non-UTF-8 bytes, deep nesting
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(tree).__name__}")
    for ov in overrides:
        apply_override(tree, ov)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, source + (f" with overrides {list(overrides)}" if overrides else "")) from None
