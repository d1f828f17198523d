"""MLflow for a training job: where it tracks, its one run, and calls that outlast a server outage.

Embedded default: a SQLite store `<output>/mlflow.db` with artifacts in `<output>/mlartifacts` (the model
registry needs a database-backed store, and nothing has to be running); `MLFLOW_TRACKING_URI` or the
config's `mlflow.tracking_uri` point it at a real server instead. Every call goes through `retrying`,
which waits out an unreachable server with capped exponential backoff instead of failing the job.
MLflow's own HTTP retries are turned down (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, unless the user set it) so
that this backoff, not a minutes-long blocking request, decides when to try again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from cluster.config import JobConfig
from cluster.storage import is_local

log = logging.getLogger(__name__)
T = TypeVar("T")

# What MLflow's HTTP client does by itself before our backoff takes over (see module docstring).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
MAX_BACKOFF_S = 15.0
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable for longer than the configured patience."""


def use_short_http_retries() -> None:
    """Let `retrying` own the retry policy in this process (a user's own settings win)."""
    for key, value in HTTP_ENV.items():
        os.environ.setdefault(key, value)


def tracking_uri(job: JobConfig, output: str) -> str:
    """The job's tracking URI: config, else `MLFLOW_TRACKING_URI`, else SQLite under the output folder; a
    run folder on an object store cannot hold SQLite, so there one of the first two must be set."""
    configured = job.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    if not is_local(output):
        raise ValueError(
            f"--output {output}: MLflow's embedded SQLite store cannot live on an object store; point the run at "
            "a tracking server with MLFLOW_TRACKING_URI=http://HOST:5000 (or the config key mlflow.tracking_uri)"
        )
    return default_tracking_uri(output)


def default_tracking_uri(output: str) -> str:
    """`sqlite:////abs/output/mlflow.db`: runs, metrics, the registry and aliases, with no server."""
    return f"sqlite:///{Path(output).resolve() / 'mlflow.db'}"


def artifact_location(output: str) -> str:
    """Where a new experiment of a database-backed store keeps artifacts: `mlartifacts` in the run folder
    (a `file://` URI locally, the object-store URL otherwise)."""
    if is_local(output):
        return (Path(output).resolve() / "mlartifacts").as_uri()
    return f"{output.rstrip('/')}/mlartifacts"


def mlflow_key(name: str) -> str:
    """A metric name MLflow accepts: `val/R1@0.5` -> `val/R1_IoU0.5` (MLflow refuses '@')."""
    return name.replace("@", "_IoU")


def now_ms() -> int:
    """MLflow's timestamp unit: milliseconds since the epoch."""
    return int(time.time() * 1000)


def retrying(call: Callable[..., T], *args: Any, what: str, patience_s: float, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, retried with capped exponential backoff while it raises, for up to
    `patience_s` seconds; then `TrackingUnavailable` naming `what` and the last error."""
    deadline, delay = time.monotonic() + patience_s, 1.0
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any transport or server error is worth a retry
            if time.monotonic() + delay > deadline:
                raise TrackingUnavailable(
                    f"MLflow unreachable for {patience_s:.0f}s while {what}: {exc}"
                ) from exc
            log.warning("MLflow call failed while %s (%s); retrying in %.0fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


def open_run(
    client: MlflowClient, job: JobConfig, output: str, tags: dict[str, str], patience_s: float
) -> str:
    """Create the job's MLflow run (experiment `mlflow.experiment`, created if missing) and log the whole
    resolved config as params; returns the run id."""
    experiment = retrying(
        client.get_experiment_by_name,
        job.mlflow.experiment,
        what="finding the experiment",
        patience_s=patience_s,
    )
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = None if client.tracking_uri.startswith("http") else artifact_location(output)
        experiment_id = retrying(
            client.create_experiment,
            job.mlflow.experiment,
            artifact_location=location,
            what="creating the experiment",
            patience_s=patience_s,
        )
    run = retrying(
        client.create_run,
        experiment_id,
        run_name=job.mlflow.run_name,
        tags=tags,
        what="creating the run",
        patience_s=patience_s,
    )
    params = [Param(k, str(v)) for k, v in sorted(job.flat().items())]
    for i in range(0, len(params), MAX_PARAMS_PER_CALL):
        retrying(
            client.log_batch,
            run.info.run_id,
            params=params[i : i + MAX_PARAMS_PER_CALL],
            what="logging the config",
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


def git_commit(repo: Path | None = None) -> str:
    """The source tree's git commit (with `-dirty` when it has local changes), or `unknown` outside git."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
