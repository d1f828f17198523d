"""Annotation readers on the real published files, their error messages, and a bounded fuzz."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.readers import FORMATS, read_annotations, read_charades_durations


def _read(fmt: str, path: Path | str, on_error: str = "raise", **kw) -> tuple[list, ErrorLog]:
    log = ErrorLog(on_error)  # type: ignore[arg-type]
    return read_annotations(fmt, str(path), log, **kw), log  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "name", "queries", "videos"),
    [
        ("charades-sta", "charades_sta/charades_sta_train.txt", 12408, 5338),
        ("charades-sta", "charades_sta/charades_sta_test.txt", 3720, 1334),
        ("activitynet", "activitynet_captions/train.json", 37421, 10009),
        ("activitynet", "activitynet_captions/val_1.json", 17505, 4917),
        ("tacos", "tacos/train.json", 9790, 75),
        ("tacos", "tacos/val.json", 4436, 27),
        ("moment-detr", "charades_sta/lighthouse/charades_train_release.jsonl", 12404, 5336),
        ("moment-detr", "activitynet_captions/lighthouse/activitynet_val_release.jsonl", 17505, 4917),
        ("moment-detr", "tacos/lighthouse/tacos_val_release.jsonl", 4436, 27),
    ],
)
def test_real_files_parse_completely(
    shared_data: Path, fmt: str, name: str, queries: int, videos: int
) -> None:
    records, log = _read(fmt, shared_data / name)
    assert len(records) == queries and len({r.video_id for r in records}) == videos
    assert not log.skipped


def test_charades_sta_fields_and_durations(shared_data: Path) -> None:
    from_json = read_charades_durations(str(shared_data / "charades_sta/charades.json"))
    from_csv = read_charades_durations(str(shared_data / "charades_sta/Charades_v1_train.csv"))
    assert len(from_json) == 9848 and len(from_csv) == 7985
    assert max(abs(from_json[v] - from_csv[v]) for v in from_csv) <= 0.02
    records, _ = _read(
        "charades-sta", shared_data / "charades_sta/charades_sta_train.txt", durations=from_json
    )
    first = records[0]
    assert (first.video_id, first.start, first.end) == ("AO8RW", 0.0, 6.9)
    assert first.sentence == "a person is putting a book on a shelf." and first.duration == 33.67
    assert first.where.endswith("charades_sta_train.txt:1")


def test_charades_sta_unknown_video(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("AO8RW 0.0 6.9##a person reads.\nNOPE1 1.0 2.0##who is this.\n")
    with pytest.raises(DataError, match=r"a\.txt:2: unknown video id 'NOPE1'"):
        _read("charades-sta", path, durations={"AO8RW": 33.67})


def test_tacos_frames_equal_lighthouse_seconds(shared_data: Path) -> None:
    frames, _ = _read("tacos", shared_data / "tacos/val.json")
    seconds, _ = _read("moment-detr", shared_data / "tacos/lighthouse/tacos_val_release.jsonl")
    assert len(frames) == len(seconds)
    for a, b in zip(frames, seconds):
        assert a.video_id == b.video_id and a.sentence == b.sentence
        assert a.start == pytest.approx(b.start) and a.end == pytest.approx(b.end)
        assert a.duration == pytest.approx(b.duration)
    kept, _ = _read("tacos", shared_data / "tacos/val.json", keep_extension=True)
    assert kept[0].video_id == "s34-d28.avi"


def test_tacos_seconds_form(tmp_path: Path) -> None:
    path = tmp_path / "tacos_s.json"
    path.write_text('{"s1-d1": {"duration": 60.0, "timestamps": [[1.5, 4.0]], "sentences": ["he cuts"]}}')
    (rec,), _ = _read("tacos", path, tacos_unit="seconds")
    assert (rec.video_id, rec.start, rec.end, rec.duration) == ("s1-d1", 1.5, 4.0, 60.0)
    with pytest.raises(DataError, match="missing key 'fps'"):
        _read("tacos", path, tacos_unit="frames")


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfAO8RW 0.0 6.9##a person reads.\n")
    (rec,), _ = _read("charades-sta", path, durations={"AO8RW": 33.67})
    assert rec.video_id == "AO8RW"


def test_generic_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(
        '{"video_id": "v1", "duration": 30, "start": 1, "end": 5.5, "sentence": "a dog runs"}\n\n'
        '{"video_id": "v1", "duration": 30, "start": 6, "end": 9, "sentence": "it sits", "query_id": "q7"}\n'
    )
    records, _ = _read("generic", path)
    assert [(r.start, r.end, r.query_id) for r in records] == [(1.0, 5.5, None), (6.0, 9.0, "q7")]
    assert records[1].where.endswith("g.jsonl:3")


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("charades-sta", "AO8RW 0.0 6.9 a person reads\n", r":1: expected 'VIDEO START END##sentence'"),
        ("charades-sta", "AO8RW 0.0 x##a person reads\n", r":1: END must be a finite number, got 'x'"),
        ("charades-sta", "AO8RW nan 3.0##a person reads\n", r":1: START must be a finite number, got nan"),
        ("charades-sta", "", r"file is empty"),
        ("charades-sta", "  \n\n", r"file is empty"),
        (
            "generic",
            '{"video_id": "v", "duration": 9, "start": 1, "end": 2}\n',
            r":1: missing key 'sentence'",
        ),
        (
            "generic",
            '{"video_id": "v", "duration": 9, "start": 1, "end": 2, "sentense": "x"}\n',
            r"unknown keys",
        ),
        (
            "generic",
            '{"video_id": "v", "duration": 9, "start": "1", "end": 2, "sentence": "x"}\n',
            r"start must be a",
        ),
        ("generic", '{"video_id": "v", "duration": 9,\n', r":1: invalid JSON"),
        ("generic", "[1, 2]\n", r":1: expected a JSON object"),
        (
            "moment-detr",
            '{"qid": 1, "query": "q", "duration": 9, "vid": "v", "relevant_windows": [[1, 2], [3, 4]]}',
            r":1: expected exactly one relevant window",
        ),
        ("activitynet", '{"v": {"duration": 9, "timestamps": [[1, 2]], "sentences": []}}', r"same length"),
        (
            "activitynet",
            '{"v": {"duration": 9, "timestamps": [[1]], "sentences": ["a"]}}',
            r"v\[0\]: timestamp must be",
        ),
        (
            "activitynet",
            '{"v": {"duration": 9, "timestamps": [[1, 2]], "sentences": ["a"]}',
            r":1:\d+: invalid JSON",
        ),
        (
            "tacos",
            '{"v.avi": {"fps": 0, "num_frames": 9, "timestamps": [[1, 2]], "sentences": ["a"]}}',
            r"ann\.txt:v\.avi: fps 0.0 per second is outside the accepted range \[0.001, 10000\]",
        ),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path: Path, fmt: str, content: str, message: str) -> None:
    path = tmp_path / "ann.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        _read(fmt, path)
    assert str(path) in str(info.value)


def test_non_utf8_line_is_named_and_skippable(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"AO8RW 0.0 6.9##a person reads.\nAO8RW 1.0 2.0##caf\xe9 time\nAO8RW 2.0 3.0##ok.\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not valid UTF-8"):
        _read("charades-sta", path)
    records, log = _read("charades-sta", path, on_error="skip")
    assert len(records) == 2 and log.skipped_queries == 1 and "bad.txt:2" in log.skipped[0]
    js = tmp_path / "bad.json"
    js.write_bytes(b'{"v": {"duration": 9,\n "timestamps": [[1, 2]], "sentences": ["\xff"]}}')
    with pytest.raises(DataError, match=r"bad\.json:2: not valid UTF-8"):
        _read("activitynet", js)


def test_orig_charades_file_parses_and_missing_file(shared_data: Path, tmp_path: Path) -> None:
    records, _ = _read("charades-sta", shared_data / "charades_sta/charades_sta_train.orig.txt")
    bad = [r for r in records if r.start >= r.end]
    assert (
        len(bad) == 4
    )  # START >= END lines are parsed here and refused by validation (see test_data_validation)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        _read("generic", tmp_path / "absent.jsonl")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(FORMATS), data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzz_parsers_fail_only_with_data_errors(tmp_path: Path, fmt: str, data: bytes) -> None:
    """Whatever the bytes, a reader returns records or raises DataError (never a deep traceback)."""
    path = tmp_path / "fuzz.ann"
    path.write_bytes(data)
    try:
        records, log = _read(fmt, path, on_error="skip")
    except DataError:
        return
    for r in records:
        assert isinstance(r.video_id, str) and isinstance(r.sentence, str)
        assert isinstance(r.start, float) and isinstance(r.end, float)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "video_id": st.text(max_size=8) | st.integers(),
                "duration": st.floats(allow_nan=True) | st.text(max_size=3),
                "start": st.floats(allow_nan=True, allow_infinity=True) | st.none(),
                "end": st.floats(allow_nan=True, allow_infinity=True) | st.booleans(),
                "sentence": st.text(max_size=20) | st.integers(),
            }
        ),
        min_size=1,
        max_size=5,
    )
)
def test_fuzz_generic_rows(tmp_path: Path, rows: list[dict]) -> None:
    """Structured fuzz: every wrongly-typed or non-finite field is reported with the file and line."""
    import json

    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    records, log = _read("generic", path, on_error="skip")
    assert len(records) + log.skipped_queries == len(rows)
    assert all(str(path) in m for m in log.skipped)
