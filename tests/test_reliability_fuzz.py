"""Bounded hypothesis fuzz of every annotation parser, the feature loaders and the shard sample decoder.

The property everywhere: an input either becomes valid data, or the project's `DataError` (a ValueError)
naming the file, line or key comes out; never another exception. In skip mode nothing disappears
silently either: every query of the input is either in a video group or counted as skipped.

Inputs are "almost valid" documents (the right keys and shapes, each field sometimes replaced by a
wrong type, NaN, a 400-digit integer, a nested list...), which reach far deeper than random bytes.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from datetime import timedelta
from typing import Any

import fsspec
import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_pipeline.build import BuildOptions, build_video_groups
from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.features import HDF5File, NpyDirectory, check_features, load_npy
from data_pipeline.readers import read_annotations
from data_pipeline.sample import KEY, decode_sample, encode_sample
from data_pipeline.synthetic import generate
from data_pipeline.types import VideoGroup

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
pytestmark = pytest.mark.timeout(120)

ROOT = "memory://reliability-fuzz"
FEATURES = f"{ROOT}/features"
_paths = itertools.count()

# ---- value strategies ----------------------------------------------------------------------------

_weird_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=10**300, max_value=10**310),  # exact ints beyond float range
    st.integers(min_value=-(2**63), max_value=2**63),
)
_numbers = st.one_of(st.integers(-5, 60), st.floats(-5, 60, allow_nan=False), _weird_numbers)
_scalars = st.one_of(_numbers, st.text(max_size=8), st.booleans(), st.none())
_anything = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_video_ids = st.sampled_from(["v1", "v2", "v3", "ghost", "../v1", "a/b", "", " ", "v1\x00", ".."]) | st.text(
    max_size=6
)
_sentences = st.sampled_from(["a person opens a door", "  ", "", "\t\n", "dup"]) | st.text(max_size=15)


def _sometimes(good: st.SearchStrategy, bad: st.SearchStrategy = _anything) -> st.SearchStrategy:
    """Mostly `good`, now and then anything at all (hypothesis shrinks towards the first branch)."""
    return st.one_of(good, good, good, bad)


def _maybe_missing(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A dict with each field present (mostly) or missing, plus now and then an unknown key."""
    present = {k: _sometimes(v) for k, v in fields.items()}
    return st.fixed_dictionaries({}, optional={**present, "extra": _anything}) | st.fixed_dictionaries(
        present
    )


def _window() -> st.SearchStrategy:
    return st.lists(_numbers, min_size=2, max_size=2)


# ---- features every parsed video may point at ----------------------------------------------------


def _features_store() -> NpyDirectory:
    """v1/v2 good (N, 8), v3 with patches (N, 3, 8) (disagrees with the others), nan: NaN, obj: pickled."""
    fs = fsspec.filesystem("memory")
    arrays = {
        "v1": np.ones((20, 8), np.float32),
        "v2": np.ones((12, 8), np.float64),
        "v3": np.ones((10, 3, 8), np.float32),
        "nan": np.full((5, 8), np.nan, np.float32),
        "obj": np.array([object()], dtype=object),
    }
    for name, array in arrays.items():
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=True)
        fs.pipe_file(f"{FEATURES}/{name}.npy", buf.getvalue())
    return NpyDirectory(FEATURES)


# ---- the property ---------------------------------------------------------------------------------


def _assert_valid_groups(groups: list[VideoGroup]) -> None:
    ids = [q.query_id for g in groups for q in g.queries]
    assert len(ids) == len(set(ids))
    for g in groups:
        assert math.isfinite(g.duration) and g.duration > 0
        assert g.features.dtype == np.float32 and g.features.ndim in (2, 3) and np.isfinite(g.features).all()
        assert [q.index for q in g.queries] == list(range(g.num_queries)) and g.queries
        for q in g.queries:
            assert q.sentence == q.sentence.strip() and q.sentence
            assert isinstance(q.start, float) and isinstance(q.end, float)
            assert 0 <= q.start < q.end <= g.duration


