"""`mktn demo`, the README's main job, end to end on the embedded defaults: synthetic shards -> 2 Ray workers
under ZeRO-2 -> held-out evaluation -> the metrics table and the MLflow UI line; it reaches the accuracy of
the model's learning test. Slow (a few minutes on 2 cores): `make test-slow`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_jobs import REPO, MlflowRun, job_env

pytestmark = pytest.mark.slow


def _demo(output: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "demo", "--output", str(output)],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_demo_trains_evaluates_and_reuses_its_run(tmp_path: Path) -> None:
    started = time.monotonic()
    printed = _demo(tmp_path / "demo")
    minutes = (time.monotonic() - started) / 60
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    print(f"demo: {minutes:.1f} min, held-out {metrics}")
    assert "R@1" in printed and "mIoU" in printed and "queries/s" in printed
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'demo' / 'train' / 'mlflow.db'}" in printed
    assert metrics["R1@0.5"] >= 80.0, metrics  # the learning test's bar (tests/test_model_learning.py)
    run = MlflowRun(tmp_path / "demo" / "train").run
    assert (
        run.info.status == "FINISHED"
        and run.data.tags["zero_stage"] == "2"
        and run.data.tags["world_size"] == "2"
    )
    assert run.data.metrics["eval/synthetic-charades/val/R1_IoU0.5"] == pytest.approx(metrics["R1@0.5"])
    again = _demo(tmp_path / "demo")  # reuses the shards and the finished run
    assert "training already finished" in again
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["R1@0.5"] == metrics["R1@0.5"]
