"""MLflow runs: the one way a run is opened, and tags and metrics logged into it.

`open_run` creates the experiment when it is missing (artifacts where `store.artifact_location` says),
creates the run with the caller's tags plus the source tree's git commit, and logs the params in batches of
MLflow's limit; every call goes through `retry.retrying`. Training jobs, searches, evaluations,
registrations without a training run and benchmarks all open their runs here.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from cluster.tracking.retry import retrying
from cluster.tracking.store import artifact_location

MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limits
MAX_METRICS_PER_CALL = 1000
REPO = Path(__file__).resolve().parents[2]


def open_run(
    client: MlflowClient,
    experiment: str,
    *,
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
    run_name: str | None = None,
    output: str | None = None,
    patience_s: float,
) -> str:
    """A new run of `experiment` (created if missing; `output` is the job's folder, see `artifact_location`)
    tagged with `tags` and the git commit, with `params` logged; returns the run id."""
    found = retrying(
        client.get_experiment_by_name, experiment, what="finding the experiment", patience_s=patience_s
    )
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = retrying(
            client.create_experiment,
            experiment,
            artifact_location=artifact_location(client.tracking_uri, output),
            what="creating the experiment",
            patience_s=patience_s,
        )
    commit = git_commit()
    run = retrying(
        client.create_run,
        experiment_id,
        run_name=run_name,
        tags={"git_commit": commit, "mlflow.source.git.commit": commit} | tags,
        what="creating the run",
        patience_s=patience_s,
    )
    pairs = [Param(k, str(v)) for k, v in sorted((params or {}).items())]
    for i in range(0, len(pairs), MAX_PARAMS_PER_CALL):
        retrying(
            client.log_batch,
            run.info.run_id,
            params=pairs[i : i + MAX_PARAMS_PER_CALL],
            what="logging the params",
            patience_s=patience_s,
        )
    return run.info.run_id


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str], patience_s: float) -> None:
    """Set (or overwrite) run tags in one call."""
    retrying(
        client.log_batch,
        run_id,
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
        what="setting tags",
        patience_s=patience_s,
    )


def log_metrics(
    client: MlflowClient, run_id: str, values: dict[str, float], patience_s: float, step: int = 0
) -> None:
    """Log `values` (names as the project writes them, see `mlflow_key`) at `step`, in batches of MLflow's limit."""
    stamp = now_ms()
    metrics = [Metric(mlflow_key(k), float(v), stamp, step) for k, v in values.items()]
    for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
        retrying(
            client.log_batch,
            run_id,
            metrics=metrics[i : i + MAX_METRICS_PER_CALL],
            what="logging metrics",
            patience_s=patience_s,
        )


def mlflow_key(name: str) -> str:
    """A metric name MLflow accepts: `val/R1@0.5` -> `val/R1_IoU0.5` (MLflow refuses '@')."""
    return name.replace("@", "_IoU")


def now_ms() -> int:
    """MLflow's timestamp unit: milliseconds since the epoch."""
    return int(time.time() * 1000)


def git_commit(repo: Path = REPO) -> str:
    """The source tree's git commit (with `-dirty` when it has local changes), or `unknown` outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
