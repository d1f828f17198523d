"""Bad inputs that used to escape as a deep traceback (TypeError, OverflowError, MemoryError...) or to change
the data silently: each now raises `DataError` naming the file and line/key, or is refused outright.

The common cases (malformed lines, start >= end, missing features, tampered shards...) are in
tests/test_data_*.py; these are the ones an audit for issue 6 found uncovered.
"""

from __future__ import annotations

import errno
import io
import json
import re
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from cluster.cli import main
from data_pipeline.build import BuildOptions, build_video_groups
from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.features import HDF5File, NpyDirectory, check_features, load_npy
from data_pipeline.readers import read_annotations, read_charades_durations
from data_pipeline.readers.common import read_rows
from data_pipeline.shards import OUTPUTS, read_dataset_info, write_dataset
from data_pipeline.synthetic import generate

GENERIC = {"video_id": "v1", "duration": 30.0, "start": 1.0, "end": 5.0, "sentence": "a person opens a door"}


def _read(fmt: str, path: Path, on_error: str = "raise") -> tuple[list, ErrorLog]:
    log = ErrorLog(on_error)  # type: ignore[arg-type]
    return read_annotations(fmt, str(path), log), log  # type: ignore[arg-type]


# ---- annotations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        # an int beyond float range: was OverflowError from math.isfinite
        ("generic", json.dumps({**GENERIC, "start": 10**400}), r"ann:1: start must be a finite number"),
        (
            "moment-detr",
            json.dumps(
                {"qid": 1, "query": "q", "duration": 10**309, "vid": "v", "relevant_windows": [[1, 2]]}
            ),
            r"ann:1: duration must be a finite number",
        ),
        (
            "activitynet",
            json.dumps({"v": {"duration": 9, "timestamps": [[1, 10**400]], "sentences": ["a"]}}),
            r"ann:v\[0\]: timestamp must be a finite number",
        ),
        # a 5000-digit number: was a bare ValueError from int() without the file
        (
            "generic",
            '{"video_id": "v1", "start": ' + "9" * 5000 + "}",
            r"ann:1: invalid JSON \(Exceeds the limit",
        ),
        ("tacos", '{"v": {"fps": ' + "9" * 5000 + "}}", r"ann: invalid JSON \(Exceeds the limit"),
        # nesting deeper than the recursion limit: was RecursionError
        ("generic", "[" * 100_000 + "]" * 100_000, r"ann:1: invalid JSON \(maximum recursion depth"),
        ("activitynet", "[" * 100_000 + "]" * 100_000, r"ann: invalid JSON \(maximum recursion depth"),
    ],
)
def test_extreme_json_numbers_and_nesting_are_named(
    tmp_path: Path, fmt: str, content: str, message: str
) -> None:
    path = tmp_path / "ann"
    path.write_text(content + "\n")
    with pytest.raises(DataError, match=message):
        _read(fmt, path)


def test_video_entry_with_non_list_sentences_is_skipped_and_counted(tmp_path: Path) -> None:
    """`"sentences": 5` used to crash the skip path itself (len(5)) with a TypeError."""
    path = tmp_path / "anet.json"
    entries = {
        "bad": {"duration": 9, "timestamps": 3, "sentences": 5},
        "ok": {"duration": 9, "timestamps": [[1, 2]], "sentences": ["a dog runs"]},
    }
    path.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"anet\.json:bad: 'timestamps' and 'sentences' must be lists"):
        _read("activitynet", path)
    records, log = _read("activitynet", path, on_error="skip")
    assert [r.video_id for r in records] == ["ok"] and log.skipped_queries == 1
    assert "anet.json:bad" in log.skipped[0]


# ---- numbers that are finite in float64 but not in float32 (issue 17) ----------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"duration": 1e308},
            r"ann:1: duration 1e\+308 seconds is outside the accepted range \[0.001, 1e\+06\]",
        ),
        ({"duration": 1e-300}, r"ann:1: duration 1e-300 seconds is outside the accepted range"),
        ({"duration": 3e6, "end": 2e6}, r"ann:1: duration 3000000.0 seconds is outside the accepted range"),
        ({"start": 1.0, "end": 1.00000001}, r"ann:1: times \(1.0, 1.00000001\) must satisfy .* in float32"),
    ],
)
def test_times_and_durations_are_judged_in_float32(tmp_path: Path, change: dict, message: str) -> None:
    """1e308 s passed every check, became inf in the float32 batch, and one step later every weight was NaN."""
    path = tmp_path / "ann"
    path.write_text(
        json.dumps({**GENERIC, **change}) + "\n" + json.dumps({**GENERIC, "video_id": "v2"}) + "\n"
    )
    feats = tmp_path / "feats"
    feats.mkdir()
    for video in ("v1", "v2"):
        np.save(feats / f"{video}.npy", np.ones((8, 4), np.float32))
    with pytest.raises(DataError, match=message):
        _build(path, feats, "raise")
    groups, log = _build(path, feats, "skip")
    assert [g.video_id for g in groups] == ["v2"] and log.skipped_queries == 1
    assert re.search(message, log.skipped[0])


