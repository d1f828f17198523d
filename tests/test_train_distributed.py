"""Real distributed training on a tiny dataset: `mktn train` with 2 Ray workers under DeepSpeed ZeRO-1 and ZeRO-3,
tracked in MLflow (SQLite), and the faults a long job must survive: a worker SIGKILLed twice, the driver killed
and `--resume`d, an interrupted checkpoint write.

One uninterrupted ZeRO-1 run is the reference: the faulted runs use the same config and seed and must end
with the same steps in MLflow and the same metrics within noise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

from cluster.cli import main
from data_pipeline.shards import read_manifest
from tests.train_jobs import (
    MlflowRun,
    audit,
    break_one_sample,
    checkpoints,
    run,
    start,
    tiny_dataset,
    train_args,
    wait_for,
)

REFERENCE = ["cluster.num_workers=2", "deepspeed.zero_stage=1", "train.epochs=3", "train.keep_best=1"]
METRICS = ("R1_IoU0.3", "R1_IoU0.5", "R1_IoU0.7", "R5_IoU0.3", "R5_IoU0.5", "R5_IoU0.7", "mIoU")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zero1") / "run"
    run(train_args(out, data, *REFERENCE), out.parent / "train.log")
    return out


@pytest.fixture(scope="module")
def zero3(data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ZeRO-3 run whose training shards hold one corrupt sample (skipped, counted, logged)."""
    root = tmp_path_factory.mktemp("zero3")
    train = shutil.copytree(data[0], root / "train")
    (root / "broken").write_text(break_one_sample(str(train)))
    out = root / "run"
    run(
        train_args(
            out,
            (str(train), data[1]),
            "cluster.num_workers=2",
            "deepspeed.zero_stage=3",
            "train.epochs=3",
            "data.verify_checksums=false",
        ),
        root / "train.log",
    )
    return out


def test_a_corrupt_sample_is_skipped_counted_and_logged(zero3: Path) -> None:
    key = (zero3.parent / "broken").read_text()
    assert MlflowRun(zero3).values("data/corrupt_samples") == [1.0, 1.0, 1.0]  # once in each of the 3 epochs
    log = (zero3.parent / "train.log").read_text()
    skipped = [line[line.index("rank ") :] for line in log.splitlines() if "skipped a corrupt sample" in line]
    assert len(skipped) == 3 and all(key in line for line in skipped), (
        skipped
    )  # one line per epoch, printed once


def test_each_epoch_prints_one_progress_line(reference: Path) -> None:
    log = (reference.parent / "train.log").read_text()
    epochs = [re.search(r"epoch (\d+)/3 \(step", line) for line in log.splitlines()]
    assert [m.group(1) for m in epochs if m] == ["1", "2", "3"]  # Ray Train's print patch once doubled them


def _last_step(output: Path, epoch: int | None = None) -> int:
    """The global step at the end of `epoch` (0-based; None: of the whole run), from the batch audit."""
    return max(x["step"] for x in audit(output) if epoch is None or x["epoch"] == epoch)


@pytest.mark.parametrize("which", ["reference", "zero3"])
def test_loss_decreases(which: str, request: pytest.FixtureRequest) -> None:
    loss = MlflowRun(request.getfixturevalue(which)).values("train/loss")
    quarter = len(loss) // 4
    assert sum(loss[-quarter:]) < 0.95 * sum(loss[:quarter]), loss


