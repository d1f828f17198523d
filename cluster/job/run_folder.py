"""A training run's folder (`mktn train --output URL`) and the record that lets `--resume` continue it.

The folder is a local path or any fsspec URL (`s3://bucket/runs/r1`, ...), so every node and a later
`--resume` from another machine see the same run:

run.json        the resolved config, the MLflow tracking URI and run id, the status
mlflow.db       the embedded MLflow store, artifacts in mlartifacts/ (local folders only; see below)
tracking/       the metric spool (see `cluster.tracking.metric_sink`; local folders only, see below)
ray/train/      Ray Train's checkpoints (unless `cluster.storage_path` puts them elsewhere)
batches/        the batch audit, one object per rank and flush (`train.record_batches`)
model/          the exported model, once training finished
plots/          training curves and predicted-vs-true moments

Two things need a local disk and so stay with the driver when the folder is on an object store: the
MLflow store (a remote run needs a tracking server: `MLFLOW_TRACKING_URI` or `mlflow.tracking_uri`; its
artifacts then go where the server or the experiment puts them, `<URL>/mlartifacts` for a database store)
and the metric spool, kept in `$XDG_CACHE_HOME/mktn/spool/<hash of the URL>` (default `~/.cache/...`) on the
driver's node. A `--resume` from another machine starts a fresh spool: metrics MLflow never received stay
on the first machine, and the final training-curve figure shows the steps since the resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import fsspec

from cluster.job.config import JobConfig
from cluster.job.storage import canonical_url, is_local, join, write_bytes_atomic

RUN_FILE = "run.json"
RUN_FORMAT = "mktn-run-v1"
# Keys a resumed run may change; anything else would not fit the checkpoint or the MLflow run.
RESUMABLE_KEYS = ("cluster.address", "cluster.max_failures", "train.epochs", "mlflow.patience_s")


@dataclass
class RunFolder:
    """What `run.json` records about a training job."""

    path: str  # `canonical_url` of the folder: an absolute local path or a URL
    job: JobConfig
    tracking_uri: str
    run_id: str
    status: str = "running"

    def __post_init__(self) -> None:
        self.path = canonical_url(os.fspath(self.path))

    @property
    def storage(self) -> str:
        """Where Ray Train keeps this run's checkpoints."""
        return self.job.cluster.storage_path or join(self.path, "ray")

    @property
    def spool(self) -> str:
        """The local folder of the metric spool: in the run folder, or for a remote one in the driver's cache."""
        if is_local(self.path):
            return join(self.path, "tracking")
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(cache, "mktn", "spool", hashlib.sha256(self.path.encode()).hexdigest()[:16])

    def record(self) -> bytes:
        """The contents of `run.json`."""
        record = {
            "format": RUN_FORMAT,
            "config": self.job.model_dump(mode="json"),
            "tracking_uri": self.tracking_uri,
            "run_id": self.run_id,
            "status": self.status,
        }
        return json.dumps(record, indent=2).encode()

    def write(self) -> None:
        write_bytes_atomic(join(self.path, RUN_FILE), self.record())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunFolder:
        """The run recorded in `path/run.json` (a local folder or a URL); a missing or malformed one says what
        is wrong."""
        url = canonical_url(os.fspath(path))
        file = join(url, RUN_FILE)
        try:
            with fsspec.open(file, "rb") as f:
                record: dict[str, Any] = json.loads(f.read())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{url}: no {RUN_FILE}, so there is no run here to resume") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: not valid JSON ({exc})") from exc
        if record.get("format") != RUN_FORMAT:
            raise ValueError(f"{file}: expected format {RUN_FORMAT!r}")
        return cls(
            url,
            JobConfig.model_validate(record["config"]),
            record["tracking_uri"],
            record["run_id"],
            record["status"],
        )


def resumed_config(saved: JobConfig, given: JobConfig | None) -> JobConfig:
    """The config a resumed run continues with: the saved one, with `given`'s values for `RESUMABLE_KEYS`.

    Any other difference is refused, naming the keys (a different model or world size would not fit the
    checkpoint; a different dataset or tracking store would not fit the MLflow run).
    """
    if given is None:
        return saved
    before, after = saved.flat(), given.flat()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    refused = [k for k in changed if k not in RESUMABLE_KEYS]
    if refused:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in refused[:5])
        raise ValueError(
            f"--resume continues the saved config; these keys differ from it: {details}. "
            f"Only {', '.join(RESUMABLE_KEYS)} may change (or omit CONFIG to reuse the saved one)"
        )
    return given