def _build(path: Path, feats: Path, on_error: str) -> tuple[list, ErrorLog]:
    records, log = _read("generic", path, on_error)
    return list(build_video_groups(records, NpyDirectory(str(feats)), BuildOptions("generic"), log)), log


@pytest.mark.parametrize("fps", ["0", "nan", "1e-300", "inf", "-2"])
def test_feature_fps_out_of_range_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fps: str
) -> None:
    """`--feature-fps 0` was a ZeroDivisionError traceback, `nan` a JSON error naming no file."""
    ann = tmp_path / "ann.txt"
    ann.write_text("v1 1.0 2.0##a dog runs\n")
    (tmp_path / "feats").mkdir()
    np.save(tmp_path / "feats" / "v1.npy", np.ones((8, 4), np.float32))
    args = ["prepare", "charades-sta", "--annotations", str(ann), "--features", str(tmp_path / "feats")]
    assert main([*args, "--out", str(tmp_path / "out"), "--feature-fps", fps, "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"--feature-fps: feature fps {float(fps)} per second is outside the accepted range" in line


def test_tacos_fps_vanishing_in_float32_is_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TACoS fps 1e-300 made durations of 1e302 s and a JSON error that aborted even under --on-error skip."""
    ann = tmp_path / "tacos.json"
    entry = {"num_frames": 900, "timestamps": [[30, 90]], "sentences": ["a man cuts a leek"]}
    ann.write_text(json.dumps({"s1.avi": {**entry, "fps": 1e-300}, "s2.avi": {**entry, "fps": 29.4}}))
    (tmp_path / "feats").mkdir()
    for video in ("s1", "s2"):
        np.save(tmp_path / "feats" / f"{video}.npy", np.ones((8, 4), np.float32))
    args = [
        "prepare",
        "tacos",
        "--annotations",
        str(ann),
        "--features",
        str(tmp_path / "feats"),
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "out"), "--on-error", "skip"]) == 0
    info = read_dataset_info(str(tmp_path / "out"))
    assert info["counts"]["videos"] == 1 and info["validation"]["skipped_queries"] == 1
    assert (
        "tacos.json:s1.avi: fps 1e-300 per second is outside the accepted range"
        in info["validation"]["skipped"][0]
    )


# ---- line-based files are streamed, with bounded lines and errors (issue 17) ----------------------------


def _peak(fn: Callable[[], object]) -> tuple[object, int]:
    """`fn()` and the peak of Python/numpy memory it allocated."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_query_rows_are_streamed_and_their_errors_bounded(tmp_path: Path) -> None:
    """A 1M-line query file of refusals reached 1.55 GB RSS: the reader now holds one line at a time, stops
    after `max_errors` bad lines, and never holds a line over `max_line_bytes`."""
    from cluster.serve.queries import Limits, parse_query

    def parse(obj: object, line: int) -> object:
        return parse_query(obj, line, Limits())

    bad = tmp_path / "bad.jsonl"
    with bad.open("w") as f:
        f.writelines(
            json.dumps({"video_id": f"v{i}", "sentence": "", "duration": 3}) + "\n" for i in range(200_000)
        )
    with pytest.raises(
        DataError,
        match=r"bad\.jsonl: more than max_errors=1000 bad lines, stopped at line 1001 "
        r"\(first: .*bad\.jsonl:1: 'sentence' is empty\)",
    ):
        read_rows(str(bad), parse)
    mixed = tmp_path / "mixed.jsonl"
    good = {"video_id": "v1", "sentence": "a dog runs", "duration": 3}
    mixed.write_bytes(
        b'{"sentence": "' + b"x" * 8_000_000 + b'"}\n[1, 2]\n\n\xff\n' + json.dumps(good).encode() + b"\n"
    )
    (rows, errors), peak = _peak(lambda: read_rows(str(mixed), parse))
    assert [(q.row, q.video_id) for q in rows] == [(5, "v1")]
    assert [(e.line, e.reason) for e in errors] == [
        (1, "line is longer than the limit max_line_bytes=1048576"),
        (2, "expected a JSON object, got list"),
        (4, "not valid UTF-8 (byte 0 of the line)"),
    ]
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB for an 8 MB line"


def test_annotation_lines_are_streamed_with_a_line_bound(tmp_path: Path) -> None:
    path = tmp_path / "ann"
    path.write_text(json.dumps({**GENERIC, "sentence": "x" * 8_000_000}) + "\n" + json.dumps(GENERIC) + "\n")
    with pytest.raises(DataError, match=r"ann:1: line is longer than the limit max_line_bytes=1048576"):
        _read("generic", path)
    (records, log), peak = _peak(lambda: _read("generic", path, "skip"))
    assert [r.where for r in records] == [f"{path}:2"] and log.skipped_queries == 1
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB for an 8 MB line"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"id,length\nAO8RW\n",
            r"durations\.csv:AO8RW: length must be a finite number, got None",
        ),  # short row
        (b"id,length\nAO8RW,3\n\xff\xfe,4\n", r"durations\.csv:3: not valid UTF-8"),
        (b"id,length\n" + b"x" * 200_000 + b",3\n", r"durations\.csv:\d+: malformed CSV \(field larger"),
        (b"id,length\nAO8RW,1e999\n", r"durations\.csv:AO8RW: length must be a finite number, got inf"),
    ],
)
def test_charades_duration_csv_problems_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "durations.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_charades_durations(str(path))


