"""A real `mlflow server` on 127.0.0.1 for tests: SQLite store, artifacts in a folder or on an object store.
Starting it takes 20-60 s on 2 busy cores, so only slow tests use it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.job.network import free_port
from tests.train_jobs import wait_for


class MlflowServer:
    """`mlflow server` on 127.0.0.1:port with a SQLite store under `root` and its artifacts in `artifacts`
    (default `root/artifacts`; an `s3://` URL works with the AWS variables in the environment)."""

    def __init__(self, root: Path, artifacts: str | None = None):
        self.root, self.port = root, free_port()
        self.artifacts = artifacts or str(root / "artifacts")
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        args = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            self.artifacts,
        ]
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


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """An `MlflowServer` under `tmp_path/mlflow`, not yet started (call `start()`); killed afterwards."""
    server = MlflowServer(tmp_path / "mlflow")
    server.root.mkdir()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
