"""The MLflow side of training without Ray: the metric sink's spool (buffer, dedupe, restart) against a real
SQLite store, an unreachable server, and `retrying`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.tracking.metric_sink import MetricSink, read_spool
from cluster.tracking.retry import TrackingUnavailable, retrying
from cluster.tracking.store import default_tracking_uri

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connections are refused at once


@pytest.fixture
def store(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(default_tracking_uri(str(tmp_path)))
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return client, client.create_run(experiment).info.run_id


def _records(steps: range, value: float = 1.0) -> list[dict]:
    return [
        {"step": s, "ts": 1000 + s, "values": {"train/loss": value * s, "val/R1@0.5": 50.0}} for s in steps
    ]


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_each_step_reaches_mlflow_once(store, tmp_path: Path) -> None:
    client, run_id = store
    sink = MetricSink(client.tracking_uri, run_id, str(tmp_path / "spool"))
    sink.log(_records(range(1, 6)))
    sink.log(_records(range(4, 9), value=100.0))  # a replay after a restart from step 3: 4, 5 already queued
    assert sink.drain(timeout_s=30) == 0
    assert _steps(client, run_id, "train/loss") == list(range(1, 9))
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert history[5] == 5.0 and history[6] == 600.0  # first value of a step wins
    assert _steps(client, run_id, "val/R1_IoU0.5") == list(range(1, 9))  # '@' is not allowed by MLflow


def test_unreachable_server_keeps_records_for_the_next_sink(store, tmp_path: Path, monkeypatch) -> None:
    client, run_id = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    spool = str(tmp_path / "spool")
    down = MetricSink(UNREACHABLE, run_id, spool)
    down.log(_records(range(1, 11)))
    assert down.drain(timeout_s=2) == 10  # nothing lost, nothing shipped
    assert len(read_spool(Path(spool) / "metrics.jsonl")) == 10
    up = MetricSink(client.tracking_uri, run_id, spool)  # e.g. the sink of `mktn train --resume`
    up.log(_records(range(5, 13)))  # the replay of steps 5-10 is dropped, 11-12 are new
    assert up.drain(timeout_s=30) == 0
    assert _steps(client, run_id, "train/loss") == list(range(1, 13))
    assert json.loads((Path(spool) / "shipped.json").read_text()) == {"lines": 12}


def test_torn_last_spool_line_is_cut(tmp_path: Path) -> None:
    spool = tmp_path / "metrics.jsonl"
    spool.write_text(json.dumps(_records(range(1, 2))[0]) + "\n" + '{"step": 2, "ts"')
    assert [r["step"] for r in read_spool(spool)] == [1]
    assert spool.read_text().endswith("}\n")


def test_retrying_waits_out_failures_then_gives_up() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert retrying(flaky, what="testing", patience_s=10) == "ok" and len(calls) == 3
    with pytest.raises(TrackingUnavailable, match="MLflow unreachable for 2s while testing: down"):
        retrying(lambda: (_ for _ in ()).throw(ConnectionError("down")), what="testing", patience_s=2)
