"""Step metrics from the workers to MLflow: buffered on disk, shipped in order, each (key, step) once.

Rank 0 sends records `{"step": s, "ts": ms, "values": {name: float}}` to one `MetricSink` actor that
lives on the driver's node (where the default SQLite store is). The sink appends them to a spool
(`metrics.jsonl`) before anything else, and a background thread ships the spool to MLflow with
`log_batch`, retrying with backoff while the server is unreachable, and records how many lines are
shipped (`shipped.json`, written atomically). So:

- a tracking server that is down for a while delays metrics but loses none;
- a driver killed mid-run leaves the unshipped records on disk; the sink of `mktn train --resume`
  ships them first;
- a worker restarted from a checkpoint replays the steps after that checkpoint: a (key, step) that is
  already shipped or queued is skipped, so MLflow holds every step exactly once (the first value logged).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cluster.job.storage import write_bytes_atomic
from cluster.tracking.retry import MAX_BACKOFF_S
from cluster.tracking.runs import MAX_METRICS_PER_CALL, mlflow_key

log = logging.getLogger(__name__)


class MetricSink:
    """The spool and shipper of one MLflow run (use `remote_sink` to run it as a Ray actor)."""

    def __init__(self, tracking_uri: str, run_id: str, spool_dir: str):
        self._client, self._run_id = MlflowClient(tracking_uri), run_id
        directory = Path(spool_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._spool_path, self._state_path = directory / "metrics.jsonl", directory / "shipped.json"
        self._records = read_spool(self._spool_path)
        shipped = json.loads(self._state_path.read_text())["lines"] if self._state_path.exists() else 0
        self._shipped = min(shipped, len(self._records))
        self._keys = {(k, r["step"]) for r in self._records for k in r["values"]}
        self._last_error: str | None = None
        self._cond = threading.Condition()
        threading.Thread(target=self._ship_forever, name="mlflow-shipper", daemon=True).start()

    def log(self, records: list[dict[str, Any]]) -> None:
        """Queue `records`; (key, step) pairs already queued are dropped (a replay after a restart)."""
        with self._cond:
            fresh = []
            for record in records:
                values = {k: v for k, v in record["values"].items() if (k, record["step"]) not in self._keys}
                if values:
                    fresh.append({**record, "values": values})
                    self._keys.update((k, record["step"]) for k in values)
            if not fresh:
                return
            with self._spool_path.open("a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in fresh))
            self._records.extend(fresh)
            self._cond.notify_all()

    def pending(self) -> int:
        """Records queued but not yet in MLflow."""
        with self._cond:
            return len(self._records) - self._shipped

    def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for every queued record to reach MLflow; returns how many are still pending."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._shipped < len(self._records) and time.monotonic() < deadline:
                self._cond.wait(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
            if self._shipped < len(self._records):
                log.warning(
                    "%d metric records not yet in MLflow (last error: %s); they stay in %s",
                    len(self._records) - self._shipped,
                    self._last_error,
                    self._spool_path,
                )
            return len(self._records) - self._shipped

    def _ship_forever(self) -> None:
        delay = 1.0
        while True:
            with self._cond:
                while self._shipped >= len(self._records):
                    self._cond.wait()
                batch = self._records[self._shipped : self._shipped + MAX_METRICS_PER_CALL]
            metrics = [
                Metric(mlflow_key(k), float(v), int(r["ts"]), int(r["step"]))
                for r in batch
                for k, v in r["values"].items()
            ]
            try:
                for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
                    self._client.log_batch(self._run_id, metrics=metrics[i : i + MAX_METRICS_PER_CALL])
            except Exception as exc:  # noqa: BLE001 - the server may be down: keep the records, retry later
                if self._last_error is None:
                    log.warning("MLflow unreachable (%s): buffering metrics and retrying", exc)
                self._last_error = str(exc)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            delay, self._last_error = 1.0, None
            with self._cond:
                self._shipped += len(batch)
                write_bytes_atomic(str(self._state_path), json.dumps({"lines": self._shipped}).encode())
                self._cond.notify_all()


def read_spool(path: Path) -> list[dict[str, Any]]:
    """The complete records of a spool; a torn last line (the writer died mid-write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        path.write_bytes(complete)
    return [json.loads(line) for line in complete.decode().splitlines()]


def remote_sink(tracking_uri: str, run_id: str, spool_dir: str, env: dict[str, str]) -> Any:
    """A `MetricSink` Ray actor pinned to this (the driver's) node, with `env` in its process."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_concurrency=4)(MetricSink).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        runtime_env={"env_vars": env},
    )
    return actor.remote(tracking_uri, run_id, spool_dir)
