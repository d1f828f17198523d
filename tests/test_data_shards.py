"""Shard writing: layout, checksums, sanitised keys, fsspec outputs, re-runs, crashes and a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from data_pipeline.errors import DataError
from data_pipeline.sample import sample_key
from data_pipeline.shards import read_dataset_info, read_manifest, read_shard_table, shard_urls, write_dataset
from data_pipeline.synthetic import generate
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup


def _write(url: str, groups: list[VideoGroup], **kw) -> dict:
    return write_dataset(groups, url, dataset="synthetic", split="train", progress=False, **kw)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_layout_counts_and_checksums(tmp_path: Path, scheme: str) -> None:
    url = f"file://{tmp_path}/ds" if scheme == "file" else "memory://shards-test/layout"
    groups = generate(30, seed=0, feature_dim=16)
    info = _write(url, groups, shard_size_mb=0.05)
    assert info == read_dataset_info(url)
    assert (info["feature_dim"], info["tokens_per_clip"]) == (16, 5)
    manifest, shards = read_manifest(url), read_shard_table(url)
    assert manifest.column_names == ["shard", "key", "video_id", "n_queries", "n_clips", "duration", "split"]
    assert manifest.column("video_id").to_pylist() == [g.video_id for g in groups]
    assert manifest.column("n_queries").to_pylist() == [g.num_queries for g in groups]
    assert manifest.column("n_clips").to_pylist() == [g.num_clips for g in groups]
    assert info["counts"]["videos"] == 30 and info["counts"]["queries"] == sum(g.num_queries for g in groups)
    assert shards.num_rows == info["counts"]["shards"] > 1
    assert sum(shards.column("n_videos").to_pylist()) == 30
    assert sum(shards.column("n_queries").to_pylist()) == info["counts"]["queries"]
    fs, _ = fsspec.core.url_to_fs(url)
    for shard_url, row in zip(shard_urls(url), shards.to_pylist()):
        data = fs.cat(fsspec.core.url_to_fs(shard_url)[1])
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["bytes"]
        with tarfile.open(fileobj=fsspec.open(shard_url, "rb").open()) as tar:
            names = tar.getnames()
        in_shard = [r for r in manifest.to_pylist() if r["shard"] == row["shard"]]
        assert names == [f"{r['key']}.{ext}" for r in in_shard for ext in ("json", "npy")]
    assert Vocab.load(f"{url}/vocab.json").encode("person opens the door")[0] != 1


def test_keys_are_sanitised_and_unique(tmp_path: Path) -> None:
    base = generate(3, seed=1, feature_dim=8)
    for g, vid in zip(base, ["s17-d69.avi", "s17-d69_avi", "a/../b c"]):
        g.video_id = vid
    url = str(tmp_path / "ds")
    _write(url, base)
    rows = read_manifest(url).to_pylist()
    assert [r["key"] for r in rows] == ["s17-d69_avi", "s17-d69_avi_2", "a____b_c"]
    assert [r["video_id"] for r in rows] == ["s17-d69.avi", "s17-d69_avi", "a/../b c"]
    assert sample_key("") == "_"


def test_rerun_refused_unless_overwrite(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    _write(url, generate(4, seed=0, feature_dim=8))
    with pytest.raises(DataError, match=r"output already holds .*dataset\.json.*pass --overwrite"):
        _write(url, generate(4, seed=0, feature_dim=8))
    info = _write(url, generate(6, seed=1, feature_dim=8), overwrite=True)
    assert info["counts"]["videos"] == 6 and read_manifest(url).num_rows == 6


def test_crash_mid_write_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    groups = generate(40, seed=0, feature_dim=32)
    seen: list[list[str]] = []

    def crashing() -> Iterator[VideoGroup]:
        for i, g in enumerate(groups):
            if i == 30:
                # State a hard kill (SIGKILL) at this moment would leave behind:
                seen.append(sorted(p.name for p in (tmp_path / "ds" / "shards").iterdir()))
                raise RuntimeError("killed")
            yield g

    with pytest.raises(RuntimeError, match="killed"):
        _write(url, crashing(), shard_size_mb=0.1)
    committed = [n for n in seen[0] if n.startswith("shard-")]
    assert committed and all(n.endswith(".tar") for n in committed)
    assert [n for n in seen[0] if not n.startswith("shard-")] == [f".shard-{len(committed):06d}.tar.partial"]
    assert not (tmp_path / "ds" / "shards").exists() and not (tmp_path / "ds" / "dataset.json").exists()
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        read_dataset_info(url)


class _FullDisk(MemoryFileSystem):
    """An in-memory filesystem whose files fail with ENOSPC past a byte quota, like a full disk."""

    protocol = "fulldisk"
    store: dict = {}
    pseudo_dirs = [""]
    quota = 150_000

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "w" in mode:
            write = f.write

            def limited(data: bytes) -> int:
                if f.tell() + len(data) > self.quota:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return write(data)

            f.write = limited
        return f


def test_disk_full_is_a_clear_error_and_commits_nothing() -> None:
    fsspec.register_implementation("fulldisk", _FullDisk, clobber=True)
    with pytest.raises(
        DataError, match=r"fulldisk://out: writing shards failed .*No space left.*nothing was committed"
    ):
        _write("fulldisk://out", generate(20, seed=0, feature_dim=64), shard_size_mb=1)
    fs = _FullDisk()
    assert not fs.exists("/out/shards") and not fs.exists("/out/dataset.json")


def test_empty_input_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no valid video groups"):
        _write(str(tmp_path / "ds"), [])
    assert not (tmp_path / "ds" / "shards").exists()
    with pytest.raises(ValueError, match="shard size must be > 0"):
        _write(str(tmp_path / "ds"), generate(1, 0), shard_size_mb=0)


def test_shard_paths_cannot_leave_the_dataset(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = str(tmp_path / "ds")
    _write(url, generate(3, seed=0, feature_dim=8))
    shards, manifest = read_shard_table(url), read_manifest(url)
    for evil in ["../outside.tar", "/etc/passwd", "shards/../../x.tar", "s3://bucket/shard-000000.tar"]:
        table = shards.set_column(0, "shard", pa.array([evil]))
        pq.write_table(table, tmp_path / "ds" / "shards.parquet")
        with pytest.raises(DataError, match=r"shards\.parquet: shard path .* is not of the form"):
            shard_urls(url)
        table = manifest.set_column(0, "shard", pa.array([evil] * 3))
        pq.write_table(table, tmp_path / "ds" / "manifest.parquet")
        with pytest.raises(DataError, match=r"manifest\.parquet: shard path .* is not of the form"):
            read_manifest(url)
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="expected format 'mktn-dataset-v1'"):
        read_dataset_info(url)
