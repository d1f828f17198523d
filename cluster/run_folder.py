"""The driver's run folder (`mktn train --output DIR`) and the record that lets `--resume` continue it.

run.json        the resolved config, the MLflow tracking URI and run id, the status
mlflow.db       the embedded MLflow store (unless a tracking server is configured), artifacts in mlartifacts/
tracking/       the metric spool (see `cluster.metric_sink`)
ray/train/      Ray Train's checkpoints (unless `cluster.storage_path` puts them on shared storage)
model/          the exported model, once training finished
plots/          training curves and predicted-vs-true moments
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config import JobConfig
from cluster.storage import write_bytes_atomic

RUN_FILE = "run.json"
RUN_FORMAT = "mktn-run-v1"
# Keys a resumed run may change; anything else would not fit the checkpoint or the MLflow run.
RESUMABLE_KEYS = ("cluster.address", "cluster.max_failures", "train.epochs", "mlflow.patience_s")


@dataclass
class RunFolder:
    """What `run.json` records about a training job."""

    path: Path
    job: JobConfig
    tracking_uri: str
    run_id: str
    status: str = "running"

    @property
    def storage(self) -> str:
        """Where Ray Train keeps this run's checkpoints."""
        return self.job.cluster.storage_path or str(self.path / "ray")

    @property
    def spool(self) -> str:
        return str(self.path / "tracking")

    def write(self) -> None:
        record = {"format": RUN_FORMAT, "config": self.job.model_dump(mode="json"), "tracking_uri": self.tracking_uri,
                  "run_id": self.run_id, "status": self.status}  # fmt: skip
        write_bytes_atomic(str(self.path / RUN_FILE), json.dumps(record, indent=2).encode())

    @classmethod
    def read(cls, path: Path) -> RunFolder:
        """The run recorded in `path/run.json`; a missing or malformed one says what is wrong."""
        file = path / RUN_FILE
        try:
            record: dict[str, Any] = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{path}: no {RUN_FILE}, so there is no run here to resume") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: not valid JSON ({exc})") from exc
        if record.get("format") != RUN_FORMAT:
            raise ValueError(f"{file}: expected format {RUN_FORMAT!r}")
        return cls(path, JobConfig.model_validate(record["config"]), record["tracking_uri"], record["run_id"],
                   record["status"])  # fmt: skip


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
