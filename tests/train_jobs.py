"""Helpers for the tests that run real training jobs: a tiny sharded dataset, `mktn train` as a subprocess,
the faults a long job must survive (`train_through_faults`: the run the default suite shares), and readers
for what a run left behind (MLflow, the batch audit, Ray's checkpoints)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fsspec
import psutil
from mlflow.tracking import MlflowClient

from data_pipeline.prepare import prepare_synthetic
from data_pipeline.shards import shard_urls

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic.yaml"
# A small job: 48 training videos in ~20 shards, 4 videos per batch -> ~6 steps per worker and epoch.
TINY = ["data.max_videos_per_batch=4", "train.log_every_steps=2", "train.record_batches=true"]


def tiny_dataset(root: Path) -> tuple[str, str]:
    """48 training and 16 validation synthetic videos in shards of ~2 videos; returns (train URL, val URL)."""
    prepare_synthetic(str(root), videos=48, val_videos=16, shard_size_mb=0.1, progress=False)
    return str(root / "train"), str(root / "val")


def break_one_sample(dataset_url: str) -> str:
    """Rename the first `.npy` member of the first shard to `.bin` (a sample webdataset cannot decode: a corrupt
    sample for the trainer to skip and count); returns its key. The manifest's sha256 no longer matches, so
    the run that reads it needs `data.verify_checksums=false`."""
    shard = Path(shard_urls(dataset_url)[0])
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken = next(m for m, _ in members if m.name.endswith(".npy"))
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member is broken:
                member.name = member.name.removesuffix(".npy") + ".bin"
            tar.addfile(member, io.BytesIO(data))
    return broken.name.removesuffix(".bin")


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a training subprocess: CPU DeepSpeed, full tracebacks on user errors, and this
    interpreter's scripts (`mktn`, `mlflow`) first on PATH even when the venv is not activated."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {
        **os.environ,
        "PATH": path,
        "DS_ACCELERATOR": "cpu",
        "RAY_DEDUP_LOGS": "0",
        "MKTN_DEBUG": "1",
        **extra,
    }


def train_args(output: Path, data: tuple[str, str], *overrides: str) -> list[str]:
    """`mktn train` on the tiny dataset with `overrides`, its run folder at `output`."""
    return [
        sys.executable,
        "-m",
        "cluster.cli",
        "train",
        str(CONFIG),
        f"data.train={data[0]}",
        f"data.val={data[1]}",
        *TINY,
        *overrides,
        "--output",
        str(output),
    ]


def run(args: list[str], log: Path, timeout: float = 600, **env: str) -> None:
    """Run a command to completion, its output in `log`; a failure shows the log's tail."""
    with log.open("ab") as out:
        code = subprocess.run(
            args, cwd=REPO, env=job_env(**env), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode
    assert code == 0, f"{args[3:5]} exited {code}:\n{log.read_text()[-6000:]}"


def start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start a command in its own session (so the test can kill its whole process group)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            args, cwd=REPO, env=job_env(**env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for(condition: Callable[[], object], what: str, timeout: float = 300, process=None) -> object:
    """Poll `condition` until it returns something truthy; fail if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job exited ({process.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def audit(output: Path | str) -> list[dict]:
    """Every batch every worker trained on (`train.record_batches`), with the rank added; `output` is the
    run folder, a local path or a URL (the audit's objects `batches/rank-R/<step>-<pid>.jsonl`)."""
    fs, root = fsspec.core.url_to_fs(str(output))
    lines = []
    for path in sorted(fs.glob(f"{root}/batches/rank-*/*.jsonl")):
        rank = int(path.split("/")[-2].removeprefix("rank-"))
        lines += [json.loads(line) | {"rank": rank} for line in fs.cat_file(path).decode().splitlines()]
    return lines


class MlflowRun:
    """The MLflow run of a training run folder."""

    def __init__(self, output: Path | str, tracking_uri: str | None = None):
        with fsspec.open(f"{output}/run.json", "rb") as f:  # a local run folder or a URL
            record = json.loads(f.read())
        self.client = MlflowClient(tracking_uri or record["tracking_uri"])
        self.run_id = record["run_id"]
        self.run = self.client.get_run(self.run_id)

    def steps(self, key: str) -> list[int]:
        """Every step logged for `key`, duplicates included, sorted."""
        return sorted(m.step for m in self.client.get_metric_history(self.run_id, key))

    def values(self, key: str) -> list[float]:
        return [
            m.value for m in sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: m.step)
        ]

    def artifacts(self, path: str = "") -> set[str]:
        return {a.path for a in self.client.list_artifacts(self.run_id, path)}


def checkpoints(output: Path) -> list[str]:
    """The checkpoints Ray committed for this run (its snapshot), oldest first."""
    snapshot = output / "ray" / "train" / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    state = json.loads(snapshot.read_text())
    return [r["checkpoint_dir_name"] for r in state.get("checkpoint_results", [])]


def worker_pid(output: Path, rank: int, epoch: int, exclude: set[int]) -> int | None:
    """The pid of `rank`'s worker once it trains in `epoch` (0-based), unless it is one of `exclude`."""
    pids = [
        x["pid"]
        for x in audit(output)
        if x["rank"] == rank and x["epoch"] == epoch and x["pid"] not in exclude
    ]
    return pids[-1] if pids else None


def last_step(output: Path, epoch: int | None = None) -> int:
    """The global step at the end of `epoch` (0-based; None: of the whole run), from the batch audit."""
    return max(x["step"] for x in audit(output) if epoch is None or x["epoch"] == epoch)


def kill_driver(job: subprocess.Popen, output: Path) -> set[int]:
    """SIGKILL the driver's process group (the driver and the local Ray it started); wait for its workers to
    exit; returns their pids."""
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    workers = {x["pid"] for x in audit(output)}
    wait_for(lambda: not any(psutil.pid_exists(p) for p in workers), "the workers to exit", timeout=60)
    return workers


def interrupt_checkpoint_write(output: Path, committed: int) -> None:
    """What a writer killed mid-copy leaves behind: the next checkpoint's folder, truncated shards, no state file."""
    storage = output / "ray" / "train"
    partial = storage / f"checkpoint_epoch{committed + 1:04d}" / "ds"
    shutil.copytree(storage / f"checkpoint_epoch{committed:04d}" / "ds", partial, dirs_exist_ok=True)
    for shard in partial.iterdir():
        shard.write_bytes(shard.read_bytes()[:100])
    (partial.parent / "mktn_state.json").unlink(missing_ok=True)


# The run the default suite shares: 2 workers under ZeRO-3, a corrupt training sample, 4 epochs.
SHARED_RUN = [
    "cluster.num_workers=2",
    "deepspeed.zero_stage=3",
    "train.epochs=4",
    "train.lr=0.005",  # 24 steps on 48 videos: a higher rate than the recipe's so the loss moves within them
    "train.keep_best=1",
    "data.verify_checksums=false",
]


@dataclass
class FaultedRun:
    """A finished run that survived a killed worker and a killed driver, and what was done to it."""

    output: Path
    data: tuple[str, str]  # (train with the corrupt sample, val)
    broken: str  # the key (video id) of the corrupt sample
    log: Path
    first_driver: set[int]  # the worker pids before the driver was killed
    killed_worker: int
    committed: int  # the last checkpoint committed when the driver was killed


def train_through_faults(root: Path, data: tuple[str, str]) -> FaultedRun:
    """`mktn train` (`SHARED_RUN`) with a corrupt sample in its training shards; rank 1's worker SIGKILLed in
    epoch 2 (Ray restarts the worker group from checkpoint 1); after checkpoint 2 the driver SIGKILLed and the
    next checkpoint's write left interrupted; then `mktn train --resume` (no CONFIG: the saved one) finishes."""
    train = shutil.copytree(data[0], root / "train")
    broken = break_one_sample(str(train))
    out, log = root / "run", root / "train.log"
    args = train_args(out, (str(train), data[1]), *SHARED_RUN)
    job = start(args, log)
    try:
        wait_for(lambda: "checkpoint_epoch0001" in checkpoints(out), "the first checkpoint", process=job)
        worker = wait_for(lambda: worker_pid(out, rank=1, epoch=1, exclude=set()), "epoch 2", process=job)
        os.kill(worker, signal.SIGKILL)
        wait_for(
            lambda: "checkpoint_epoch0002" in checkpoints(out), "checkpoint 2 after a restart", process=job
        )
    except BaseException:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    first_driver = kill_driver(job, out)
    committed = max(int(name.removeprefix("checkpoint_epoch")) for name in checkpoints(out))
    assert committed < 4, "the job finished before the driver was killed"
    interrupt_checkpoint_write(out, committed)
    run([*args[:4], "--output", str(out), "--resume"], log)
    return FaultedRun(out, (str(train), data[1]), broken, log, first_driver, worker, committed)
