"""Validation before writing: every bad annotation or feature gives a named error, or is skipped and counted."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_pipeline.build import BuildOptions, build_video_groups
from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.features import NpyDirectory, check_features, open_features
from data_pipeline.readers import read_annotations, read_charades_durations
from tests.conftest import write_npy_features

ROW = {"video_id": "v1", "duration": 30.0, "start": 1.0, "end": 5.0, "sentence": "a person opens a door"}


def _build(tmp_path: Path, rows: list[dict], on_error: str = "raise", **options) -> tuple[list, ErrorLog]:
    ann = tmp_path / "ann.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    feats = tmp_path / "feats"
    if not feats.exists():
        write_npy_features(feats, {r["video_id"] for r in rows})
    log = ErrorLog(on_error)  # type: ignore[arg-type]
    records = read_annotations("generic", str(ann), log)
    groups = list(
        build_video_groups(records, NpyDirectory(str(feats)), BuildOptions("generic", **options), log)
    )
    return groups, log


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"start": 5.0, "end": 5.0}, r"ann\.jsonl:2: start 5.0 >= end 5.0"),
        ({"start": 7.0, "end": 5.0}, r"ann\.jsonl:2: start 7.0 >= end 5.0"),
        ({"start": -1.0}, r"ann\.jsonl:2: negative start -1.0"),
        ({"end": 32.5}, r"ann\.jsonl:2: end 32.5 is past the video duration 30.0 by more than 2.0 s"),
        ({"start": 30.0, "end": 31.0}, r"ann\.jsonl:2: start 30.0 is not before the video duration"),
        ({"sentence": "   "}, r"ann\.jsonl:2: empty sentence"),
        ({"duration": 40.0}, r"ann\.jsonl:2: duration 40.0 disagrees with 30.0 at .*ann\.jsonl:1"),
        (
            {"duration": -3.0},
            r"ann\.jsonl:1: duration -3.0 seconds is outside the accepted range \[0.001, 1e\+06\]",
        ),
        ({}, r"ann\.jsonl:2: duplicate of .*ann\.jsonl:1 \(same video, times and sentence\)"),
    ],
)
def test_bad_queries_are_named(tmp_path: Path, change: dict, message: str) -> None:
    rows = [ROW, {**ROW, **change}]
    if "duration" in change:
        rows = [ROW, {**ROW, **change, "start": 9.0}]
    if change.get("duration", 0) < 0:
        rows = [{**ROW, **change}]
    with pytest.raises(DataError, match=message):
        _build(tmp_path, rows)


def test_skip_counts_and_reports_every_item(tmp_path: Path) -> None:
    rows = [
        ROW,
        {**ROW, "start": 6.0, "end": 2.0},
        {**ROW, "sentence": ""},
        {**ROW, "start": 9.0, "end": 31.0},
    ]
    groups, log = _build(tmp_path, rows, on_error="skip")
    (group,) = groups
    assert [(q.start, q.end, q.index) for q in group.queries] == [(1.0, 5.0, 0), (9.0, 30.0, 1)]
    assert log.skipped_queries == 2 and len(log.skipped) == 2 and log.clamped_ends == 1
    assert "ann.jsonl:2" in log.skipped[0] and "ann.jsonl:3" in log.skipped[1]


def test_duplicates_allowed_on_request_and_query_ids_unique(tmp_path: Path) -> None:
    (group,), _ = _build(tmp_path, [ROW, ROW], allow_duplicates=True)
    assert group.num_queries == 2 and group.queries[1].query_id == "v1#1"
    with pytest.raises(DataError, match=r"ann\.jsonl:2: query id 'q' already used at .*ann\.jsonl:1"):
        _build(tmp_path, [{**ROW, "query_id": "q"}, {**ROW, "start": 2.0, "query_id": "q"}])


def test_missing_features_and_unknown_videos(tmp_path: Path) -> None:
    write_npy_features(tmp_path / "feats", ["v1"])
    rows = [ROW, {**ROW, "video_id": "ghost"}, {**ROW, "video_id": "../etc/passwd"}]
    with pytest.raises(DataError, match=r"no features for video 'ghost' \(expected ghost\.npy\)"):
        _build(tmp_path, rows)
    groups, log = _build(tmp_path, rows, on_error="skip")
    assert [g.video_id for g in groups] == ["v1"] and log.skipped_queries == 2
    assert "not a valid file name" in log.skipped[1]


def _npy(tmp_path: Path, array: np.ndarray, name: str = "v1") -> NpyDirectory:
    (tmp_path / "f").mkdir(exist_ok=True)
    np.save(tmp_path / "f" / f"{name}.npy", array, allow_pickle=True)
    return NpyDirectory(str(tmp_path / "f"))


@pytest.mark.parametrize(
    ("array", "feature_dim", "message"),
    [
        (np.zeros((4, 8), dtype=np.int64), None, r"dtype int64, expected a float array"),
        (np.zeros((0, 8), dtype=np.float32), None, r"zero clips"),
        (np.zeros((4,), dtype=np.float32), None, r"expected \(clips, dim\)"),
        (np.zeros((4, 8), dtype=np.float32), 16, r"feature dim 8, expected 16"),
        (np.array([[0.0, np.nan], [np.inf, 1.0]], dtype=np.float32), None, r"2 NaN/inf values"),
        (np.full((2, 2), 1e300), None, r"NaN/inf values \(after the cast to float32\)"),
    ],
)
def test_bad_feature_arrays(tmp_path: Path, array: np.ndarray, feature_dim: int | None, message: str) -> None:
    store = _npy(tmp_path, array)
    with pytest.raises(DataError, match=message) as info:
        check_features(store.load("v1"), "feats[v1]", feature_dim)
    assert "feats[v1]" in str(info.value)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_npy_is_refused_without_executing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = _npy(tmp_path, np.array([_Boom()], dtype=object))
    with pytest.raises(DataError, match=r"v1\.npy: refusing a pickled/object \.npy"):
        store.load("v1")
    (tmp_path / "f" / "v2.npy").write_bytes(pickle.dumps(_Boom()))  # a raw pickle named .npy
    with pytest.raises(DataError, match=r"v2\.npy: refusing a pickled/object \.npy"):
        store.load("v2")
    (tmp_path / "f" / "v3.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"v3\.npy: not a valid \.npy array"):
        store.load("v3")
    assert not (tmp_path / "PWNED").exists()


def test_feature_shape_must_agree_across_videos(tmp_path: Path) -> None:
    write_npy_features(tmp_path / "feats", ["v1"], dim=8)
    write_npy_features(tmp_path / "feats", ["v2"], dim=8, tokens=3)
    rows = [ROW, {**ROW, "video_id": "v2"}]
    with pytest.raises(DataError, match=r"\[v2\]: features shape \(\d+, 3, 8\) disagrees"):
        _build(tmp_path, rows)


def test_hdf5_features(tmp_path: Path) -> None:
    path = tmp_path / "feats.hdf5"
    with h5py.File(path, "w") as f:
        f["v1"] = np.ones((6, 8), dtype=np.float32)
        f.create_group("v2")["c3d_features"] = np.ones((5, 8), dtype=np.float16)
    store = open_features(f"file://{path}")
    assert store.load("v1").shape == (6, 8)
    with pytest.raises(DataError, match=r"HDF5 key 'v3' missing"):
        store.load("v3")
    with pytest.raises(DataError, match=r"HDF5 key 'v2' is a group"):
        store.load("v2")
    store.close()
    nested = open_features(str(path), hdf5_key="c3d_features")
    assert check_features(nested.load("v2"), "x").dtype == np.float32
    nested.close()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"junk\.h5: not a readable HDF5 file"):
        open_features(str(tmp_path / "junk.h5"))
    with pytest.raises(FileNotFoundError, match="feature directory not found"):
        open_features(str(tmp_path / "nowhere"))


def test_real_charades_validation(shared_data: Path, tmp_path: Path) -> None:
    """The 2D-TAN copy's four START >= END lines are named; skipping drops exactly them (Lighthouse's 12404)."""
    durations = read_charades_durations(str(shared_data / "charades_sta/charades.json"))
    log = ErrorLog("skip")
    records = read_annotations(
        "charades-sta",
        str(shared_data / "charades_sta/charades_sta_train.orig.txt"),
        log,
        durations=durations,
    )
    videos = sorted({r.video_id for r in records if r.video_id in {"LEOL6", "IOL8Q", "AKKWU", "AO8RW"}})
    write_npy_features(tmp_path / "feats", videos)
    subset = [r for r in records if r.video_id in videos]
    store = NpyDirectory(str(tmp_path / "feats"))
    with pytest.raises(DataError, match=r"charades_sta_train\.orig\.txt:\d+: start 8\.0 >= end 7\.0"):
        list(build_video_groups(subset, store, BuildOptions("charades-sta"), ErrorLog()))
    groups = list(build_video_groups(subset, store, BuildOptions("charades-sta"), log))
    assert log.skipped_queries == 4 and sum(g.num_queries for g in groups) == len(subset) - 4
    assert all(q.end <= g.duration for g in groups for q in g.queries)


def test_real_activitynet_bad_timestamps(shared_data: Path, tmp_path: Path) -> None:
    """train.json's four timestamps with start >= end are named by video and index; skip drops only them."""
    videos = {"v_N7ppHQNikv8", "v_4rKTw99bM8g", "v_0bosp4-pyTM", "v_rhOtqArO-3Y"}
    records = [
        r
        for r in read_annotations(
            "activitynet", str(shared_data / "activitynet_captions/train.json"), ErrorLog()
        )
        if r.video_id in videos
    ]
    write_npy_features(tmp_path / "feats", videos)
    store = NpyDirectory(str(tmp_path / "feats"))
    with pytest.raises(DataError, match=r"train\.json:v_\S+\[\d+\]: start [\d.]+ >= end [\d.]+"):
        list(build_video_groups(records, store, BuildOptions("activitynet"), ErrorLog()))
    log = ErrorLog("skip")
    groups = list(build_video_groups(records, store, BuildOptions("activitynet"), log))
    assert log.skipped_queries == 4 and sum(g.num_queries for g in groups) == len(records) - 4
    assert all(q.sentence == q.sentence.strip() for g in groups for q in g.queries)