def test_mlflow_run_holds_params_metrics_tags_and_artifacts(reference: Path) -> None:
    mlflow = MlflowRun(reference)
    run_ = mlflow.run
    assert run_.info.status == "FINISHED"
    params = run_.data.params
    assert params["deepspeed.zero_stage"] == "1" and params["cluster.num_workers"] == "2"
    assert params["train.epochs"] == "3" and params["model.d_model"] == "64" and len(params) > 60
    tags = run_.data.tags
    assert tags["world_size"] == "2" and tags["zero_stage"] == "1" and tags["dataset"] == "synthetic-charades"
    assert len(tags["git_commit"]) >= 7 and len(tags["manifest_hash"]) == 64
    total = _last_step(reference)
    for key in ("train/loss", "train/L_CL", "train/L_1", "train/L_2", "train/L_3", "train/phi", "train/lr"):
        assert mlflow.steps(key) == list(range(1, total + 1)), key  # every step, once
    for key in ("train/qps", "train/vps", "train/step_time_s", "train/data_wait_frac"):
        assert mlflow.steps(key) and all(v >= 0 for v in mlflow.values(key)), key
    assert min(mlflow.values("train/qps")) > 0
    for key in (*(f"val/{m}" for m in METRICS), "sys/peak_memory_mb_rank0", "sys/peak_memory_mb_rank1"):
        assert len(mlflow.steps(key)) == 3, key  # once per epoch
    assert all(v > 100 for v in mlflow.values("sys/peak_memory_mb_rank1"))  # MB of a process running torch
    assert mlflow.values("data/queries_rank0")[0] + mlflow.values("data/queries_rank1")[0] == sum(
        read_manifest(json.loads((reference / "run.json").read_text())["config"]["data"]["train"])
        .column("n_queries")
        .to_pylist()
    )
    assert mlflow.artifacts() >= {"checkpoint", "model", "plots", "run.json"}
    assert mlflow.artifacts("plots") == {"plots/training_curves.png", "plots/val_moments.png"}
    assert {"checkpoint/mktn_state.json", "checkpoint/ds", "checkpoint/job.json"} <= mlflow.artifacts(
        "checkpoint"
    )


def test_no_video_is_split_across_workers_or_batches(reference: Path, data: tuple[str, str]) -> None:
    manifest = read_manifest(data[0])
    queries_of = dict(zip(manifest.column("video_id").to_pylist(), manifest.column("n_queries").to_pylist()))
    lines = audit(reference)
    for epoch in range(3):
        seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for line in (x for x in lines if x["epoch"] == epoch):
            for video, queries in line["videos"].items():
                assert len(queries) == queries_of[video], (video, queries)  # all its pairs, in this one batch
                if line["fresh"]:
                    seen[video].append((line["rank"], line["step"]))
        assert set(seen) == set(queries_of), f"epoch {epoch}: videos never trained on"
        assert all(len(places) == 1 for places in seen.values()), "a video trained twice as fresh data"
    steps = defaultdict(set)
    for line in lines:
        steps[line["rank"]].add(line["step"])
    assert steps[0] == steps[1]  # equal step counts on both workers


def test_zero3_export_and_checkpoint_reproduce_validation_without_deepspeed_or_ray(zero3: Path, data) -> None:
    script = f"""
import json, sys
sys.modules["deepspeed"] = sys.modules["ray"] = None  # importing either now fails
from mktn.export import load_model
from cluster.serve.evaluate import evaluate
from cluster.job.config import JobConfig
job = JobConfig.model_validate(json.load(open({str(zero3 / "run.json")!r}))["config"])
print(json.dumps(evaluate(load_model({str(zero3 / "model")!r}), {data[1]!r}, job.data).metrics))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    mlflow = MlflowRun(zero3)
    reported = {m: mlflow.values(f"val/{m}")[-1] for m in METRICS}
    assert {m.replace("_IoU", "@"): v for m, v in reported.items()} == pytest.approx(metrics, abs=1e-6)
    # `mktn eval` straight from the ZeRO-3 shards of the final checkpoint gives the same numbers
    (checkpoint,) = (zero3 / "ray" / "train").glob("checkpoint_epoch0003")
    assert main(["eval", str(checkpoint), "--data", data[1], "--json", str(zero3 / "eval.json")]) == 0
    from_shards = json.loads((zero3 / "eval.json").read_text())
    assert {k: from_shards[k] for k in metrics} == pytest.approx(metrics, abs=1e-6)
    assert "eval/synthetic-charades/val/mIoU" in mlflow.client.get_run(mlflow.run_id).data.metrics


def test_best_checkpoints_and_the_latest_are_kept(reference: Path) -> None:
    kept = sorted(checkpoints(reference))
    assert "checkpoint_epoch0003" in kept and len(kept) <= 2  # keep_best=1, plus the latest
    state = json.loads((reference / "ray" / "train" / "checkpoint_epoch0003" / "mktn_state.json").read_text())
    assert (state["epochs_done"], state["world_size"], state["zero_stage"]) == (3, 2, 1)
    assert state["run_id"] == MlflowRun(reference).run_id


# ---- faults ------------------------------------------------------------------------------------------


def _worker_pid(output: Path, rank: int, epoch: int, exclude: set[int]) -> int | None:
    """The pid of `rank`'s worker once it trains in `epoch`, unless it is one of `exclude`."""
    pids = [
        x["pid"]
        for x in audit(output)
        if x["rank"] == rank and x["epoch"] == epoch and x["pid"] not in exclude
    ]
    return pids[-1] if pids else None