# ---- features ------------------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_npz_archive_named_npy_is_refused() -> None:
    """np.load returns an NpzFile for zip bytes; it used to reach check_features and die with AttributeError."""
    buf = io.BytesIO()
    np.savez(buf, features=np.zeros((4, 8), np.float32))
    with pytest.raises(DataError, match=r"v1\.npy: refusing .* non-\.npy data"):
        load_npy(buf.getvalue(), "feats/v1.npy")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:  # any zip, not just numpy's
        z.writestr("a.npy", _npy(np.zeros(3)))
    with pytest.raises(DataError, match="no .npy header"):
        load_npy(zipped.getvalue(), "feats/v1.npy")


def test_forged_npy_header_cannot_allocate_terabytes() -> None:
    """A 128-byte file declaring a (10**12, 4) float32 array: refused from its header, never allocated
    (numpy itself would try to allocate 16 TB and raise MemoryError, or be killed)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)}
    )
    with pytest.raises(
        DataError, match=r"x\.npy: not a valid \.npy array \(header declares \(1000000000000, 4\)"
    ):
        load_npy(header.getvalue(), "x.npy")


@pytest.mark.parametrize("cut", [-1, -48])
def test_truncated_or_padded_npy_is_refused(cut: int) -> None:
    data = _npy(np.ones((4, 8), np.float32))
    with pytest.raises(DataError, match=rf"x\.npy: not a valid \.npy array .* 128 bytes; {128 + cut} follow"):
        load_npy(data[:cut], "x.npy")
    with pytest.raises(DataError, match=r"not a valid \.npy array .* 128 bytes; 129 follow"):
        load_npy(data + b"\0", "x.npy")  # trailing bytes would be silently ignored by np.load


def test_hdf5_oddities_are_refused_and_never_read_other_files(tmp_path: Path) -> None:
    """A scalar string (was AttributeError), a virtual dataset (silently returned fill values while
    pointing at another file) and an external link (to a file outside the dataset) are all refused."""
    secret = tmp_path / "outside.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.full((3, 4), 7.0, dtype=np.float32)
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        f["ok"] = np.ones((3, 4), dtype=np.float32)
        f["text"] = b"not features"
        f["link"] = h5py.ExternalLink(str(secret), "data")
        layout = h5py.VirtualLayout(shape=(3, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(str(secret), "data", shape=(3, 4))
        f.create_virtual_dataset("virtual", layout)
    store = HDF5File(str(path))
    try:
        assert check_features(store.load("ok"), "ok").shape == (3, 4)
        with pytest.raises(DataError, match=r"text: features have dtype \|S12, expected a float array"):
            check_features(store.load("text"), "text")
        with pytest.raises(DataError, match=r"feats\.h5: HDF5 key 'virtual' is a virtual dataset"):
            store.load("virtual")
        with pytest.raises(
            DataError, match=r"feats\.h5: HDF5 key 'link' is an external link to .*outside\.h5:data; refused"
        ):
            store.load("link")
    finally:
        store.close()


# ---- disk full while writing shards --------------------------------------------------------------


class _QuotaFile(MemoryFile):
    """A file of `_QuotaDisk`: writes what still fits, then fails with ENOSPC like a full disk."""

    def write(self, data: bytes) -> int:
        room = max(_QuotaDisk.free, 0)
        _QuotaDisk.free -= len(data)
        if len(data) > room:
            super().write(bytes(data[:room]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


class _QuotaDisk(MemoryFileSystem):
    """An in-memory filesystem with `free` bytes left across all files (a disk, not a per-file quota)."""

    protocol = "quotadisk"
    store: dict = {}
    pseudo_dirs = [""]
    free = 0

    def _open(self, path, mode="rb", **kwargs):
        if mode != "wb":
            return super()._open(path, mode, **kwargs)
        f = _QuotaFile(self, self._strip_protocol(path))
        f.commit()  # visible at once, like a file being written on disk
        return f


@pytest.fixture(scope="module")
def groups() -> list:
    return generate(6, seed=0, feature_dim=8, num_patches=0, num_clips=(5, 8))


def _full_write(groups: list, free: int) -> tuple[BaseException | None, list[str]]:
    fsspec.register_implementation("quotadisk", _QuotaDisk, clobber=True)
    _QuotaDisk.store.clear()
    _QuotaDisk.pseudo_dirs[:] = [""]
    _QuotaDisk.free = free
    try:
        write_dataset(
            groups, "quotadisk://out", dataset="s", split="train", shard_size_mb=0.0005, progress=False
        )
    except Exception as exc:  # the test inspects whatever escaped
        return exc, sorted(_QuotaDisk.store)
    return None, sorted(_QuotaDisk.store)


def test_disk_full_at_every_point_leaves_no_dataset_that_looks_complete(groups: list) -> None:
    """Run out of space after N bytes for N across the whole write (shards, then tables, vocab and
    dataset.json): each run either finishes or raises DataError naming the output, and leaves nothing
    behind that a reader would take for a complete dataset."""
    error, files = _full_write(groups, 10**9)
    assert error is None
    needed = read_dataset_info("quotadisk://out")["counts"]["bytes"]  # the shards' bytes; then the metadata
    total = needed + sum(f.size for p, f in _QuotaDisk.store.items() if "/shards/" not in p)
    outcomes = set()
    for free in [0, 100, needed // 2, needed - 1, needed + 10, *range(needed + 100, total, 700)]:
        error, files = _full_write(groups, free)
        if error is None:  # enough room after all
            assert "quotadisk://out/dataset.json" in files
            continue
        assert isinstance(error, DataError), f"free={free}: {type(error).__name__}: {error}"
        assert "quotadisk://out" in str(error) and "No space left" in str(error)
        assert files == [], f"free={free}: left behind {files}"
        with pytest.raises(FileNotFoundError, match="no dataset.json"):
            read_dataset_info("quotadisk://out")
        outcomes.add(str(error).split(" failed")[0])
    assert outcomes == {"quotadisk://out: writing shards", "quotadisk://out: writing the dataset metadata"}
    assert set(OUTPUTS) >= {"dataset.json", "manifest.parquet", "shards.parquet", "vocab.json", "shards"}


def test_disk_full_on_a_real_tmpfs(tmp_path: Path, groups: list) -> None:
    """The same on a real 64 KiB tmpfs (needs root to mount; skipped otherwise)."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        big = generate(6, seed=0, feature_dim=64, num_patches=4, num_clips=(20, 30))
        with pytest.raises(DataError, match=r"tiny/ds: writing shards failed .*No space left on device"):
            write_dataset(
                big, str(mount / "ds"), dataset="s", split="train", shard_size_mb=0.02, progress=False
            )
        assert [p.name for p in mount.rglob("*") if p.is_file()] == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ---- prepared-dataset metadata -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"\x80\x04K\x01.",
            r"vocab\.json: vocabulary is not valid JSON",
        ),  # not UTF-8: was a bare UnicodeDecodeError
        (b"[" * 100_000, r"vocab\.json: vocabulary is not valid JSON \(maximum recursion"),
        (
            b'{"format": "mktn-vocab-v1", "words": ["a", {"b": 1}]}',
            r"vocab\.json: expected .*strings",
        ),  # TypeError
        (
            b'{"format": "mktn-vocab-v1", "words": ["a", "a"]}',
            r"vocab\.json: vocabulary words must be unique",
        ),
        (b'["mktn-vocab-v1"]', r"vocab\.json: expected \{'format': 'mktn-vocab-v1'"),
    ],
)
def test_bad_vocab_json_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    from data_pipeline.text import Vocab

    (tmp_path / "vocab.json").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        Vocab.load(str(tmp_path / "vocab.json"))


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"[" * 100_000])
def test_bad_dataset_json_is_named(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "dataset.json").write_bytes(content)
    with pytest.raises(DataError, match=r"dataset\.json: invalid JSON"):
        read_dataset_info(str(tmp_path))


