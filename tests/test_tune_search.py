"""A real tiny search: `mktn tune` runs a trial (a 1-worker Ray Train + DeepSpeed job) under ASHA, tracks it as
an MLflow child of the search's parent run, registers the best with the alias `champion`; the registered model,
loaded by alias in a fresh process, reproduces its run's validation metrics exactly, and `mlflow models serve`
answers a request. Registering a checkpoint under a second alias and the interrupted-and-resumed search (3
trials, 2 at a time) are slow-marked."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from cluster.job.network import free_port
from cluster.tracking.runs import mlflow_key
from mktn.metrics import METRIC_KEYS
from tests.train_jobs import CONFIG, REPO, job_env, run, start, tiny_dataset, wait_for

NAME = "mktn-synthetic"
JOB = [
    "train.epochs=2",
    "cluster.num_workers=1",
    "model.d_model=32",
    "data.max_videos_per_batch=4",
    "train.log_every_steps=2",
]
SEARCH = """metric: R1@0.5
num_samples: 2
asha: {grace_period: 1, reduction_factor: 2}
space:
  train.lr: {loguniform: [1.0e-3, 5.0e-3]}
  deepspeed.zero_stage: {choice: [1, 2]}
"""
REPRODUCE = """
import json, sys
import mlflow, numpy as np, pandas as pd, torch
from cluster.train.assign import assign_shards, read_dataset_shards
from data_pipeline.config import DataConfig
from data_pipeline.loader import CorruptLog, iter_video_groups
from mktn.metrics import grounding_metrics

torch.set_num_threads(1)  # as the training worker that validated: sums in the same order, to the last bit
model = mlflow.pyfunc.load_model(sys.argv[1])
shards = assign_shards(read_dataset_shards(sys.argv[2]).shards, 1, seed=0, epoch=0).per_rank[0]
groups = list(iter_video_groups([s.url for s in shards], DataConfig(), CorruptLog(0)))  # validation's order
rows = [{"video_id": g.video_id, "sentence": q.sentence, "duration": g.duration, "query_id": q.query_id,
         "features": g.features} for g in groups for q in g.queries]
