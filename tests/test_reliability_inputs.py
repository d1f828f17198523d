"""Bad inputs that used to escape as a deep traceback (TypeError, OverflowError, MemoryError...) or to change
the data silently: each now raises `DataError` naming the file and line/key, or is refused outright.

The common cases (malformed lines, start >= end, missing features, tampered shards...) are in
tests/test_data_*.py; these are the ones an audit for issue 6 found uncovered.
"""

from __future__ import annotations

import errno
import io
import json
import zipfile
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.features import HDF5File, check_features, load_npy
from data_pipeline.readers import read_annotations, read_charades_durations
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
        with pytest.raises(DataError, match=r"feats\.h5: HDF5 key 'link' missing"):
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