# ---- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "override"),
    [
        (b"[" * 5000, "[" * 5000),  # was RecursionError
        (
            b"train:\n  lr: " + b"9" * 5000,
            "9" * 5000,
        ),  # was a bare ValueError (int conversion limit), no file
        (b"train:\n  lr: \xff\n", None),  # was UnicodeDecodeError without the file
    ],
)
def test_config_beyond_the_parser_limits_is_named(
    tmp_path: Path, content: bytes, override: str | None
) -> None:
    from cluster.job.config import ConfigError, load_config

    (tmp_path / "job.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match=r"job\.yaml: not valid YAML"):
        load_config(str(tmp_path / "job.yaml"))
    if override is not None:
        with pytest.raises(ConfigError, match=r"override 'train\.lr=.*': value is not valid YAML"):
            load_config(None, [f"train.lr={override}"])


def test_yaml_alias_bomb_is_one_short_line(tmp_path: Path) -> None:
    """A 395-byte file of 7 alias levels (x9 each: 4.8 M values) made a 35 MB error line; a value containing
    itself, and the same bomb as an override, are refused the same way."""
    from cluster.job.config import ConfigError, load_config

    levels = ['&a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdef", "bcdefg"):
        levels.append(f"&{name} [{','.join([f'*{prev}'] * 9)}]")
    (tmp_path / "bomb.yaml").write_text(
        "".join(f"{name}: {level}\n" for name, level in zip("abcdefg", levels)) + "train: {lr: *g}\n"
    )
    assert (tmp_path / "bomb.yaml").stat().st_size < 400
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "bomb.yaml"))
    assert "aliases expand the document past 100000 values" in str(info.value)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)
    (tmp_path / "loop.yaml").write_text("train: &t {lr: *t}\n")
    with pytest.raises(
        ConfigError, match=r"loop\.yaml: not valid YAML \(a value contains itself through an alias"
    ):
        load_config(str(tmp_path / "loop.yaml"))
    with pytest.raises(
        ConfigError, match=r"override 'train\.lr=.*': value is not valid YAML \(aliases expand"
    ):
        load_config(None, [f"train.lr=[{', '.join(levels)}]"])