out = model.predict(pd.DataFrame(rows), params={"top_k": 5})
assert out["error"].isna().all(), out["error"].dropna().tolist()
truth = [(float(np.float32(q.start)), float(np.float32(q.end))) for g in groups for q in g.queries]  # as validation
print(json.dumps(grounding_metrics([[(m["start"], m["end"]) for m in ms] for ms in out["moments"]], truth)))
"""


def tune_args(
    output: Path, data: tuple[str, str], search: Path, *flags: str, overrides: tuple[str, ...] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cluster.cli",
        "tune",
        str(CONFIG),
        f"data.train={data[0]}",
        f"data.val={data[1]}",
        *JOB,
        *overrides,
        "--search",
        str(search),
        "--output",
        str(output),
        *flags,
    ]


@pytest.fixture(scope="module")
def search(tiny_data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tune")
    data = tiny_data
    (root / "search.yaml").write_text(SEARCH)
    output = root / "search"
    run(
        tune_args(output, data, root / "search.yaml", "--num-samples", "1", "--register", NAME),
        root / "tune.log",
        timeout=900,
        MLFLOW_TRACKING_URI="",
    )  # the embedded store under --output
    uri = f"sqlite:///{output / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    parent = client.search_runs(
        client.get_experiment_by_name("mktn").experiment_id, "tags.`mktn.search` != ''"
    )
    assert len(parent) == 1
    return {
        "root": root,
        "data": data,
        "output": output,
        "uri": uri,
        "client": client,
        "parent": parent[0],
        "log": (root / "tune.log").read_text(),
    }


def children(search: dict) -> list:
    client, parent = search["client"], search["parent"]
    return client.search_runs(parent.info.experiment_id, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def test_every_trial_is_a_child_run_with_its_params_and_curves(search: dict) -> None:
    runs = children(search)
    assert len(runs) == 1
    table = pq.read_table(search["output"] / "results.parquet").to_pylist()
    assert {r["run_id"] for r in table} == {r.info.run_id for r in runs}
    for row in table:
        child = next(r for r in runs if r.info.run_id == row["run_id"])
        assert float(child.data.params["train.lr"]) == pytest.approx(row["train.lr"])
        assert child.data.params["deepspeed.zero_stage"] == str(row["deepspeed.zero_stage"])
        assert child.data.params["cluster.num_workers"] == "1"
        client = search["client"]
        epoch_at_step = {m.step: int(m.value) for m in client.get_metric_history(row["run_id"], "epoch")}
        r1_history = client.get_metric_history(row["run_id"], "val/R1_IoU0.5")
        r1_by_epoch = {epoch_at_step[m.step]: m.value for m in r1_history}
        # the row holds the last validation Tune received
        assert r1_by_epoch[row["epochs"]] == pytest.approx(row["R1@0.5"])
        if row["status"] == "finished":
            assert child.info.status == "FINISHED" and row["epochs"] == 2 and sorted(r1_by_epoch) == [1, 2]
        else:  # ASHA stopped it after the first rung; the worker may have validated epoch 2 before the stop reached it
            assert row["status"] == "stopped" and row["epochs"] == 1 and sorted(r1_by_epoch) in ([1], [1, 2])
            assert child.info.status == "KILLED" and child.data.tags["tune.stopped_early"] == "true"
    artifacts = {a.path for a in search["client"].list_artifacts(search["parent"].info.run_id)}
    assert {"results.csv", "results.parquet", "search.png"} <= artifacts
    assert search["parent"].data.params["search.space.train.lr"] == "loguniform[0.001, 0.005]"


def test_the_best_trial_is_registered_with_its_alias_and_tags(search: dict) -> None:
    client, parent = search["client"], search["parent"]
    best_run = client.get_run(parent.data.tags["best_run_id"])
    version = client.get_model_version_by_alias(NAME, "champion")
    assert version.run_id == best_run.info.run_id
    tags = version.tags
    assert tags["git_commit"] == best_run.data.tags["git_commit"] != "unknown"
    assert tags["manifest_hash"] == best_run.data.tags["manifest_hash"] and len(tags["manifest_hash"]) == 64
    assert tags["dataset"] == best_run.data.tags["dataset"]
    assert json.loads(tags["config"])["train.lr"] == best_run.data.params["train.lr"]
    for key in METRIC_KEYS:
        assert float(tags[f"val/{mlflow_key(key)}"]) == best_run.data.metrics[f"val/{mlflow_key(key)}"]
    assert parent.data.metrics["best/R1_IoU0.5"] == best_run.data.metrics["val/R1_IoU0.5"]
    assert f"registered {NAME} version {version.version} (alias champion)" in search["log"]


@pytest.mark.slow
def test_a_checkpoint_registers_as_a_new_version_under_another_alias(search: dict) -> None:
    client, parent = search["client"], search["parent"]
    trial = search["output"] / "trials" / parent.data.tags["best_trial_id"]
    final = sorted((trial / "ray" / "train").glob("checkpoint_epoch*"))[-1]
    run(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "register",
            str(final),
            "--name",
            NAME,
            "--alias",
            "challenger",
        ],
        search["root"] / "register.log",
    )
    champion, challenger = (client.get_model_version_by_alias(NAME, a) for a in ("champion", "challenger"))
    assert int(challenger.version) == int(champion.version) + 1
    assert challenger.run_id == champion.run_id == parent.data.tags["best_run_id"]
    state = json.loads((final / "mktn_state.json").read_text())
    for key in METRIC_KEYS:  # the checkpoint's own validation
        assert float(challenger.tags[f"val/{mlflow_key(key)}"]) == state["metrics"][key]
    assert challenger.tags["source"] == str(final)


def test_the_registered_model_reproduces_its_eval_metrics_in_a_fresh_process(search: dict) -> None:
    env = job_env(MLFLOW_TRACKING_URI=search["uri"])
    out = subprocess.run(
        [sys.executable, "-c", REPRODUCE, f"models:/{NAME}@champion", search["data"][1]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    run = search["client"].get_run(search["parent"].data.tags["best_run_id"])
    expected = {key: run.data.metrics[f"val/{mlflow_key(key)}"] for key in METRIC_KEYS}
    assert metrics == expected  # exactly: same weights, batches, decoding, float32 truth and query order


def test_mlflow_models_serve_answers_a_request(search: dict) -> None:
    from data_pipeline.config import DataConfig
    from data_pipeline.loader import CorruptLog, iter_video_groups
    from data_pipeline.shards import shard_urls

    group = next(iter_video_groups(shard_urls(search["data"][1]), DataConfig(), CorruptLog(0)))
    rows = [[group.video_id, q.sentence, group.duration, group.features.tolist()] for q in group.queries]
    rows.append([group.video_id, "   ", group.duration, None])
    body = {
        "dataframe_split": {"columns": ["video_id", "sentence", "duration", "features"], "data": rows},
        "params": {"top_k": 3},
    }
    port = free_port()
    log = search["root"] / "serve.log"
    server = start(
        [
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{NAME}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        log,
        MLFLOW_TRACKING_URI=search["uri"],
    )
    try:
        wait_for(
            lambda: _get(f"http://127.0.0.1:{port}/ping"), "the scoring server", timeout=180, process=server
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.load(io.TextIOWrapper(response))["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert len(predictions) == len(rows)
    for answer in predictions[:-1]:
        assert answer["error"] is None and len(answer["moments"]) == 3
        assert 0 <= answer["start"] <= answer["end"] <= group.duration + 1e-4
    assert predictions[-1]["error"] == "'sentence' is empty" and predictions[-1]["moments"] is None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_an_interrupted_search_resumes_with_tuner_restore(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    (tmp_path / "search.yaml").write_text(SEARCH.replace("num_samples: 2", "num_samples: 3"))
    output, log = tmp_path / "search", tmp_path / "tune.log"
    job = start(
        tune_args(output, data, tmp_path / "search.yaml", overrides=("train.epochs=3",)),
        log,
        MLFLOW_TRACKING_URI="",
    )
    ray_state = output / "ray" / "search"
    wait_for(
        lambda: any((output / "trials").glob("*/ray/train/checkpoint_epoch0001")),
        "a trial checkpoint",
        timeout=600,
        process=job,
    )
    os.killpg(job.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-search
    job.wait(timeout=60)
    wait_for(lambda: not _group_alive(job.pid), "the search's processes to exit", timeout=120)
    before = json.loads((output / "search.json").read_text())
    assert before["status"] == "running" and ray_state.is_dir()
    run(
        [sys.executable, "-m", "cluster.cli", "tune", "--output", str(output), "--resume"],
        log,
        timeout=900,
        MLFLOW_TRACKING_URI="",
    )
    after = json.loads((output / "search.json").read_text())
    assert after["status"] == "finished" and after["parent_run_id"] == before["parent_run_id"]
    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    runs = client.search_runs(
        client.get_experiment_by_name("mktn").experiment_id,
        f"tags.mlflow.parentRunId = '{before['parent_run_id']}'",
    )
    assert len(runs) == 3  # a resumed trial continues its own MLflow run: no duplicates
    assert len(pq.read_table(output / "results.parquet")) == 3
    for child in runs:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/R1_IoU0.5")]
        assert len(steps) == len(set(steps))  # each validation logged once, also across the restart
