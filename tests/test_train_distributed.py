"""Real distributed training on a tiny dataset, checked on the run the default suite shares (`trained_run`:
`mktn train` with 2 Ray workers under DeepSpeed ZeRO-3, tracked in MLflow): a corrupt sample skipped and
counted, a worker SIGKILLed mid-epoch and the worker group restarted from the last checkpoint, the driver
killed and `--resume`d past an interrupted checkpoint write; every step in MLflow exactly once, no video split
across workers or batches, the export and the checkpoint reproducing validation without DeepSpeed or Ray.
The same faults against an uninterrupted reference run (a worker killed twice; metrics within noise) are
slow-marked in tests/test_train_faults.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from cluster.cli import main
from data_pipeline.shards import read_manifest
from tests.train_jobs import FaultedRun, MlflowRun, audit, checkpoints, last_step

EPOCHS = 4
METRICS = ("R1_IoU0.3", "R1_IoU0.5", "R1_IoU0.7", "R5_IoU0.3", "R5_IoU0.5", "R5_IoU0.7", "mIoU")


def worker_lines(log: Path, pattern: str) -> list[tuple[str, str]]:
    """(worker pid, the pattern's first group) for every line a Ray worker printed that matches `pattern`."""
    found = []
    for line in log.read_text().splitlines():
        pid, match = re.search(r"\(RayTrainWorker pid=(\d+)\)", line), re.search(pattern, line)
        if pid and match:
            found.append((pid.group(1), match.group(1)))
    return found


def test_a_killed_worker_restarts_the_group_from_the_last_checkpoint(trained_run: FaultedRun) -> None:
    out = trained_run.output
    first = [x for x in audit(out) if x["pid"] in trained_run.first_driver]
    attempts = sorted(
        {x["pid"] for x in first if x["rank"] == 1},
        key=lambda p: min(x["step"] for x in first if x["pid"] == p),
    )
    assert attempts[0] == trained_run.killed_worker and len(attempts) == 2  # one restart of the group
    restarted_at = min(x["step"] for x in first if x["pid"] == attempts[1])
    assert restarted_at == last_step(out, 0) + 1  # from checkpoint 1, not from scratch


def test_a_killed_driver_resumes_past_an_interrupted_checkpoint(trained_run: FaultedRun) -> None:
    out, committed = trained_run.output, trained_run.committed
    resumed = [x for x in audit(out) if x["pid"] not in trained_run.first_driver]
    # right after the last committed checkpoint: not from the interrupted one, not from scratch
    assert min(x["step"] for x in resumed) == last_step(out, committed - 1) + 1
    assert min(x["epoch"] for x in resumed) == committed
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    mlflow = MlflowRun(out)
    assert len(mlflow.client.search_runs([mlflow.run.info.experiment_id])) == 1  # the same run throughout


def test_mlflow_holds_every_step_once_with_params_tags_and_artifacts(trained_run: FaultedRun) -> None:
    out = trained_run.output
    mlflow = MlflowRun(out)
    run_ = mlflow.run
    assert run_.info.status == "FINISHED"
    params = run_.data.params
    assert params["deepspeed.zero_stage"] == "3" and params["cluster.num_workers"] == "2"
    assert params["train.epochs"] == str(EPOCHS) and params["model.d_model"] == "64" and len(params) > 60
    tags = run_.data.tags
    assert tags["world_size"] == "2" and tags["zero_stage"] == "3" and tags["dataset"] == "synthetic-charades"
    assert len(tags["git_commit"]) >= 7 and len(tags["manifest_hash"]) == 64
    total = last_step(out)
    for key in ("train/loss", "train/L_CL", "train/L_1", "train/L_2", "train/L_3", "train/phi", "train/lr"):
        assert mlflow.steps(key) == list(range(1, total + 1)), key  # every step once, replays included
    for key in ("train/qps", "train/vps", "train/step_time_s", "train/data_wait_frac"):
        assert mlflow.steps(key) and all(v >= 0 for v in mlflow.values(key)), key
    assert min(mlflow.values("train/qps")) > 0
    for key in (*(f"val/{m}" for m in METRICS), "sys/peak_memory_mb_rank0", "sys/peak_memory_mb_rank1"):
        assert len(mlflow.steps(key)) == EPOCHS, key  # once per epoch
    assert all(v > 100 for v in mlflow.values("sys/peak_memory_mb_rank1"))  # MB of a process running torch
    manifest = read_manifest(trained_run.data[0])
    assert mlflow.values("data/queries_rank0")[0] + mlflow.values("data/queries_rank1")[0] == sum(
        manifest.column("n_queries").to_pylist()
    )
    assert mlflow.artifacts() >= {"checkpoint", "model", "plots", "run.json"}
    assert mlflow.artifacts("plots") == {"plots/training_curves.png", "plots/val_moments.png"}
    assert {"checkpoint/mktn_state.json", "checkpoint/ds", "checkpoint/job.json"} <= mlflow.artifacts(
        "checkpoint"
    )


def test_loss_decreases(trained_run: FaultedRun) -> None:
    loss = MlflowRun(trained_run.output).values("train/loss")
    quarter = len(loss) // 4
    assert sum(loss[-quarter:]) < 0.95 * sum(loss[:quarter]), loss


def test_no_video_is_split_across_workers_or_batches(trained_run: FaultedRun) -> None:
    manifest = read_manifest(trained_run.data[0])
    queries_of = dict(zip(manifest.column("video_id").to_pylist(), manifest.column("n_queries").to_pylist()))
    broken = dict(zip(manifest.column("key").to_pylist(), manifest.column("video_id").to_pylist()))[
        trained_run.broken
    ]
    lines = audit(trained_run.output)
    started: dict[int, int] = {}  # worker pid -> its first step: attempts in the order they ran
    for line in lines:
        started[line["pid"]] = min(started.get(line["pid"], line["step"]), line["step"])
    final: dict[tuple[int, int], dict] = {}  # (rank, step) -> the batch of the attempt that was kept
    for line in sorted(lines, key=lambda x: started[x["pid"]]):
        for video, queries in line["videos"].items():
            assert len(queries) == queries_of[video], (video, queries)  # all its pairs, in this one batch
        final[(line["rank"], line["step"])] = line
    for epoch in range(EPOCHS):
        seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for line in (x for x in final.values() if x["epoch"] == epoch and x["fresh"]):
            for video in line["videos"]:
                seen[video].append((line["rank"], line["step"]))
        assert set(seen) == set(queries_of) - {broken}, f"epoch {epoch}: videos never trained on"
        assert all(len(places) == 1 for places in seen.values()), "a video trained twice as fresh data"
    steps = defaultdict(set)
    for rank, step in final:
        steps[rank].add(step)
    assert steps[0] == steps[1]  # equal step counts on both workers


def resumed_epochs(trained_run: FaultedRun) -> set[str]:
    """The epochs (1-based) the resumed driver trained: their lines are in the log for sure (what the workers of
    a killed driver printed last may never have reached its output)."""
    return {str(e) for e in range(trained_run.committed + 1, EPOCHS + 1)}


def test_a_corrupt_sample_is_skipped_counted_and_logged(trained_run: FaultedRun) -> None:
    assert MlflowRun(trained_run.output).values("data/corrupt_samples") == [1.0] * EPOCHS  # once per epoch
    pattern = rf"rank \d, epoch (\d): skipped a corrupt sample: .*{re.escape(trained_run.broken)}"
    skipped = worker_lines(trained_run.log, pattern)
    assert {epoch for _, epoch in skipped} >= resumed_epochs(trained_run) | {"1"}
    assert len(skipped) == len(set(skipped)), skipped  # printed once by each worker process


def test_progress_lines_are_printed_once_per_worker_process(trained_run: FaultedRun) -> None:
    printed = worker_lines(trained_run.log, rf"epoch (\d)/{EPOCHS} \(step")
    assert {epoch for _, epoch in printed} >= resumed_epochs(trained_run) | {"1"}
    # once per process: Ray Train's print patch once doubled every line
    assert len(printed) == len(set(printed)), printed


def test_best_checkpoints_and_the_latest_are_kept(trained_run: FaultedRun) -> None:
    out = trained_run.output
    kept = sorted(checkpoints(out))
    assert f"checkpoint_epoch{EPOCHS:04d}" in kept and len(kept) <= 2  # keep_best=1, plus the latest
    state = json.loads(
        (out / "ray" / "train" / f"checkpoint_epoch{EPOCHS:04d}" / "mktn_state.json").read_text()
    )
    assert (state["epochs_done"], state["world_size"], state["zero_stage"]) == (EPOCHS, 2, 3)
    assert state["run_id"] == MlflowRun(out).run_id


def test_zero3_export_and_checkpoint_reproduce_validation_without_deepspeed_or_ray(
    trained_run: FaultedRun,
) -> None:
    out, val = trained_run.output, trained_run.data[1]
    script = f"""
import json, sys
sys.modules["deepspeed"] = sys.modules["ray"] = None  # importing either now fails
from cluster.job.config import JobConfig
from cluster.serve.evaluate import evaluate
from mktn import Predictor
from mktn.export import load_model
job = JobConfig.model_validate(json.load(open({str(out / "run.json")!r}))["config"])
print(json.dumps(evaluate(Predictor(load_model({str(out / "model")!r}), job.data), {val!r}).metrics))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    mlflow = MlflowRun(out)
    reported = {m: mlflow.values(f"val/{m}")[-1] for m in METRICS}
    assert {m.replace("_IoU", "@"): v for m, v in reported.items()} == pytest.approx(metrics, abs=1e-6)
    # `mktn eval` straight from the ZeRO-3 shards of the final checkpoint gives the same numbers
    final = out / "ray" / "train" / f"checkpoint_epoch{EPOCHS:04d}"
    assert main(["eval", str(final), "--data", val, "--json", str(out.parent / "eval.json")]) == 0
    from_shards = json.loads((out.parent / "eval.json").read_text())
    assert {k: from_shards[k] for k in metrics} == pytest.approx(metrics, abs=1e-6)
    assert "eval/synthetic-charades/val/mIoU" in mlflow.client.get_run(mlflow.run_id).data.metrics
