"""`mktn tune`: a hyper-parameter search with Ray Tune, every trial a full `mktn train` job.

The search space is YAML (`configs/tune/*.yaml`):

    metric: R1@0.5              # validation metric to maximise: ASHA's signal and the best trial's
    num_samples: 8              # trials (`--num-samples` overrides)
    asha: {grace_period: 1, reduction_factor: 2}   # epochs a trial gets before ASHA may stop it
    space:                      # any dotted key of the job config
      train.lr: {loguniform: [3.0e-4, 3.0e-3]}
      model.dropout: {uniform: [0.0, 0.3]}
      model.csm.enabled: {choice: [true, false]}
      deepspeed.zero_stage: {choice: [1, 2, 3]}

Before Ray starts, every key and every value a trial can draw (each choice; each bound of a range, plus a
non-integer point inside it) is validated against the config schema, and each of those jobs passes the
same preflight as `mktn train` (ZeRO/optimizer combinations, workers vs CPUs, batch budgets).

Each trial is a function trainable that runs `cluster.launcher.train`: the same `TorchTrainer` with its
DeepSpeed engine, with `TuneReportCallback` forwarding every epoch's validation metrics to Tune (the Train
V2 pattern; `Tuner(trainer)` is deprecated). The trial function itself holds no CPU; its training workers
do, and `max_concurrent_trials` is the number of trials whose workers fit the cluster at once, so the
others queue instead of oversubscribing it. ASHA stops weak trials at epoch rungs before the last epoch
(a trial that reaches the last epoch always finishes: exports its model, closes its run).

MLflow: one parent run for the search (the search space as params; at the end the results table as CSV
and Parquet, a plot of the metric against each searched hyper-parameter, the best trial) and one child run
per trial: the trial's own `mktn train` run, with its params and curves, tagged `mlflow.parentRunId`.
Trials ASHA stopped end as KILLED with the tag `tune.stopped_early`. `--resume` continues an interrupted
search with `Tuner.restore` (unfinished trials resume from their last training checkpoint, in the same
MLflow run); its state is Ray's own (pickled by Ray Tune), so only restore searches this machine wrote.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import fsspec
import yaml
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from pydantic import Field, ValidationError, model_validator

from cluster import preflight, tracking
from cluster.assign import read_dataset_shards
from cluster.config import ConfigError, JobConfig, with_values
from cluster.registry import Registered, register
from cluster.run_folder import RUN_FILE, RunFolder
from cluster.storage import write_bytes_atomic
from cluster.tune_results import TrialRow, best_trial, plot_metric, trial_rows, write_table
from data_pipeline.config import StrictConfig

log = logging.getLogger(__name__)
SEARCH_FILE = "search.json"
SEARCH_FORMAT = "mktn-search-v1"
TUNE_RUN_NAME = "search"
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
    if spec.metric not in preflight.METRIC_KEYS:
        raise ConfigError(
            f"{path}: metric {spec.metric!r} is not a validation metric; expected one of "
            f"{', '.join(preflight.METRIC_KEYS)}"
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


def concurrent_trials(job: JobConfig, resources: dict[str, float]) -> int:
    """How many trials' training workers fit `resources` at once (at least one: the rest queue)."""
    cluster = job.cluster
    fits = resources.get("CPU", 0) // (cluster.num_workers * cluster.cpus_per_worker)
    if cluster.use_gpu:
        fits = min(fits, resources.get("GPU", 0) // (cluster.num_workers * cluster.gpus_per_worker))
    return max(int(fits), 1)


@dataclass
class SearchFolder:
    """What `search.json` records about a search: the base job, the space, the parent MLflow run, the status."""

    path: Path
    job: JobConfig
    spec: SearchSpec
    tracking_uri: str
    parent_run_id: str
    status: str = "running"

    @property
    def storage(self) -> str:
        return str(self.path / "ray")

    def trial_dir(self, trial_id: str) -> Path:
        return self.path / "trials" / trial_id

    def write(self) -> None:
        record = {
            "format": SEARCH_FORMAT,
            "config": self.job.model_dump(mode="json"),
            "search": self.spec.model_dump(mode="json", exclude_none=True),
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "status": self.status,
        }
        write_bytes_atomic(str(self.path / SEARCH_FILE), json.dumps(record, indent=2).encode())

    @classmethod
    def read(cls, path: Path) -> SearchFolder:
        """The search recorded in `path/search.json`; a missing or malformed one says what is wrong."""
        file = path / SEARCH_FILE
        try:
            record = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"{path}: no {SEARCH_FILE}, so there is no search here to resume"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or record.get("format") != SEARCH_FORMAT:
            raise ValueError(f"{file}: expected format {SEARCH_FORMAT!r}")
        return cls(
            path,
            JobConfig.model_validate(record["config"]),
            SearchSpec.model_validate(record["search"]),
            record["tracking_uri"],
            record["parent_run_id"],
            record["status"],
        )


def run_trial(config: dict[str, Any], search: SearchFolder) -> None:
    """Tune's trainable: one `mktn train` job with the sampled values, reporting each epoch to Tune through
    `TuneReportCallback`; a restored trial resumes its own run folder (same checkpoints, same MLflow run)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cluster.launcher import train

    trial_id = tune.get_context().get_trial_id()
    job = with_values(search.job, config, f"trial {trial_id}")
    job = job.model_copy(
        update={
            "mlflow": job.mlflow.model_copy(
                update={"tracking_uri": search.tracking_uri, "run_name": f"trial-{trial_id}"}
            )
        }
    )
    folder = search.trial_dir(trial_id)
    train(
        job,
        str(folder),
        resume=(folder / RUN_FILE).exists(),
        callbacks=[TuneReportCallback()],
        tags={"mlflow.parentRunId": search.parent_run_id, "tune.trial_id": trial_id},
    )


def trial_runs(search: SearchFolder) -> dict[str, RunFolder]:
    """Trial id -> the trial's run folder, for every trial that started training."""
    root = search.path / "trials"
    if not root.is_dir():
        return {}
    return {p.name: RunFolder.read(p) for p in sorted(root.iterdir()) if (p / RUN_FILE).exists()}


@dataclass
class SearchOutcome:
    """A finished search: its folder, every trial's row, the best finished trial and its registration."""

    folder: SearchFolder
    rows: list[TrialRow]
    best: TrialRow | None
    registered: Registered | None
    table: list[Path]
    plot: Path


def tune_search(
    job: JobConfig | None,
    search_path: str | None,
    output: str,
    *,
    num_samples: int | None = None,
    address: str | None = None,
    resume: bool = False,
    register_as: str | None = None,
    alias: str = "champion",
) -> SearchOutcome:
    """Run (or with `resume`, continue) the search `search_path` over `job` with its folder at `output`; then
    record the results in the parent MLflow run and, with `register_as`, register the best trial's model."""
    import ray

    path = Path(output).resolve()
    if resume:
        folder = SearchFolder.read(path)
        spec, job = folder.spec, folder.job
    elif (path / SEARCH_FILE).exists():
        raise ValueError(
            f"{path} already holds a search; pass --resume to continue it or choose another --output"
        )
    elif job is None or search_path is None:
        raise ValueError("a config and --search are needed to start a new search")
    else:
        spec = load_search(search_path, job, num_samples)
    if not job.data.train or not job.data.val:
        raise ValueError("data.train and data.val must name prepared datasets (see `mktn prepare`)")
    register_as = register_as or job.mlflow.register_as
    address = address or job.cluster.address or os.environ.get("RAY_ADDRESS")
    we_started_ray = _connect_ray(probe_jobs(job, spec), job, address)
    try:
        tracking.use_short_http_retries()
        if not resume:
            uri = tracking.tracking_uri(job, str(path))
            folder = SearchFolder(
                path, job, spec, uri, _open_parent(MlflowClient(uri), job, spec, path, search_path)
            )
        client = MlflowClient(folder.tracking_uri)
        tracking.retrying(
            client.update_run,
            folder.parent_run_id,
            status="RUNNING",
            what="opening the search run",
            patience_s=job.mlflow.patience_s,
        )
        folder.status = "running"
        folder.write()
        try:
            results = _tuner(folder, ray.cluster_resources(), resume).fit()
        except Exception:
            _close(client, folder, "FAILED")
            raise
        outcome = _finish(client, folder, results, register_as, alias)
    finally:
        if we_started_ray:
            ray.shutdown()
    return outcome


def _connect_ray(jobs: list[JobConfig], job: JobConfig, address: str | None) -> bool:
    """Preflight every probe job against the cluster, then start or join Ray; True when a local Ray was started."""
    import ray
    import torch

    train, val = read_dataset_shards(job.data.train), read_dataset_shards(job.data.val)
    joined = ray.is_initialized() or address
    if joined and not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING)
    resources = (
        ray.cluster_resources() if joined else {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
    )
    for probe in jobs:  # before a local Ray starts
        preflight.check_job(probe, train, val, resources)
    if not joined:
        _start_local_ray(int(resources["CPU"]), int(resources["GPU"]))
    return not joined


def _start_local_ray(cpus: int, gpus: int) -> None:
    """A local Ray whose every process knows its address (RAY_ADDRESS).

    Ray Train's placement-group cleaner finds its cluster through the state API; with another Ray instance on
    the machine it cannot tell which one is its own and gives up, so the CPUs of a trial that ASHA stopped
    stay reserved until the search ends. Fixing the GCS port (RAY_GCS_SERVER_PORT) before the start lets
    RAY_ADDRESS name it in the job's runtime environment.
    """
    import ray

    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    address = f"{ray.util.get_node_ip_address()}:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=gpus,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"RAY_ADDRESS": address}},
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def _open_parent(client: MlflowClient, job: JobConfig, spec: SearchSpec, path: Path, search_path: str) -> str:
    """The search's parent MLflow run: the base config and the search space as params."""
    parent_job = job.model_copy(
        update={
            "mlflow": job.mlflow.model_copy(
                update={"run_name": job.mlflow.run_name or f"tune-{Path(search_path).stem}"}
            )
        }
    )
    commit = tracking.git_commit()
    tags = {"mktn.search": search_path, "git_commit": commit, "mlflow.source.git.commit": commit}
    run_id = tracking.open_run(client, parent_job, str(path), tags, job.mlflow.patience_s)
    params = [Param(f"search.space.{k}", d.describe()) for k, d in spec.space.items()] + [
        Param("search.metric", spec.metric),
        Param("search.num_samples", str(spec.num_samples)),
        Param("search.asha.grace_period", str(spec.asha.grace_period)),
        Param("search.asha.reduction_factor", str(spec.asha.reduction_factor)),
    ]
    tracking.retrying(
        client.log_batch,
        run_id,
        params=params,
        what="logging the search space",
        patience_s=job.mlflow.patience_s,
    )
    return run_id


def _tuner(folder: SearchFolder, resources: dict[str, float], resume: bool) -> Any:
    """The `Tuner` of the search (restored from its storage with `resume`)."""
    from ray import tune

    # The trial function only drives its TorchTrainer, whose workers hold the CPUs; Tune refuses an empty
    # request, so the function asks for one byte of memory and no CPU.
    trainable = tune.with_resources(tune.with_parameters(run_trial, search=folder), {"cpu": 0, "memory": 1})
    if resume:
        return tune.Tuner.restore(str(Path(folder.storage) / TUNE_RUN_NAME), trainable, resume_errored=True)
    spec, job = folder.spec, folder.job
    return tune.Tuner(
        trainable,
        param_space={key: dist.sampler() for key, dist in spec.space.items()},
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode="max",
            num_samples=spec.num_samples,
            scheduler=asha(spec.asha, job.train.epochs),
            max_concurrent_trials=concurrent_trials(job, resources),
        ),
        run_config=tune.RunConfig(name=TUNE_RUN_NAME, storage_path=folder.storage, verbose=1),
    )