def _parse_and_build(
    fmt: str, data: bytes, on_error: str, **read_kw: Any
) -> tuple[list[VideoGroup], ErrorLog]:
    """Write `data` to a fresh memory:// file, read it as `fmt`, validate against the feature store."""
    url = f"{ROOT}/ann-{next(_paths)}"
    fsspec.filesystem("memory").pipe_file(url, data)
    log = ErrorLog(on_error)  # type: ignore[arg-type]
    try:
        records = read_annotations(fmt, url, log, **read_kw)  # type: ignore[arg-type]
        options = BuildOptions(fmt, feature_fps=2.0)
        groups = list(build_video_groups(records, _features_store(), options, log))
    except DataError as exc:
        assert url in str(exc) or FEATURES in str(exc), f"error names neither file: {exc}"
        raise
    _assert_valid_groups(groups)
    return groups, log


def _check(fmt: str, data: bytes, candidates: int | None, **read_kw: Any) -> None:
    """Raise mode: groups or a DataError. Skip mode: also every candidate query kept or counted."""
    try:
        _parse_and_build(fmt, data, "raise", **read_kw)
    except DataError:
        pass
    try:
        groups, log = _parse_and_build(fmt, data, "skip", **read_kw)
    except DataError:
        return  # file-level: empty file, not JSON at all, top level of the wrong type
    event("some queries valid" if groups else "no valid query")
    if candidates is not None:
        assert sum(g.num_queries for g in groups) + log.skipped_queries == candidates


def _non_blank_lines(data: bytes) -> int:
    """Queries a line format offers: lines that are not blank (a line that is not UTF-8 counts)."""
    count = 0
    for raw in data.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        try:
            count += bool(raw.decode("utf-8").strip())
        except UnicodeDecodeError:
            count += 1
    return count


def _jsonl(rows: list[Any], junk: list[bytes]) -> bytes:
    lines = [json.dumps(r).encode() for r in rows] + junk
    return b"\n".join(lines)


_junk_lines = st.lists(
    st.sampled_from(
        [b"{", b"[1, 2]", b"\xff\xfe", b"null", b"  ", b'{"a": ' + b"9" * 5000 + b"}", b"[" * 5000]
    )
    | st.binary(max_size=20),
    max_size=2,
)

# ---- annotation parsers --------------------------------------------------------------------------


@FUZZ
@given(
    lines=st.lists(
        st.tuples(
            _video_ids,
            _sometimes(_numbers, st.text(max_size=5)),
            _sometimes(_numbers, st.text(max_size=5)),
            st.sampled_from(["##", "#", " ", "## ##"]),
            _sentences,
        ).map(lambda t: f"{t[0]} {t[1]} {t[2]}{t[3]}{t[4]}".encode())
        | st.binary(max_size=30),
        max_size=6,
    ),
    durations=st.none() | st.dictionaries(_video_ids, st.floats(-5, 60) | st.just(30.0), max_size=4),
)
def test_fuzz_charades_sta(lines: list[bytes], durations: dict[str, float] | None) -> None:
    data = b"\n".join(lines)
    _check("charades-sta", data, _non_blank_lines(data), durations=durations)


_generic_row = _maybe_missing(
    {
        "video_id": _video_ids,
        "duration": _numbers,
        "start": _numbers,
        "end": _numbers,
        "sentence": _sentences,
        "query_id": st.text(max_size=3),
    }
)


@FUZZ
@given(rows=st.lists(_generic_row, max_size=6), junk=_junk_lines)
def test_fuzz_generic_jsonl(rows: list[dict], junk: list[bytes]) -> None:
    data = _jsonl(rows, junk)
    _check("generic", data, _non_blank_lines(data))


_moment_detr_row = _maybe_missing(
    {
        "qid": st.integers() | st.text(max_size=3),
        "query": _sentences,
        "duration": _numbers,
        "vid": _video_ids,
        "relevant_windows": st.lists(_window(), max_size=2),
    }
)


