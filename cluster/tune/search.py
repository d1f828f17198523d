"""`mktn tune`: a hyper-parameter search with Ray Tune, every trial a full `mktn train` job.

The search space and its checks are `cluster.tune.space`'s. Each trial is a function trainable that runs
`cluster.train.launcher.train`: the same `TorchTrainer` with its DeepSpeed engine, with `TuneReportCallback`
forwarding every epoch's validation metrics to Tune (the Train V2 pattern; `Tuner(trainer)` is deprecated).
The trial function itself holds no CPU; its training workers do, and `max_concurrent_trials` is the number of
trials whose workers fit the cluster at once, so the others queue instead of oversubscribing it. ASHA stops
weak trials at epoch rungs before the last epoch (a trial that reaches the last epoch always finishes:
exports its model, closes its run).

MLflow: one parent run for the search (the search space as params; at the end the results table as CSV
and Parquet, a plot of the metric against each searched hyper-parameter, the best trial) and one child run
per trial: the trial's own `mktn train` run, with its params and curves, tagged `mlflow.parentRunId`.
Trials ASHA stopped end as KILLED with the tag `tune.stopped_early`. `--resume` continues an interrupted
search with `Tuner.restore` (unfinished trials resume from their last training checkpoint, in the same
MLflow run); its state is Ray's own (pickled by Ray Tune), so only restore searches this machine wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from cluster.job.config import JobConfig, with_values
from cluster.job.ray_session import ray_session
from cluster.job.run_folder import RUN_FILE, RunFolder
from cluster.job.storage import write_bytes_atomic
from cluster.serve.registry import Registered, register
from cluster.tracking.retry import retrying
from cluster.tracking.runs import mlflow_key, open_run, set_tags
from cluster.tracking.store import tracking_uri, use_short_http_retries
from cluster.train import preflight
from cluster.train.assign import read_dataset_shards
from cluster.tune.results import TrialRow, best_trial, plot_metric, trial_rows, write_table
from cluster.tune.space import AshaConfig, SearchSpec, load_search, probe_jobs
from mktn.metrics import METRIC_KEYS

SEARCH_FILE = "search.json"
SEARCH_FORMAT = "mktn-search-v1"
TUNE_RUN_NAME = "search"


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

    from cluster.train.launcher import train

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
    train, val = read_dataset_shards(job.data.train), read_dataset_shards(job.data.val)
    probes = probe_jobs(job, spec)

    def check(offered: dict[str, float]) -> None:  # every probe job, before a local Ray starts
        for probe in probes:
            preflight.check_job(probe, train, val, offered)

    with ray_session(address or job.cluster.address, check):
        use_short_http_retries()
        if not resume:
            uri = tracking_uri(job, str(path))
            folder = SearchFolder(
                path, job, spec, uri, _open_parent(MlflowClient(uri), job, spec, path, search_path)
            )
        client = MlflowClient(folder.tracking_uri)
        retrying(
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
        return _finish(client, folder, results, register_as, alias)


def _open_parent(client: MlflowClient, job: JobConfig, spec: SearchSpec, path: Path, search_path: str) -> str:
    """The search's parent MLflow run: the base config and the search space as params."""
    search = {f"search.space.{k}": d.describe() for k, d in spec.space.items()} | {
        "search.metric": spec.metric,
        "search.num_samples": spec.num_samples,
        "search.asha.grace_period": spec.asha.grace_period,
        "search.asha.reduction_factor": spec.asha.reduction_factor,
    }
    return open_run(
        client,
        job.mlflow.experiment,
        tags={"mktn.search": search_path},
        params=job.flat() | search,
        run_name=job.mlflow.run_name or f"tune-{Path(search_path).stem}",
        output=str(path),
        patience_s=job.mlflow.patience_s,
    )


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
            set_tags(client, run.run_id, {"tune.stopped_early": "true"}, patience)
            retrying(
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
        retrying(
            client.log_artifact,
            folder.parent_run_id,
            str(artifact),
            what=f"logging {artifact.name}",
            patience_s=patience,
        )
    best = best_trial(rows, spec.metric)
    registered = None
    if best is not None:
        set_tags(
            client,
            folder.parent_run_id,
            {"best_trial_id": best.trial_id, "best_run_id": best.run_id or ""},
            patience,
        )
        retrying(
            client.log_metric,
            folder.parent_run_id,
            mlflow_key(f"best/{spec.metric}"),
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
    run = retrying(client.get_run, row.run_id, what="reading a trial's run", patience_s=patience)
    logged = run.data.metrics
    keys = {k: f"val/{mlflow_key(k)}" for k in METRIC_KEYS}
    metrics = {k: logged[key] for k, key in keys.items() if key in logged}
    return replace(row, metrics=metrics or row.metrics, epochs=int(logged.get("epoch", row.epochs)))


def _close(client: MlflowClient, folder: SearchFolder, status: str) -> None:
    retrying(
        client.set_terminated,
        folder.parent_run_id,
        status,
        what="closing the search run",
        patience_s=folder.job.mlflow.patience_s,
    )
    folder.status = "finished" if status == "FINISHED" else "failed"
    folder.write()
