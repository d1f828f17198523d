"""The faults a long job must survive, against an uninterrupted reference run of the same config and seed
(`mktn train`, 2 Ray workers under DeepSpeed ZeRO-1, MLflow on SQLite): a worker SIGKILLed twice, and the
driver killed and `--resume`d past an interrupted checkpoint write. Each faulted run must end with the
reference's steps in MLflow and its metrics within noise. Slow (three training runs): `make test-slow`;
the default suite covers one worker kill and one driver kill on its shared run (test_train_distributed.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.train_jobs import (
    MlflowRun,
    audit,
    checkpoints,
    interrupt_checkpoint_write,
    kill_driver,
    last_step,
    run,
    start,
    train_args,
    wait_for,
    worker_pid,
)

pytestmark = pytest.mark.slow
REFERENCE = ["cluster.num_workers=2", "deepspeed.zero_stage=1", "train.epochs=3", "train.keep_best=1"]


@pytest.fixture(scope="module")
def reference(tiny_data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zero1") / "run"
    run(train_args(out, tiny_data, *REFERENCE), out.parent / "train.log")
    return out


def _assert_same_steps_and_metrics(output: Path, reference: Path) -> None:
    mlflow, ref = MlflowRun(output), MlflowRun(reference)
    assert mlflow.run.info.status == "FINISHED"
    assert mlflow.steps("train/loss") == ref.steps("train/loss")  # no gap, no duplicate
    assert len(mlflow.client.search_runs([mlflow.run.info.experiment_id])) == 1  # the same run throughout
    for metric in ("R1_IoU0.5", "R5_IoU0.5", "mIoU"):
        final, uninterrupted = mlflow.values(f"val/{metric}")[-1], ref.values(f"val/{metric}")[-1]
        print(f"{output.parent.name}: final val/{metric} {final:.2f} (uninterrupted {uninterrupted:.2f})")
        assert final == pytest.approx(uninterrupted, abs=10.0)


def test_worker_sigkilled_twice_recovers_from_checkpoints(tiny_data, reference: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "train.log"
    job = start(train_args(out, tiny_data, *REFERENCE), log)
    try:
        wait_for(lambda: "checkpoint_epoch0001" in checkpoints(out), "the first checkpoint", process=job)
        first = wait_for(lambda: worker_pid(out, rank=1, epoch=1, exclude=set()), "epoch 2", process=job)
        os.kill(first, signal.SIGKILL)
        old = {x["pid"] for x in audit(out)}
        wait_for(lambda: "checkpoint_epoch0002" in checkpoints(out), "the second checkpoint", process=job)
        second = wait_for(
            lambda: worker_pid(out, rank=0, epoch=2, exclude=old), "epoch 3 after a restart", process=job
        )
        os.kill(second, signal.SIGKILL)
        assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    lines = audit(out)
    attempts = sorted(
        {x["pid"] for x in lines if x["rank"] == 0},
        key=lambda p: min(x["step"] for x in lines if x["pid"] == p),
    )
    assert len(attempts) == 3  # the first worker group and two restarts
    restarted_at = [min(x["step"] for x in lines if x["pid"] == pid) for pid in attempts[1:]]
    assert restarted_at == [last_step(reference, 0) + 1, last_step(reference, 1) + 1]  # the last checkpoints
    _assert_same_steps_and_metrics(out, reference)


def test_driver_killed_then_resumed_past_an_interrupted_checkpoint(
    tiny_data, reference: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "run", tmp_path / "train.log"
    job = start(train_args(out, tiny_data, *REFERENCE), log)
    wait_for(lambda: "checkpoint_epoch0001" in checkpoints(out), "the first checkpoint", process=job)
    workers = kill_driver(job, out)
    committed = max(int(name.removeprefix("checkpoint_epoch")) for name in checkpoints(out))
    assert committed < 3, "the job finished before the driver was killed"
    interrupt_checkpoint_write(out, committed)
    assert MlflowRun(out).run.info.status == "RUNNING"

    run(
        [*train_args(out, tiny_data)[:4], "--output", str(out), "--resume"], log
    )  # CONFIG omitted: the saved one

    resumed = [x for x in audit(out) if x["pid"] not in workers]
    # continued right after the last committed checkpoint: not from the interrupted one, not from scratch
    assert min(x["step"] for x in resumed) == last_step(reference, committed - 1) + 1
    assert min(x["epoch"] for x in resumed) == committed
    _assert_same_steps_and_metrics(out, reference)