@FUZZ
@given(rows=st.lists(_moment_detr_row, max_size=6), junk=_junk_lines)
def test_fuzz_moment_detr_jsonl(rows: list[dict], junk: list[bytes]) -> None:
    data = _jsonl(rows, junk)
    _check("moment-detr", data, _non_blank_lines(data))


def _caption_candidates(doc: Any) -> int | None:
    """Queries a caption JSON offers: each video's sentences, or 1 for an entry without a sentence list."""
    if not isinstance(doc, dict):
        return None
    counts = [
        len(e["sentences"]) if isinstance(e, dict) and isinstance(e.get("sentences"), list) else 1
        for e in doc.values()
    ]
    return sum(counts)


def _caption_entry(time_fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.integers(0, 4).flatmap(
        lambda n: _maybe_missing(
            {
                **time_fields,
                "timestamps": st.lists(_sometimes(_window()), min_size=n, max_size=n),
                "sentences": st.lists(_sometimes(_sentences), min_size=n, max_size=n),
            }
        )
    )


@FUZZ
@given(
    doc=st.dictionaries(_video_ids, _sometimes(_caption_entry({"duration": _numbers})), max_size=4)
    | _anything
)
def test_fuzz_activitynet_json(doc: Any) -> None:
    _check("activitynet", json.dumps(doc).encode(), _caption_candidates(doc))


@FUZZ
@given(
    doc=st.dictionaries(
        _video_ids.map(lambda v: f"{v}.avi"),
        _sometimes(_caption_entry({"fps": _numbers, "num_frames": _numbers})),
        max_size=4,
    )
    | _anything,
    unit=st.sampled_from(["frames", "seconds"]),
)
def test_fuzz_tacos_json(doc: Any, unit: str) -> None:
    _check("tacos", json.dumps(doc).encode(), _caption_candidates(doc), tacos_unit=unit)


@FUZZ
@given(data=st.binary(max_size=200), fmt=st.sampled_from(["activitynet", "tacos"]))
def test_fuzz_json_parsers_on_raw_bytes(data: bytes, fmt: str) -> None:
    _check(fmt, data, None)


# ---- feature loaders -----------------------------------------------------------------------------

_dtypes = st.one_of(
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
)
_arrays = _dtypes.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
) | hnp.floating_dtypes().flatmap(  # feature-shaped float arrays, NaN/inf/huge values included
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4))
)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _expected_features(array: np.ndarray) -> np.ndarray | None:
    """What `check_features` must return for `array`, or None when it must refuse it."""
    if array.dtype.kind != "f" or array.ndim not in (2, 3) or 0 in array.shape:
        return None
    with np.errstate(over="ignore"):
        out = array.astype(np.float32)
    return out if np.isfinite(out).all() else None


def _load(data: bytes) -> np.ndarray:
    try:
        return check_features(load_npy(data, "fz/v.npy"), "fz/v.npy")
    except DataError as exc:
        assert "fz/v.npy" in str(exc)
        raise


@FUZZ
@given(array=_arrays)
def test_fuzz_npy_arrays_load_exactly_or_are_refused(array: np.ndarray) -> None:
    """Every dtype and shape: a valid feature array comes back bit-for-bit (as float32), anything else is a
    DataError; never a silent change of values."""
    expected = _expected_features(array)
    try:
        got = _load(_npy_bytes(array))
    except DataError:
        assert expected is None, f"refused a valid {array.dtype} {array.shape} array"
        event("refused")
        return
    event("loaded")
    assert expected is not None and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


@FUZZ
@given(
    array=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4),
        elements=st.floats(-1, 1, width=32),
    ),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 400),
    fortran=st.booleans(),
)
def test_fuzz_corrupted_npy_bytes(
    array: np.ndarray, edits: list[tuple[int, int]], cut: int | None, fortran: bool
) -> None:
    """Flip bytes in (header or data of) a valid `.npy` and truncate it: valid data or a DataError."""
    data = bytearray(_npy_bytes(np.asfortranarray(array) if fortran else array))
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        got = _load(bytes(data[:cut]))
    except DataError:
        return
    assert got.dtype == np.float32 and got.ndim in (2, 3) and np.isfinite(got).all()


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_npy_random_bytes(data: bytes) -> None:
    with pytest.raises(DataError):
        _load(data)