def _assert_same_steps_and_metrics(output: Path, reference: Path) -> None:
    mlflow, ref = MlflowRun(output), MlflowRun(reference)
    assert mlflow.run.info.status == "FINISHED"
    assert mlflow.steps("train/loss") == ref.steps("train/loss")  # no gap, no duplicate
    assert len(mlflow.client.search_runs([mlflow.run.info.experiment_id])) == 1  # the same run throughout
    for metric in ("R1_IoU0.5", "R5_IoU0.5", "mIoU"):
        final, uninterrupted = mlflow.values(f"val/{metric}")[-1], ref.values(f"val/{metric}")[-1]
        print(f"{output.parent.name}: final val/{metric} {final:.2f} (uninterrupted {uninterrupted:.2f})")
        assert final == pytest.approx(uninterrupted, abs=10.0)


def test_worker_sigkilled_twice_recovers_from_checkpoints(data, reference: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "train.log"
    job = start(train_args(out, data, *REFERENCE), log)
    try:
        wait_for(lambda: "checkpoint_epoch0001" in checkpoints(out), "the first checkpoint", process=job)
        first = wait_for(lambda: _worker_pid(out, rank=1, epoch=1, exclude=set()), "epoch 2", process=job)
        os.kill(first, signal.SIGKILL)
        old = {x["pid"] for x in audit(out)}
        wait_for(lambda: "checkpoint_epoch0002" in checkpoints(out), "the second checkpoint", process=job)
        second = wait_for(
            lambda: _worker_pid(out, rank=0, epoch=2, exclude=old), "epoch 3 after a restart", process=job
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
    assert restarted_at == [
        _last_step(reference, 0) + 1,
        _last_step(reference, 1) + 1,
    ]  # from the last checkpoints
    _assert_same_steps_and_metrics(out, reference)


def test_driver_killed_then_resumed_past_an_interrupted_checkpoint(
    data, reference: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "run", tmp_path / "train.log"
    job = start(train_args(out, data, *REFERENCE), log)
    wait_for(lambda: "checkpoint_epoch0001" in checkpoints(out), "the first checkpoint", process=job)
    os.killpg(job.pid, signal.SIGKILL)  # the driver and the local Ray it started
    job.wait()
    workers = {x["pid"] for x in audit(out)}
    wait_for(lambda: not any(psutil.pid_exists(p) for p in workers), "the workers to exit", timeout=60)
    committed = max(int(name.removeprefix("checkpoint_epoch")) for name in checkpoints(out))
    assert committed < 3, "the job finished before the driver was killed"
    # What a writer killed mid-copy leaves behind: the next checkpoint's folder, truncated shards, no state file.
    storage = out / "ray" / "train"
    partial = storage / f"checkpoint_epoch{committed + 1:04d}" / "ds"
    shutil.copytree(storage / f"checkpoint_epoch{committed:04d}" / "ds", partial, dirs_exist_ok=True)
    for shard in partial.iterdir():
        shard.write_bytes(shard.read_bytes()[:100])
    (partial.parent / "mktn_state.json").unlink(missing_ok=True)
    assert MlflowRun(out).run.info.status == "RUNNING"

    run([*train_args(out, data)[:4], "--output", str(out), "--resume"], log)  # CONFIG omitted: the saved one

    resumed = [x for x in audit(out) if x["pid"] not in workers]
    # continued right after the last committed checkpoint: not from the interrupted one, not from scratch
    assert min(x["step"] for x in resumed) == _last_step(reference, committed - 1) + 1
    assert min(x["epoch"] for x in resumed) == committed
    _assert_same_steps_and_metrics(out, reference)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
