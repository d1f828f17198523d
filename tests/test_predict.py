"""Prediction on real Charades-STA / TACoS queries: multi-pair batching, per-row errors, size limits, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from cluster.cli import main
from cluster.serve.predictor import Predictor
from cluster.serve.queries import Limits, Query, RowError, read_queries
from data_pipeline.config import DataConfig
from data_pipeline.features import open_features
from data_pipeline.text import Vocab
from mktn.config import ModelConfig
from mktn.export import save_model
from mktn.model import build_model
from tests.conftest import write_npy_features

DIM = 8


def lighthouse_rows(path: Path, limit: int) -> list[dict]:
    """The first `limit` queries of a Lighthouse/Moment-DETR JSONL file, in `mktn predict`'s query format."""
    rows = []
    with path.open() as f:
        for line in f:
            obj = json.loads(line)
            start, end = obj["relevant_windows"][0]
            rows.append(
                {
                    "video_id": obj["vid"],
                    "sentence": obj["query"],
                    "duration": obj["duration"],
                    "query_id": str(obj["qid"]),
                    "start": start,
                    "end": min(end, obj["duration"]),
                }
            )
            if len(rows) == limit:
                break
    return rows


@pytest.fixture(scope="module")
def charades(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """40 real Charades-STA test queries, random `.npy` features for their videos, a tiny model over their words."""
    root = tmp_path_factory.mktemp("charades")
    rows = lighthouse_rows(shared_data / "charades_sta" / "lighthouse" / "charades_test_release.jsonl", 40)
    videos = list(dict.fromkeys(r["video_id"] for r in rows))
    write_npy_features(root / "features", videos, dim=DIM, tokens=3)
    torch.manual_seed(0)
    vocab = Vocab.build(r["sentence"] for r in rows)
    model = build_model(ModelConfig(d_model=16, num_heads=2), vocab, DIM, 3, max_clips=16).eval()
    return {"root": root, "rows": rows, "videos": videos, "model": model}


def queries_of(rows: list[dict]) -> list[Query]:
    return [
        Query(i + 1, r["video_id"], r["sentence"], r["duration"], r["query_id"], (r["start"], r["end"]))
        for i, r in enumerate(rows)
    ]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_each_video_is_encoded_once_and_batches_keep_the_budget(charades: dict) -> None:
    model, rows = charades["model"], charades["rows"]
    store = open_features(str(charades["root"] / "features"))
    encoded: list[int] = []
    hook = model.video_encoder.register_forward_hook(lambda _m, args, _out: encoded.append(args[0].shape[0]))
    try:
        result = Predictor(
            model, DataConfig(max_queries_per_batch=12, max_videos_per_batch=4)
        ).predict_queries(queries_of(rows), store.load, 3)
    finally:
        hook.remove()
    assert result.errors == []
    assert sum(encoded) == len(charades["videos"])  # one encoding per video, however many queries it has
    assert result.stats.queries == len(rows) and result.stats.videos == len(charades["videos"])
    assert result.stats.batches == len(encoded) >= math.ceil(len(rows) / 12)
    assert result.stats.qps > 0 and result.stats.vps > 0
    for query in queries_of(rows):
        moments = result.moments[query.row]
        assert 1 <= len(moments) <= 3
        assert all(0 <= s <= e <= query.duration + 1e-4 for s, e, _ in moments)  # float32 seconds
        assert [p for _, _, p in moments] == sorted((p for _, _, p in moments), reverse=True)


def test_bad_rows_are_reported_by_line_and_good_rows_keep_their_results(
    charades: dict, tmp_path: Path
) -> None:
    rows = charades["rows"][:10]
    good = [json.dumps(r) for r in rows]
    bad = {
        "{not json": "not valid JSON",
        "[1, 2]": "expected a JSON object, got list",
        json.dumps(
            {**rows[0], "query_id": "u", "video_id": "NO_SUCH_VIDEO"}
        ): "no features for video 'NO_SUCH_VIDEO'",
        json.dumps({**rows[0], "query_id": "e", "sentence": "   "}): "'sentence' is empty",
        json.dumps({**rows[0], "query_id": "p", "sentence": "?!"}): "has no words",
        json.dumps({k: v for k, v in rows[0].items() if k != "duration"}): "missing 'duration'",
        json.dumps({**rows[0], "query_id": "d", "duration": "long"}): "'duration' must be a finite number",
        json.dumps({**rows[0], "query_id": "t", "start": 9.0, "end": 3.0}): "0 <= start < end <= duration",
        json.dumps(
            rows[0]
        ): f"query id '{rows[0]['query_id']}' of video '{rows[0]['video_id']}' repeats row 1",
    }
    lines = good[:5] + list(bad) + [""] + good[5:]
    path = write_jsonl(tmp_path / "queries.jsonl", lines)
    queries, errors = read_queries(str(path))
    store = open_features(str(charades["root"] / "features"))
    result = Predictor(charades["model"]).predict_queries(queries, store.load, 5, errors)

    by_line = {e.row: e.message for e in result.errors}
    for line_no, (line, expected) in enumerate(bad.items(), start=6):
        assert expected in by_line[line_no], (line, by_line.get(line_no))
    assert len(result.errors) == len(bad)
    assert sorted(result.moments) == [1, 2, 3, 4, 5, 16, 17, 18, 19, 20]  # line 15 is blank
    alone = Predictor(charades["model"]).predict_queries(queries_of(rows), store.load, 5)
    assert [result.moments[r] for r in (1, 2, 3, 4, 5, 16, 17, 18, 19, 20)] == list(alone.moments.values())


def test_features_that_do_not_fit_the_model_fail_only_their_video(charades: dict, tmp_path: Path) -> None:
    rows = charades["rows"][:6]
    videos = list(dict.fromkeys(r["video_id"] for r in rows))
    feats = {v: np.load(charades["root"] / "features" / f"{v}.npy") for v in videos}
    broken = {
        "wrong_dim": (np.zeros((10, 3, DIM + 1), np.float32), f"feature dim {DIM + 1}, expected {DIM}"),
        "wrong_tokens": (
            np.zeros((10, 5, DIM), np.float32),
            "have 5 tokens per clip; the model was trained on 3",
        ),
        "nan": (np.full((10, 3, DIM), np.nan, np.float32), "NaN/inf"),
        "too_long": (
            np.zeros((500, 3, DIM), np.float32),
            "500 clips, over the limit max_clips_per_video=400",
        ),
        "ints": (np.zeros((10, 3, DIM), np.int64), "dtype int64, expected a float array"),
    }
    feats |= {name: array for name, (array, _) in broken.items()}
    extra = [{**rows[0], "video_id": name, "query_id": name} for name in broken]
    result = Predictor(charades["model"], limits=Limits(max_clips_per_video=400)).predict_queries(
        queries_of(rows + extra), feats.__getitem__, 2
    )
    messages = {e.row: e.message for e in result.errors}
    for offset, (_, expected) in enumerate(broken.values()):
        assert expected in messages[len(rows) + 1 + offset]
    assert sorted(result.moments) == list(range(1, len(rows) + 1))


def test_a_video_over_the_query_limit_is_refused_naming_it(shared_data: Path) -> None:
    rows = lighthouse_rows(shared_data / "tacos" / "lighthouse" / "tacos_val_release.jsonl", 400)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["video_id"]] = counts.get(r["video_id"], 0) + 1
    big = max(counts, key=counts.get)
    assert counts[big] > 30, "TACoS videos have many queries"
    vocab = Vocab.build(r["sentence"] for r in rows)
    model = build_model(ModelConfig(d_model=16, num_heads=2), vocab, DIM, 1, max_clips=16)
    feats = {v: np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32) for v in counts}
    result = Predictor(model, limits=Limits(max_queries_per_video=30)).predict_queries(
        queries_of(rows), feats.__getitem__
    )
    refused = {e.row for e in result.errors}
    assert all(
        f"video {big!r} has {counts[big]} queries, over the limit max_queries_per_video=30" in e.message
        for e in result.errors
        if e.message.startswith(f"video {big!r}")
    )
    assert {q.row for q in queries_of(rows) if q.video_id == big} <= refused
    assert {q.row for q in queries_of(rows) if counts[q.video_id] <= 30} == set(result.moments)