def test_config_error_quotes_a_value_in_a_few_characters(tmp_path: Path) -> None:
    from cluster.job.config import ConfigError, load_config

    (tmp_path / "job.yaml").write_text("train:\n  lr: [" + ", ".join(["12345"] * 20_000) + "]\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "job.yaml"))
    (line,) = [ln for ln in str(info.value).splitlines() if "'train.lr'" in ln]
    assert (
        line.startswith("  'train.lr': Input should be a valid number (got [12345, 12345,")
        and len(line) < 160
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.inf", r"'train\.lr': Input should be a finite number"),
        ("model.avm.phi_init=.nan", r"'model\.avm\.phi_init': Input should be a finite number"),
        ("train.lr=1.0e+300", r"'train\.lr': Value error, must be finite in float32"),
        ("train.weight_decay=.inf", r"'train\.weight_decay': Input should be a finite number"),
        ("train.seed=100000000000000000000000", r"'train\.seed': Input should be less than 4294967296"),
        ("train.seed=-1", r"'train\.seed': Input should be greater than or equal to 0"),
    ],
)
def test_config_numbers_must_be_finite_in_float32_and_seeds_in_range(override: str, message: str) -> None:
    """`train.lr=.inf` and `model.avm.phi_init=.nan` were accepted; `train.seed=1e23` overflowed in the workers."""
    from cluster.job.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
