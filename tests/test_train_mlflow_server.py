"""A real `mlflow server` on 127.0.0.1 that goes down in the middle of training and comes back: training goes
on, metrics are buffered and arrive once it is back, none lost or duplicated. Slow: the server takes
20-60 s to start on 2 busy cores, and it is started twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.train_jobs import MlflowRun, audit, start, tiny_dataset, train_args, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1:port with a SQLite store and an artifact folder under `root`."""

    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        args = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port",
                str(self.port), "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts")]  # fmt: skip
        with (self.root / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.healthy, "the MLflow server to answer", timeout=240, process=self.process)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        assert not self.healthy()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


def _spool(output: Path) -> tuple[int, int]:
    """(records queued, records shipped) of the run's metric sink."""
    spool, shipped = output / "tracking" / "metrics.jsonl", output / "tracking" / "shipped.json"
    queued = len(spool.read_text().splitlines()) if spool.exists() else 0
    done = json.loads(shipped.read_text())["lines"] if shipped.exists() else 0
    return queued, done


@pytest.fixture
def server(tmp_path: Path):
    server = MlflowServer(tmp_path / "mlflow")
    server.root.mkdir()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


def test_metrics_survive_a_tracking_server_outage(tmp_path: Path, server: MlflowServer) -> None:
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
