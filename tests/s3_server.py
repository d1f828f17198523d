"""A real S3-compatible server on loopback for tests: `moto_server` in its own process on 127.0.0.1.

Use it from a test module with `pytest_plugins = ["tests.s3_server"]`.
`s3_server` (session) starts the server on a free port; `s3_bucket` (per test) points the standard AWS
variables at it, creates a fresh bucket and returns its URL, `s3://mktn-<random>`. Every library in the stack
(s3fs, boto3, MLflow, pyarrow, Ray) and every subprocess the test starts then talks to that server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.job.network import free_port


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint URL and the environment that points clients at it."""

    endpoint: str
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables for this server (dummy credentials; moto accepts any)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _wait_ready(endpoint: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {timeout:.0f}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start `moto_server` on 127.0.0.1 (a free port) for the whole session; stop it afterwards."""
    venv_exe = Path(sys.executable).with_name("moto_server")
    exe = str(venv_exe) if venv_exe.exists() else shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(endpoint, proc, log)
        yield S3Server(endpoint=endpoint, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket on the loopback server, with the AWS variables set for this test; `s3://NAME`."""
    import boto3
    import s3fs

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # no filesystem cached with another endpoint or a stale listing
    name = f"mktn-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
