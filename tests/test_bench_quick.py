"""The benchmarks' --quick modes run end to end, so the scripts never rot, and write what they promise:
a JSON report (tables, targets), a PNG, and a finished MLflow run with its artifacts in the results
folder's SQLite store. The slower ones (two DeepSpeed processes per ZeRO stage, two Ray training runs)
are marked slow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from bench import mp_vs_sp, pipeline, run_all, scaling, zero
from bench.common import EXPERIMENT

PNG = b"\x89PNG\r\n\x1a\n"


def outputs(results: Path, name: str) -> dict[str, Any]:
    """The benchmark's JSON, after checking its PNG and its MLflow run."""
    body = json.loads((results / f"{name}.json").read_text())
    assert body["name"] == name and body["quick"] is True and body["seconds"] > 0
    assert body["tables"] and all(table["rows"] for table in body["tables"])
    assert body["machine"]["cores"] >= 1 and len(body["machine"]["load_avg_1_5_15"]) == 3
    assert (results / f"{name}.png").read_bytes()[:8] == PNG
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.bench = '{name}'")
    assert run.info.status == "FINISHED" and run.data.params["cores"] == str(body["machine"]["cores"])
    assert run.data.metrics["seconds"] > 0 and len(run.data.metrics) > len(body["targets"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {f"{name}.json", f"{name}.png"} <= artifacts
    return body


def test_run_all_quick_mfu_writes_summary(tmp_path: Path) -> None:
    assert run_all.main(["--quick", "--only", "mfu", "--results", str(tmp_path)]) == 0
    body = outputs(tmp_path, "mfu")
    rows = {row["what"]: row for row in body["tables"][0]["rows"]}
    assert set(rows) == {"peak", "model-shaped mm", "span", "proposal_map"}
    assert rows["peak"]["% of matmul peak (MFU)"] == pytest.approx(100.0)
    for backbone in ("span", "proposal_map"):
        assert rows[backbone]["GFLOP"] > 0 and 0 < rows[backbone]["% of matmul peak (MFU)"] < 100
    assert rows["proposal_map"]["GFLOP"] > rows["span"]["GFLOP"]  # the 2D map costs more than spans
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "make bench-quick" in summary and "**Targets**" in summary and "### bench.mfu (--quick)" in summary


def test_mp_vs_sp_quick(tmp_path: Path) -> None:
    assert mp_vs_sp.main(["--quick", "--results", str(tmp_path)]) == 0
    body = outputs(tmp_path, "mp_vs_sp")
    cells = body["data"]["cells"]
    assert {(c["backbone"], c["mix"]) for c in cells} == {
        (b, m) for b in mp_vs_sp.BACKBONES for m in mp_vs_sp.FULL
    }
    for cell in cells:
        assert cell["ideal"] >= 1.0 and set(cell["variants"]) == set(mp_vs_sp.VARIANTS)
        for values in cell["variants"].values():
            assert values["train_qps"] > 0 and values["infer_vps"] > 0 and values["train_peak_mib"] > 0
            assert values["E_ms_per_video"] > 0 and values["F_ms_per_query"] > 0
        trained = (cell["backbone"], cell["mix"]) in mp_vs_sp.ACCURACY_CELLS
        assert set(cell["accuracy"]) == (set(mp_vs_sp.TRAINED) if trained else set())
        assert all(0 <= acc["R1@0.5"] <= 100 and acc["steps"] >= 4 for acc in cell["accuracy"].values())
        for variant, prof in cell.get("profiles", {}).items():
            components = {row["component"] for row in prof["components"]}
            assert {"video_encoder", "fusion", "head", "optimizer"} <= components, variant
            assert "aten::" in Path(prof["op_table"]).read_text()
    assert {c["backbone"] for c in cells if "profiles" in c} == set(mp_vs_sp.BACKBONES)
    tacos = next(c for c in cells if c["mix"] == "tacos")
    assert tacos["k"] >= 30  # TACoS-like videos keep all their queries in one batch
    assert len(body["targets"]) == 5 * len(mp_vs_sp.FULL)


def test_pipeline_quick(tmp_path: Path) -> None:
    assert pipeline.main(["--quick", "--results", str(tmp_path)]) == 0
    body = outputs(tmp_path, "pipeline")
    rows = body["tables"][0]["rows"]
    assert [row["loader workers"] for row in rows] == list(pipeline.WORKERS)
    assert all(row["queries/s"] > 0 and row["first batch s"] > 0 for row in rows)
    reads = body["data"]["reads"]
    totals = {(r["videos"], r["queries"]) for runs in reads.values() for r in runs}
    assert len(totals) == 1 and next(iter(totals))[0] == 24  # every worker count read every video, once
    assert body["data"]["consumed_qps"] > 0


@pytest.mark.slow
def test_zero_quick(tmp_path: Path) -> None:
    assert zero.main(["--quick", "--results", str(tmp_path)]) == 0
    body = outputs(tmp_path, "zero")
    rows = {(row["model"], row["ZeRO"]): row for row in body["tables"][0]["rows"]}
    assert set(rows) == {(m, s) for m in zero.QUICK_MODELS for s in zero.STAGES}
    for row in rows.values():
        assert row["checkpoint MiB"] > 0 and row["save s"] > 0 and row["peak RSS MiB/worker"] > 100
    wide = {s: rows[("wide", s)]["param+opt MiB/worker"] for s in zero.STAGES}
    assert wide[3] < wide[2] < wide[0]  # ZeRO-2 shards the optimizer state, ZeRO-3 the parameters too


@pytest.mark.slow
def test_scaling_quick(tmp_path: Path) -> None:
    assert scaling.main(["--quick", "--results", str(tmp_path)]) == 0
    body = outputs(tmp_path, "scaling")
    rows = body["tables"][0]["rows"]
    assert [row["workers"] for row in rows] == [1, 2] and all(row["train QPS"] > 0 for row in rows)
    predicted = body["tables"][1]["rows"]
    assert predicted[0]["predicted QPS"] == pytest.approx(rows[0]["train QPS"], rel=1e-6)