def test_oversized_and_undecodable_lines_are_row_errors(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    ok = json.dumps({"video_id": "v", "sentence": "person opens the door", "duration": 5})
    path.write_bytes(
        b"\n".join([ok.encode(), b'{"sentence": "' + b"a" * 5000 + b'"}', b"\xff\xfe bad", ok.encode()])
    )
    queries, errors = read_queries(str(path), Limits(max_line_bytes=1000))
    assert [q.row for q in queries] == [1, 4]
    assert errors[0] == RowError(2, "line is longer than the limit max_line_bytes=1000")
    assert errors[1].row == 3 and "utf-8" in errors[1].message
    with fsspec.open("memory://predict/q.jsonl", "wb") as f:  # lines across read chunks, from any fsspec URL
        f.write(
            b"\n".join(
                [
                    ok.encode(),
                    json.dumps({"video_id": "v" * 200_000, "sentence": "a b", "duration": 1}).encode(),
                    b"\xff" * 300_000,
                    ok.encode(),
                ]
            )
        )
    queries, errors = read_queries("memory://predict/q.jsonl", Limits(max_line_bytes=1 << 18))
    assert [q.row for q in queries] == [1, 2, 4] and len(queries[1].video_id) == 200_000
    assert errors == [RowError(3, "line is longer than the limit max_line_bytes=262144")]
    long_sentence = json.dumps({"video_id": "v", "sentence": "word " * 1000, "duration": 5})
    _, errors = read_queries(str(write_jsonl(tmp_path / "s.jsonl", [long_sentence])))
    assert "over the limit max_sentence_chars=2000" in errors[0].message


def test_cli_writes_predictions_errors_metrics_and_figures(charades: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "model"
    save_model(charades["model"], str(folder))
    rows = charades["rows"][:8]
    lines = [json.dumps(r) for r in rows[:4]] + ['{"video_id": "x"}'] + [json.dumps(r) for r in rows[4:]]
    queries = write_jsonl(tmp_path / "queries.jsonl", lines)
    out, figures = tmp_path / "preds.jsonl", tmp_path / "figures"
    code = main(
        [
            "predict",
            str(folder),
            "--features",
            str(charades["root"] / "features"),
            "--queries",
            str(queries),
            "--top-k",
            "3",
            "--out",
            str(out),
            "--visualize",
            str(figures),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1  # one line failed; the others were predicted
    assert f"{queries}:5: missing 'sentence'" in err
    assert "8 of 9 rows predicted, 1 refused" in err and "queries/s" in err and "videos/s" in err
    assert "R1@0.5" in err  # every predicted row carried its true moment
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in records] == list(range(1, 10))
    assert records[4] == {"row": 5, "error": "missing 'sentence'"}
    assert all(len(r["moments"]) == 3 for r in records if "moments" in r)
    assert records[0]["query_id"] == rows[0]["query_id"] and records[0]["truth"] == [
        rows[0]["start"],
        rows[0]["end"],
    ]
    pngs = sorted(p.name for p in figures.iterdir())
    assert pngs == sorted(f"{v}.png" for v in dict.fromkeys(r["video_id"] for r in rows))
    assert all((figures / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_cli_refuses_bad_arguments_with_a_clear_error(charades: dict, tmp_path: Path, capsys) -> None:
    queries = write_jsonl(tmp_path / "q.jsonl", [json.dumps(charades["rows"][0])])
    code = main(
        [
            "predict",
            str(tmp_path / "missing-model"),
            "--features",
            str(charades["root"] / "features"),
            "--queries",
            str(queries),
        ]
    )
    assert code == 2 and "mktn predict: error:" in capsys.readouterr().err
    code = main(
        [
            "predict",
            str(tmp_path),
            "--features",
            str(charades["root"] / "features"),
            "--queries",
            str(queries),
            "--top-k",
            "0",
        ]
    )
    assert code == 2 and "--top-k must be >= 1" in capsys.readouterr().err
