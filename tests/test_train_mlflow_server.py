"""A real `mlflow server` on 127.0.0.1 that goes down in the middle of training and comes back: training goes
on, metrics are buffered and arrive once it is back, none lost or duplicated. Slow: the server takes
20-60 s to start on 2 busy cores, and it is started twice."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.train_jobs import MlflowRun, audit, start, tiny_dataset, train_args, wait_for

if TYPE_CHECKING:
    from tests.mlflow_server import MlflowServer

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.mlflow_server"]  # the mlflow_server fixture


def _spool(output: Path) -> tuple[int, int]:
    """(records queued, records shipped) of the run's metric sink."""
    spool, shipped = output / "tracking" / "metrics.jsonl", output / "tracking" / "shipped.json"
    queued = len(spool.read_text().splitlines()) if spool.exists() else 0
    done = json.loads(shipped.read_text())["lines"] if shipped.exists() else 0
    return queued, done


def test_metrics_survive_a_tracking_server_outage(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    server = mlflow_server
    data = tiny_dataset(tmp_path / "data")
    server.start()
    out, log = tmp_path / "run", tmp_path / "train.log"
    job = start(train_args(out, data, "train.epochs=3"), log, MLFLOW_TRACKING_URI=server.uri)
    try:
        wait_for(lambda: _spool(out)[1] >= 1, "the first metrics to reach the server", process=job)
        server.stop()
        down_since = time.monotonic()
        wait_for(lambda: _spool(out)[0] - _spool(out)[1] >= 5 or job.poll() is not None, "metrics to pile up")
        time.sleep(max(0.0, 10 - (time.monotonic() - down_since)))  # down for at least 10 s
        queued, shipped = _spool(out)
        assert queued > shipped, "nothing was buffered while the server was down"
        server.start()
        assert job.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    mlflow = MlflowRun(out, tracking_uri=server.uri)
    total = max(x["step"] for x in audit(out))
    assert mlflow.steps("train/loss") == list(range(1, total + 1))  # none lost, none twice
    assert len(mlflow.steps("val/mIoU")) == 3
    assert mlflow.run.info.status == "FINISHED"
    assert {"model", "plots", "checkpoint"} <= mlflow.artifacts()
