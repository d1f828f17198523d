"""The registered pyfunc model without a training run: logged from code (nothing pickled), loaded by alias,
per-row errors in its output table, the alias moving, and `mktn predict models:/...`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from cluster.cli import main
from cluster.serve.registry import register
from cluster.tracking.store import using_tracking_uri
from data_pipeline.text import Vocab
from mktn.config import ModelConfig
from mktn.export import save_model
from mktn.model import build_model
from tests.conftest import write_npy_features
from tests.test_predict import lighthouse_rows

DIM = 8


@pytest.fixture(scope="module")
def registered(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny untrained model over 12 real Charades-STA queries, exported and registered twice (alias moved)."""
    root = tmp_path_factory.mktemp("registry")
    rows = lighthouse_rows(shared_data / "charades_sta" / "lighthouse" / "charades_test_release.jsonl", 12)
    write_npy_features(root / "features", dict.fromkeys(r["video_id"] for r in rows), dim=DIM)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(d_model=16, num_heads=2), Vocab.build(r["sentence"] for r in rows), DIM, 1, 16
    )
    folder = str(root / "model")
    save_model(model.eval(), folder)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    first = register(folder, "mktn-test", "champion", tracking_uri=uri)
    second = register(folder, "mktn-test", "champion", tracking_uri=uri)
    return {"root": root, "rows": rows, "uri": uri, "first": first, "second": second, "model": model}


def test_the_alias_moves_to_each_new_version(registered: dict) -> None:
    client = MlflowClient(registered["uri"], registry_uri=registered["uri"])
    first, second = registered["first"], registered["second"]
    assert (first.version, second.version) == ("1", "2")
    assert str(client.get_model_version_by_alias("mktn-test", "champion").version) == "2"
    tags = client.get_model_version("mktn-test", "2").tags
    assert tags["feature_dim"] == str(DIM) and tags["tokens_per_clip"] == "1" and tags["max_clips"] == "16"
    assert tags["git_commit"] == "unknown"  # no training run recorded for a bare folder
    assert json.loads(tags["config"])["model"]["d_model"] == 16


def test_the_model_is_logged_from_code_with_nothing_pickled(registered: dict) -> None:
    with using_tracking_uri(registered["uri"]):
        local = Path(mlflow.artifacts.download_artifacts("models:/mktn-test@champion"))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin"))], files
    assert any(f.endswith(".safetensors") for f in files)
    flavor = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_entry.py") and "python_model" not in flavor


def test_loaded_by_alias_it_predicts_a_table_with_per_row_errors(registered: dict) -> None:
    with using_tracking_uri(registered["uri"]):
        model = mlflow.pyfunc.load_model("models:/mktn-test@champion")
    rows, feats = registered["rows"], registered["root"] / "features"
    table = pd.DataFrame(
        [{**r, "features": str(feats / f"{r['video_id']}.npy")} for r in rows[:3]]  # one video, three queries
        + [
            {**rows[4], "features": np.load(feats / f"{rows[4]['video_id']}.npy").tolist()},  # an array
            {**rows[5], "video_id": "ghost", "features": None},
            {**rows[6], "sentence": "", "features": str(feats / f"{rows[6]['video_id']}.npy")},
            {**rows[8], "features": [[1.0, 2.0]]},
            {**rows[10], "duration": -1.0},
            {**rows[3], "features": [[0.5] * DIM]},  # video of rows 0-2, other features
            {**rows[11], "features": "http://169.254.169.254/latest/features.npy"},  # never fetched
        ]
    )
    out = model.predict(table, params={"top_k": 2})
    assert list(out.columns) == ["video_id", "query_id", "moments", "start", "end", "score", "error"]
    assert out["error"][:4].isna().all()
    assert [len(m) for m in out["moments"][:4]] == [2, 2, 2, 2]
    assert (out["start"][:4] <= out["end"][:4]).all()
    assert "no row of video 'ghost' has 'features'" in out["error"][4]
    assert out["error"][5] == "'sentence' is empty"
    assert "feature dim 2, expected 8" in out["error"][6]
    assert out["error"][7] == "'duration' must be > 0 seconds, got -1.0"
    assert out["error"][8] == "'features' differ from those of an earlier row of video '3MSZA'"
    assert "must be a local .npy file; send other features as arrays" in out["error"][9]
    same = model.predict(table[:4], params={"top_k": 2})
    assert same["moments"].tolist() == out["moments"][:4].tolist()  # bad rows never change the good ones


def test_registering_without_a_registry_says_where_to_register(registered: dict, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="--tracking-uri or MLFLOW_TRACKING_URI"):
        register(str(registered["root"] / "model"), "mktn-test")


def test_predict_cli_loads_the_registered_model_by_alias(registered: dict, tmp_path: Path, capsys) -> None:
    before = os.environ.get("MLFLOW_TRACKING_URI")
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(r) + "\n" for r in registered["rows"][:5]))
    out = tmp_path / "preds.jsonl"
    code = main(
        [
            "predict",
            "models:/mktn-test@champion",
            "--tracking-uri",
            registered["uri"],
            "--features",
            str(registered["root"] / "features"),
            "--queries",
            str(queries),
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (
        os.environ.get("MLFLOW_TRACKING_URI") == before
    )  # --tracking-uri does not leak into later subprocesses
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query_id"] for r in records] == [r["query_id"] for r in registered["rows"][:5]]
    assert all(len(r["moments"]) == 5 for r in records)


@pytest.mark.slow
def test_train_register_flag_registers_the_run(tmp_path: Path) -> None:
    from tests.train_jobs import run, tiny_dataset, train_args

    data = tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = train_args(out, data, "cluster.num_workers=1", "train.epochs=1")
    run([*args, "--register", "mktn-train-flag"], tmp_path / "train.log", MLFLOW_TRACKING_URI="")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    version = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("mktn-train-flag", "champion")
    assert version.run_id == json.loads((out / "run.json").read_text())["run_id"]
    assert "registered mktn-train-flag version 1 (alias champion)" in (tmp_path / "train.log").read_text()


def test_the_config_tag_is_the_training_runs_config_on_every_version(
    registered: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow logs a pyfunc's model_config into the run it is logged in as params; a second version registered
    from the same training run must still carry exactly the job's config, not those extra params."""
    from cluster.job.config import load_config
    from cluster.serve import registry
    from cluster.serve.model_source import ModelSource
    from cluster.tracking.runs import open_run
    from data_pipeline.config import DataConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = load_config(None, ["data.train=/d/train", "data.val=/d/val"])
    run_id = open_run(
        MlflowClient(uri), "mktn", tags={}, params=job.flat(), output=str(tmp_path), patience_s=5
    )
    found = ModelSource(registered["model"], uri, run_id, DataConfig(max_words=7))
    monkeypatch.setattr(
        registry, "open_model", lambda source, tracking_uri=None: found
    )  # a run folder of that run, without training
    versions = [registry.register("folder", "mktn-run", "champion") for _ in range(2)]
    assert {"max_words", "max_queries_per_batch"} <= set(MlflowClient(uri).get_run(run_id).data.params)
    expected = {k: str(v) for k, v in job.flat().items()}
    assert [json.loads(v.tags["config"]) for v in versions] == [expected, expected]
