"""Where MLflow tracks a job, and where a new experiment keeps its artifacts.

Embedded default: a SQLite store `<output>/mlflow.db` with artifacts in `<output>/mlartifacts` (the model
registry needs a database-backed store, and nothing has to be running); `MLFLOW_TRACKING_URI` or the
config's `mlflow.tracking_uri` point it at a real server instead. MLflow's own HTTP retries are turned down
(`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, unless the user set it) so that `retry.retrying`'s backoff, not a
minutes-long blocking request, decides when to try again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.job.config import JobConfig
from cluster.job.storage import is_local

# What MLflow's HTTP client does by itself before our backoff takes over (see module docstring).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
SQLITE = "sqlite:///"


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
    return f"{SQLITE}{Path(output).resolve() / 'mlflow.db'}"


def artifact_location(uri: str, output: str | None = None) -> str | None:
    """Where a new experiment of the store at `uri` keeps its artifacts: a tracking server decides (None);
    otherwise `mlartifacts` in the job's `output` folder (a `file://` URI locally, the object-store URL
    otherwise), or without one, beside a SQLite store's database file (else MLflow's default)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if output is not None:
        if is_local(output):
            return (Path(output).resolve() / "mlartifacts").as_uri()
        return f"{output.rstrip('/')}/mlartifacts"
    if uri.startswith(SQLITE):
        return (Path(uri.removeprefix(SQLITE)).resolve().parent / "mlartifacts").as_uri()
    return None


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (and its registry, which follows the tracking store) at `uri` for the block,
    then restore it: `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI to every later subprocess."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