@FUZZ
@given(video_id=st.text(max_size=12) | st.sampled_from(["../secret", "..", ".", "/secret", "a/../../secret"]))
def test_fuzz_npy_directory_ids_never_leave_the_directory(video_id: str) -> None:
    """Whatever the id, only `{dir}/{id}.npy` inside the directory can be read; `../secret.npy` never is."""
    store = _features_store()
    fsspec.filesystem("memory").pipe_file(f"{ROOT}/secret.npy", _npy_bytes(np.full((3, 8), 7.0, np.float32)))
    try:
        array = store.load(video_id)
    except DataError as exc:
        assert FEATURES in str(exc)
        return
    assert video_id in {"v1", "v2", "v3", "nan"}
    assert not (array == 7.0).all()


@pytest.fixture(scope="module")
def hdf5_store(tmp_path_factory: pytest.TempPathFactory) -> HDF5File:
    path = tmp_path_factory.mktemp("h5") / "feats.h5"
    with h5py.File(path, "w") as f:
        f["v1"] = np.ones((4, 8), np.float32)
        f.create_group("g")["c3d"] = np.ones((3, 8), np.float32)
        f["text"] = "a string"
    store = HDF5File(str(path))
    yield store
    store.close()


@FUZZ
@given(
    video_id=st.text(max_size=10) | st.sampled_from(["v1", "g", "g/c3d", "/v1", "//v1", ".", "..", "text"])
)
def test_fuzz_hdf5_keys(hdf5_store: HDF5File, video_id: str) -> None:
    try:
        check_features(hdf5_store.load(video_id), f"{hdf5_store.url} [{video_id}]")
    except DataError as exc:
        assert hdf5_store.url in str(exc)


# ---- shard samples ---------------------------------------------------------------------------------

_GOOD = encode_sample(generate(1, seed=0, feature_dim=4, num_patches=0)[0], "vid")
_GOOD_DOC = json.loads(_GOOD["json"])
_query = _maybe_missing(
    {
        "query_id": st.text(max_size=3),
        "sentence": _sentences,
        "start": _numbers,
        "end": _numbers,
        "index": st.integers(-2, 5),
    }
)
_video_doc = _maybe_missing(
    {
        "format": st.just("mktn-video-v1"),
        "video_id": _video_ids,
        "duration": _numbers,
        "dataset": st.text(max_size=3),
        "split": st.text(max_size=3),
        "meta": st.dictionaries(st.text(max_size=3), _anything, max_size=2),
        "queries": st.lists(_query, max_size=3),
    }
)


@FUZZ
@given(
    doc=_video_doc | st.just(_GOOD_DOC),
    npy=st.just(_GOOD["npy"]) | _arrays.map(_npy_bytes),
    key=st.just("vid") | st.text(max_size=6),
    extra=st.dictionaries(
        st.sampled_from(["pyd", "pickle", "txt", "cls"]), st.binary(max_size=8), max_size=1
    ),
)
def test_fuzz_shard_sample_decoder(doc: Any, npy: bytes, key: str, extra: dict[str, bytes]) -> None:
    sample = {
        "__key__": key,
        "__url__": "fz/shard.tar",
        "json": json.dumps(doc).encode(),
        "npy": npy,
        **extra,
    }
    try:
        group = decode_sample(sample)
    except DataError as exc:
        assert "fz/shard.tar" in str(exc)
        return
    assert not extra and KEY.match(key)
    assert math.isfinite(group.duration) and group.duration > 0 and group.queries
    assert all(0 <= q.start < q.end <= group.duration for q in group.queries)