def asha(settings: AshaConfig, epochs: int) -> Any:
    """ASHA on the validation metric with its rungs before the last epoch: a trial that reaches the last epoch
    is never stopped, so its `mktn train` finishes (exports the model, closes its MLflow run). Rungs sit at
    grace_period * reduction_factor^k epochs below `epochs`."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        max_t=max(epochs - 1, settings.grace_period),
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
        stop_last_trials=False,
    )


def _finish(
    client: MlflowClient, folder: SearchFolder, results: Any, register_as: str | None, alias: str
) -> SearchOutcome:
    """Close the trials ASHA stopped, write the table and plot into the parent run, register the best trial."""
    patience, spec = folder.job.mlflow.patience_s, folder.spec
    runs = trial_runs(folder)
    for run in runs.values():
        if run.status == "running":  # ASHA stopped it mid-training
            tracking.set_tags(client, run.run_id, {"tune.stopped_early": "true"}, patience)
            tracking.retrying(
                client.set_terminated,
                run.run_id,
                "KILLED",
                what="closing a stopped trial",
                patience_s=patience,
            )
            run.status = "stopped"
            run.write()
    rows = [
        with_final_validation(client, row, patience) if row.status == "finished" else row
        for row in trial_rows(results, runs)
    ]
    table = write_table(rows, list(spec.space), folder.path)
    plot = plot_metric(rows, spec.space, spec.metric, folder.path / "plots" / "search.png")
    for artifact in [*table, plot]:
        tracking.retrying(
            client.log_artifact,
            folder.parent_run_id,
            str(artifact),
            what=f"logging {artifact.name}",
            patience_s=patience,
        )
    best = best_trial(rows, spec.metric)
    registered = None
    if best is not None:
        tracking.set_tags(
            client,
            folder.parent_run_id,
            {"best_trial_id": best.trial_id, "best_run_id": best.run_id or ""},
            patience,
        )
        tracking.retrying(
            client.log_metric,
            folder.parent_run_id,
            tracking.mlflow_key(f"best/{spec.metric}"),
            best.metrics[spec.metric],
            what="logging the best metric",
            patience_s=patience,
        )
        if register_as:
            registered = register(str(folder.trial_dir(best.trial_id)), register_as, alias)
    _close(client, folder, "FINISHED")
    return SearchOutcome(folder, rows, best, registered, table, plot)


def with_final_validation(client: MlflowClient, row: TrialRow, patience: float) -> TrialRow:
    """A finished trial's row with the validation of the model it exported (its MLflow run's last). Tune's last
    result is older when the trial finished before a stop from ASHA reached it; the best trial is chosen, and
    registered, on what its model scored."""
    run = tracking.retrying(client.get_run, row.run_id, what="reading a trial's run", patience_s=patience)
    logged = run.data.metrics
    keys = {k: f"val/{tracking.mlflow_key(k)}" for k in preflight.METRIC_KEYS}
    metrics = {k: logged[key] for k, key in keys.items() if key in logged}
    return replace(row, metrics=metrics or row.metrics, epochs=int(logged.get("epoch", row.epochs)))


def _close(client: MlflowClient, folder: SearchFolder, status: str) -> None:
    tracking.retrying(
        client.set_terminated,
        folder.parent_run_id,
        status,
        what="closing the search run",
        patience_s=folder.job.mlflow.patience_s,
    )
    folder.status = "finished" if status == "FINISHED" else "failed"
    folder.write()
