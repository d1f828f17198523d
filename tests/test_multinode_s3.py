"""Multi-node training with every shared byte on an object store (slow; `make test-slow`).

A real S3 server (moto) and a real two-node Ray cluster (`ray start --head` + `ray start --address`, token
auth) on loopback. Shards, Ray Train checkpoints, the exported model and MLflow artifacts all live in the
bucket; the job runs as a Ray Job (`ray job submit --working-dir .`), so its driver runs on the head node
like on a real cluster. Scenarios:

- node loss: the non-head node's raylet is SIGKILLed after the first checkpoint reached the bucket; a
  replacement node joins; Ray Train restarts the worker group from that checkpoint (downloaded from the
  bucket) and the job finishes; the model is then evaluated from the object store.
- `ray job stop`: a stopped job leaves its last checkpoint in the bucket; `mktn train --resume` submitted
  as a new job continues from it and finishes.
- the whole run folder in the bucket (`mktn train --output s3://...`, local Ray, a real `mlflow server` with
  its artifacts in the bucket): train, `--resume` for one more epoch, `mktn eval` from the bucket.

Run one with `pytest -m slow -s tests/test_multinode_s3.py`; `-s` prints the commands, wall times and
the bucket listing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import fsspec
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cluster.cli import main
from data_pipeline.prepare import prepare_synthetic
from data_pipeline.synthetic import generate
from tests.ray_cluster import LocalRayCluster, cluster_env
from tests.train_jobs import MlflowRun, audit, run, train_args

if TYPE_CHECKING:
    from tests.mlflow_server import MlflowServer

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.s3_server", "tests.mlflow_server"]  # s3_server / s3_bucket, mlflow_server fixtures

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EPOCHS = 8  # several checkpoints: a kill or stop after the first one lands mid-run
# Job log lines worth printing: progress, failures, restarts, checkpoints, results.
NOTABLE = re.compile(r"epoch|restor|restart|fail|error|died|dead|checkpoint|validation|R@1|throughput", re.I)
# A tiny job: 2 workers (one per node), 1 CPU each, a small model; per epoch ~3 steps per worker.
TRAIN_OVERRIDES = [
    "cluster.num_workers=2",
    "cluster.cpus_per_worker=1",
    "cluster.max_failures=3",
    "train.log_every_steps=1",
    "model.d_model=32",
    "model.num_heads=2",
    "data.max_clips=16",
    "data.max_videos_per_batch=4",
]


class Scenario:
    """One bucket, one local two-node Ray cluster, one MLflow store; commands are timed for the report."""

    def __init__(self, bucket: str, tmp: Path):
        self.bucket, self.tmp = bucket, tmp
        self.data = f"{bucket}/data"
        self.timings: list[tuple[str, float]] = []
        self.jobs: list[str] = []
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"  # the tracking DB stays on the driver's node
        self.env = cluster_env(
            {
                "MLFLOW_TRACKING_URI": tracking,
                "DS_ACCELERATOR": "cpu",
                "RAY_DEDUP_LOGS": "0",
                "MKTN_DEBUG": "1",
                # The job's entrypoint runs `mktn` through a shell: this interpreter's scripts come first on
                # PATH even when the venv is not activated (`.venv/bin/python -m pytest`).
                "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            }
        )
        self.cluster = LocalRayCluster(root=tmp, env=self.env)

    def run(self, args: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command (cwd = repo, the scenario's environment) and record its wall time."""
        started = time.monotonic()
        out = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        self.timings.append((shlex.join(args).replace(str(BIN) + "/", ""), time.monotonic() - started))
        if check:
            assert out.returncode == 0, (
                f"{shlex.join(args)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
            )
        return out

    def up(self) -> None:
        """MLflow experiment with its artifacts in the bucket, the dataset in the bucket, then the cluster."""
        client = MlflowClient(self.env["MLFLOW_TRACKING_URI"])
        client.create_experiment("mktn", artifact_location=f"{self.bucket}/mlflow")
        self.run(
            [
                str(BIN / "mktn"),
                "prepare",
                "synthetic",
                "--out",
                self.data,
                "--videos",
                "40",
                "--val-videos",
                "16",
                "--shard-size-mb",
                "0.3",
                "--no-progress",
            ]
        )
        started = time.monotonic()
        self.cluster.start_head()
        self.cluster.add_node("node2")
        self.timings.append(("ray start --head + ray start --address (2 nodes)", time.monotonic() - started))

    def submit(self, run_name: str, epochs: int, *extra: str) -> str:
        """`ray job submit --no-wait --working-dir . -- mktn train ...`; returns the job id."""
        entrypoint = [
            "mktn",
            "train",
            "configs/synthetic.yaml",
            f"data.train={self.data}/train",
            f"data.val={self.data}/val",
            *TRAIN_OVERRIDES,
            f"train.epochs={epochs}",
            f"cluster.storage_path={self.bucket}/runs/{run_name}/ray",
            "--output",
            str(self.tmp / run_name),
            *extra,
        ]
        out = self.ray_job("submit", "--no-wait", "--working-dir", ".", "--", *entrypoint)
        job = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out.stdout + out.stderr).group(1)
        self.jobs.append(job)
        return job

    def ray_job(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(
            [str(BIN / "ray"), "job", *args[:1], "--address", self.cluster.dashboard_url, *args[1:]],
            check=check,
        )

    def job_status(self, job_id: str) -> str:
        """The job's status from the Ray Jobs REST API (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED)."""
        return self.cluster.api(f"/api/jobs/{job_id}")["status"]

    def wait_status(self, job_id: str, want: set[str], timeout: float = 900) -> str:
        status = _wait(
            lambda: (s := self.job_status(job_id)) in want | {"FAILED"} and s, f"job {want}", timeout
        )
        if status == "FAILED" and "FAILED" not in want:
            pytest.fail(f"job {job_id} failed:\n{self.ray_job('logs', job_id).stdout[-8000:]}")
        return status

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Object key -> size under `prefix`, straight from the server."""
        s3, out = boto3.client("s3"), {}
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket[5:], Prefix=prefix)
        for page in pages:
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def wait_checkpoint(self, job_id: str, run_name: str) -> list[str]:
        """Wait until Ray Train committed a checkpoint of `run_name` to the bucket; fail if the job ends first."""

        def committed() -> list[str]:
            if self.job_status(job_id) in {"FAILED", "STOPPED", "SUCCEEDED"}:
                pytest.fail(
                    f"job {job_id} ended before a checkpoint:\n{self.ray_job('logs', job_id).stdout[-8000:]}"
                )
            return self.registered_checkpoints(run_name)

        return _wait(committed, "the first checkpoint in the bucket", 900)

    def registered_checkpoints(self, run_name: str) -> list[str]:
        """Checkpoints Ray Train has committed (its manager snapshot in the bucket), oldest first."""
        key = f"runs/{run_name}/ray/train/checkpoint_manager_snapshot.json"
        if key not in self.keys(key):
            return []
        body = boto3.client("s3").get_object(Bucket=self.bucket[5:], Key=key)["Body"].read().decode()
        return sorted(set(re.findall(r"checkpoint_epoch\d{4}", body)))

    def report(self, title: str) -> None:
        """Commands with wall times, the jobs' notable log lines and the bucket listing (printed; `pytest -s`)."""
        print(f"\n=== {title}: commands and wall times")
        for command, seconds in self.timings:
            print(f"{seconds:8.1f} s  {command}")
        for job in self.jobs:
            logs = self.ray_job("logs", job, check=False).stdout.splitlines()
            print(f"=== job {job}: {len(logs)} log lines, notable ones:")
            print("\n".join(line[:240] for line in logs if NOTABLE.search(line)))
        print(f"=== {self.bucket} after the run")
        for key, size in sorted(self.keys().items()):
            print(f"{size:10d}  {key}")


def _wait(condition: Callable[[], object], what: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def scenario(s3_bucket, tmp_path, request):
    s = Scenario(s3_bucket, tmp_path)
    try:
        s.up()
        yield s
    finally:
        s.report(request.node.name)
        s.cluster.shutdown()


def _checkpoint_reads_after(log: Path, since: float, run_name: str) -> list[str]:
    """Object GETs of `run_name`'s checkpoints that the S3 server logged after `since` (epoch seconds)."""
    hits = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log.read_text()).splitlines():  # werkzeug colours some lines
        m = re.search(
            r"\[(\d+/\w+/\d+ \d+:\d+:\d+)\] \"GET /[^/]+/(runs/" + run_name + r"/ray/train/checkpoint_\S+)",
            line,
        )
        if m and time.mktime(time.strptime(m.group(1), "%d/%b/%Y %H:%M:%S")) >= int(since):
            hits.append(m.group(2))
    return hits


def test_node_loss_resumes_from_the_object_store(scenario, s3_server):
    s, run = scenario, "r1"
    submitted = time.monotonic()
    job = s.submit(run, EPOCHS)
    first = s.wait_checkpoint(job, run)
    killed_at = time.time()
    raylet = s.cluster.kill_raylet("node2")
    s.timings.append((f"SIGKILL raylet of node2 (pid {raylet}) after {first[-1]} was committed", 0.0))
    started = time.monotonic()
    s.cluster.add_node("node3")  # the replacement machine
    s.timings.append(("ray start --address (replacement node3)", time.monotonic() - started))

    assert s.wait_status(job, {"SUCCEEDED"}) == "SUCCEEDED"
    logs = s.ray_job("logs", job).stdout
    s.timings.append(
        (f"job {job}: submit -> SUCCEEDED (through the node loss)", time.monotonic() - submitted)
    )

    # The restarted workers read the newest committed checkpoint back from the bucket and go on after it
    # (the driver reads the final one at the end, to export the model).
    reads = " ".join(_checkpoint_reads_after(s3_server.log, killed_at, run))
    (restored,) = {int(e) for e in re.findall(r"checkpoint_epoch(\d{4})/", reads)} - {EPOCHS}
    assert restored >= int(first[-1].removeprefix("checkpoint_epoch"))
    assert _resumed_epoch(logs) == restored + 1, f"restarted workers did not continue after epoch {restored}"
    keys = s.keys()
    assert sum(k.startswith("data/train/shards/shard-") for k in keys) >= 2
    final = f"runs/{run}/ray/train/checkpoint_epoch{EPOCHS:04d}/mktn_state.json"
    assert final in keys, sorted(keys)
    assert any(k.startswith("mlflow/") and "/artifacts/model/" in k for k in keys), (
        "model not in MLflow's S3 store"
    )
    assert "validation after" in logs and "R1@0.5" in logs

    run_id = json.loads((s.tmp / run / "run.json").read_text())["run_id"]
    # Evaluate from the object store twice, reports written there too: the model MLflow logged (artifacts in the
    # bucket) and the final training checkpoint Ray Train left in the bucket must score the same.
    final_checkpoint = f"{s.bucket}/runs/{run}/ray/train/checkpoint_epoch{EPOCHS:04d}"
    for name, model in (("model", f"runs:/{run_id}/model"), ("checkpoint", final_checkpoint)):
        out = s.run(
            [
                str(BIN / "mktn"),
                "eval",
                model,
                "--data",
                f"{s.data}/val",
                "--json",
                f"{s.bucket}/eval/{name}.json",
            ]
        )
        assert "mIoU" in out.stdout and "queries/s" in out.stdout
    scores = {}
    for name in ("model", "checkpoint"):
        with fsspec.open(f"{s.bucket}/eval/{name}.json") as f:
            scores[name] = {k: v for k, v in json.load(f).items() if not k.startswith("inference_")}
    assert scores["model"]["mIoU"] > 0 and scores["model"] == pytest.approx(scores["checkpoint"])
    _predict_from_the_object_store(s, run_id)


def _resumed_epoch(logs: str) -> int:
    """The first epoch a new rank-0 worker process reported: where the restarted worker group began."""
    lines = re.findall(
        rf"RayTrainWorker pid=(\d+)\S* epoch (\d+)/{EPOCHS} \(step", re.sub(r"\x1b\[[0-9;]*m", "", logs)
    )
    first_pid = lines[0][0]
    return next(int(epoch) for pid, epoch in lines if pid != first_pid)


def _predict_from_the_object_store(s: Scenario, run_id: str) -> None:
    """`mktn predict` with features, queries and predictions all in the bucket."""
    groups = generate(2, seed=7, feature_dim=64, num_patches=4)
    lines = []
    for g in groups:
        with fsspec.open(f"{s.bucket}/predict/features/{g.video_id}.npy", "wb") as f:
            np.save(f, g.features)
        lines += [
            json.dumps({"video_id": g.video_id, "sentence": q.sentence, "duration": g.duration})
            for q in g.queries
        ]
    with fsspec.open(f"{s.bucket}/predict/queries.jsonl", "w") as f:
        f.write("\n".join(lines) + "\n")
    s.run(
        [
            str(BIN / "mktn"),
            "predict",
            f"runs:/{run_id}/model",
            "--features",
            f"{s.bucket}/predict/features",
            "--queries",
            f"{s.bucket}/predict/queries.jsonl",
            "--out",
            f"{s.bucket}/predict/predictions.jsonl",
        ]
    )
    with fsspec.open(f"{s.bucket}/predict/predictions.jsonl", "r") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == len(lines) and all(len(r["moments"]) == 5 for r in records)


def test_ray_job_stop_leaves_a_resumable_checkpoint(scenario):
    s, run, epochs = scenario, "r2", EPOCHS
    job = s.submit(run, epochs)
    s.wait_checkpoint(job, run)
    s.ray_job("stop", job)
    assert s.wait_status(job, {"STOPPED"}) == "STOPPED"
    assert re.search(rf"epoch 1/{epochs} \(step \d+\): loss", s.ray_job("logs", job).stdout), (
        "no progress in the logs"
    )
    last = s.registered_checkpoints(run)[-1]
    done = int(last.removeprefix("checkpoint_epoch"))
    assert 1 <= done < epochs, f"the stop did not land mid-run ({last} of {epochs} epochs)"

    resumed = s.submit(run, epochs, "--resume")
    assert s.wait_status(resumed, {"SUCCEEDED"}) == "SUCCEEDED"
    first_epoch = re.search(rf"epoch (\d+)/{epochs} \(step", s.ray_job("logs", resumed).stdout).group(1)
    assert int(first_epoch) == done + 1, f"resumed at epoch {first_epoch}, the bucket held {last}"
    keys = s.keys(f"runs/{run}/ray/train/")
    assert f"runs/{run}/ray/train/checkpoint_epoch{epochs:04d}/mktn_state.json" in keys
    state = json.loads((s.tmp / run / "run.json").read_text())
    assert state["status"] == "finished"


def test_run_folder_on_s3_trains_resumes_and_evaluates(
    s3_bucket, mlflow_server: MlflowServer, tmp_path, monkeypatch
):
    """`mktn train --output s3://...` (2 local workers, 1 epoch), `--resume train.epochs=2`, `mktn eval` of the
    run in the bucket: every file of the run is an object in the bucket, the metrics are in the MLflow server
    (whose artifacts are in the bucket too), the metric spool in the driver's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a stray local folder (e.g. `s3:/...`) would show up here
    timings: list[tuple[str, float]] = []

    def timed(what: str, call: Callable[[], object]) -> None:
        started = time.monotonic()
        call()
        timings.append((what, time.monotonic() - started))

    mlflow_server.artifacts = f"{s3_bucket}/mlflow"
    timed("mlflow server start", mlflow_server.start)
    data, out, log = f"{s3_bucket}/data", f"{s3_bucket}/runs/r1", tmp_path / "train.log"
    timed(
        "prepare (in process) --out s3://",
        lambda: prepare_synthetic(data, videos=48, val_videos=16, shard_size_mb=0.1, progress=False),
    )
    args = train_args(out, (f"{data}/train", f"{data}/val"), "cluster.num_workers=2", "train.epochs=1")
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    timed(f"mktn train ... --output {out} (1 epoch)", lambda: run(args, log, **env))
    resume = [*args[:4], "--output", out, "--resume", "train.epochs=2"]
    timed("mktn train --output ... --resume train.epochs=2", lambda: run(resume, log, **env))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    eval_args = ["eval", out, "--data", f"{data}/val", "--json", f"{out}/eval.json"]
    timed(f"mktn eval {out} --data {data}/val", lambda: main(eval_args))

    keys = _listing(s3_bucket)
    print("\n=== commands and wall times")
    print("\n".join(f"{seconds:8.1f} s  {what}" for what, seconds in timings))
    print(f"=== {s3_bucket} after the run")
    print("\n".join(f"{size:10d}  {key}" for key, size in sorted(keys.items())))

    run_keys = {k.removeprefix("runs/r1/") for k in keys if k.startswith("runs/r1/")}
    assert {
        "run.json",
        "eval.json",
        "model/model.safetensors",
        "model/config.json",
        "model/vocab.json",
        "plots/training_curves.png",
        "plots/val_moments.png",
    } <= run_keys
    for epoch in (1, 2):
        assert f"ray/train/checkpoint_epoch{epoch:04d}/mktn_state.json" in run_keys
    assert {k.split("/")[1] for k in run_keys if k.startswith("batches/")} == {"rank-0", "rank-1"}
    assert any(k.startswith("mlflow/") and "/artifacts/model/" in k for k in keys)  # the server's artifacts
    assert not list(tmp_path.glob("s3*")) and list(
        (tmp_path / "cache" / "mktn" / "spool").glob("*/metrics.jsonl")
    )

    lines = audit(out)
    assert {x["epoch"] for x in lines} == {0, 1} and {x["rank"] for x in lines} == {0, 1}
    mlflow = MlflowRun(out)
    assert mlflow.client.tracking_uri == mlflow_server.uri and mlflow.run.info.status == "FINISHED"
    assert mlflow.steps("train/loss") == list(range(1, max(x["step"] for x in lines) + 1))  # each step once
    assert len(mlflow.steps("val/mIoU")) == 2
    assert {"model", "plots", "checkpoint", "run.json"} <= mlflow.artifacts()
    with fsspec.open(f"{out}/eval.json") as f:
        evaluated = json.load(f)
    assert evaluated["mIoU"] == pytest.approx(mlflow.values("val/mIoU")[-1], abs=1e-6)
    assert "eval/synthetic-charades/val/mIoU" in mlflow.client.get_run(mlflow.run_id).data.metrics
    with fsspec.open(f"{out}/run.json") as f:
        assert json.load(f)["status"] == "finished"


def _listing(bucket: str) -> dict[str, int]:
    """Object key -> size of every object in `bucket`, straight from the server."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket.removeprefix("s3://"))
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
