"""`mktn eval` on every kind of model source, against a real SQLite MLflow store: the table, the JSON, the
metrics logged next to the training run (or in a new eval run), and the errors for bad sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from cluster.cli import main
from cluster.job.config import load_config
from cluster.job.run_folder import RunFolder
from cluster.tracking.store import default_tracking_uri
from data_pipeline.prepare import prepare_synthetic
from data_pipeline.synthetic import generate
from data_pipeline.text import Vocab
from mktn.export import save_model
from mktn.fit import evaluate as reference_evaluate
from mktn.model import build_model

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
KEYS = {"R1@0.3", "R1@0.5", "R1@0.7", "R5@0.3", "R5@0.5", "R5@0.7", "mIoU"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A prepared dataset (12 validation videos), an (untrained) exported model, and a run folder holding it."""
    root = tmp_path_factory.mktemp("eval")
    prepare_synthetic(str(root / "data"), videos=12, val_videos=12, shard_size_mb=0.2, progress=False)
    job = load_config(str(CONFIG))
    torch.manual_seed(0)
    vocab = Vocab.load(str(root / "data" / "train" / "vocab.json"))
    model = build_model(job.model, vocab, 64, 5, job.data.max_clips)
    save_model(model, str(root / "model"))
    uri = default_tracking_uri(str(root / "run"))
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("mktn")).info.run_id
    save_model(model, str(root / "run" / "model"))
    RunFolder(root / "run", job, uri, run_id, status="finished").write()
    return {"root": root, "model": model, "uri": uri, "run_id": run_id, "val": str(root / "data" / "val")}


def test_eval_of_a_run_folder_prints_writes_and_logs(setup: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "metrics.json"
    assert main(["eval", str(setup["root"] / "run"), "--data", setup["val"], "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "R@1" in printed and "mIoU" in printed and "queries/s" in printed
    metrics = json.loads(out.read_text())
    assert KEYS <= set(metrics) and metrics["inference_qps"] > 0 and metrics["inference_vps"] > 0
    assert metrics["videos"] == 12
    expected = reference_evaluate(setup["model"], generate(12, seed=1, split="val"))  # same videos, in memory
    assert {k: metrics[k] for k in KEYS} == pytest.approx(expected, abs=1e-6)
    logged = MlflowClient(setup["uri"]).get_run(setup["run_id"]).data.metrics
    assert logged["eval/synthetic-charades/val/R1_IoU0.5"] == pytest.approx(metrics["R1@0.5"])
    assert logged["eval/synthetic-charades/val/inference_qps"] > 0


def test_eval_of_a_model_folder_and_of_a_runs_uri(setup: dict, tmp_path: Path, monkeypatch) -> None:
    uri = default_tracking_uri(str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    folder_json, uri_json = tmp_path / "a.json", tmp_path / "b.json"
    assert (
        main(["eval", str(setup["root"] / "model"), "--data", setup["val"], "--json", str(folder_json)]) == 0
    )
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mktn-eval")
    (eval_run,) = client.search_runs([experiment.experiment_id])
    assert eval_run.data.tags["model"] == str(setup["root"] / "model") and eval_run.info.status == "FINISHED"
    training = client.create_run(client.create_experiment("t", artifact_location=(tmp_path / "a").as_uri()))
    client.log_artifacts(training.info.run_id, str(setup["root"] / "model"), "model")
    assert (
        main(["eval", f"runs:/{training.info.run_id}/model", "--data", setup["val"], "--json", str(uri_json)])
        == 0
    )
    assert json.loads(folder_json.read_text())["R5@0.5"] == json.loads(uri_json.read_text())["R5@0.5"]
    assert "eval/synthetic-charades/val/mIoU" in client.get_run(training.info.run_id).data.metrics


def test_eval_errors_name_the_problem(setup: dict, tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path / "nowhere"), "--data", setup["val"]]) == 2
    assert "expected a run folder (with run.json), a training checkpoint" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    RunFolder(unfinished, load_config(str(CONFIG)), setup["uri"], setup["run_id"]).write()
    assert main(["eval", str(unfinished), "--data", setup["val"]]) == 2
    assert "the run has no exported model yet" in capsys.readouterr().err
    other = tmp_path / "other"
    prepare_synthetic(str(other), videos=4, val_videos=0, feature_dim=32, shard_size_mb=1, progress=False)
    assert main(["eval", str(setup["root"] / "model"), "--data", str(other / "train")]) == 2
    assert "features are 5 tokens/clip of dim 32; the model was trained on 5 tokens/clip of dim 64" in (
        capsys.readouterr().err
    )
