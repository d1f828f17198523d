"""Nothing unsafe is loaded: a malicious pickle planted in every place the system reads data from is refused,
and the file its payload would create never appears. Plus a scan of the source tree for unsafe loaders.

The payload is an object whose `__reduce__` makes unpickling call `open(marker, "w")`: if anything in
the code path unpickled it, the marker file would exist afterwards.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import socket
import tarfile
import tracemalloc
import uuid
from pathlib import Path

import fsspec
import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from cluster.cli import main
from cluster.job.config import ConfigError, load_config
from data_pipeline.build import BuildOptions
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.features import HDF5File, NpyDirectory, check_features
from data_pipeline.loader import iter_batches
from data_pipeline.prepare import prepare_annotations
from data_pipeline.sample import encode_sample
from data_pipeline.shards import read_dataset_info, read_manifest, read_shard_table, shard_urls, write_dataset
from data_pipeline.synthetic import generate
from data_pipeline.text import Vocab

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates `marker` (as an attacker's code would run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path: Path):
    """The file the payload would create; every test ends by checking it was never created."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a planted pickle was executed"


def _pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def _object_npy(marker: Path) -> bytes:
    """A `.npy` holding an object array whose element is the payload (what np.save(allow_pickle=True) writes)."""
    buf = io.BytesIO()
    np.save(buf, np.array([_Payload(marker), 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    """Control: plain pickle and np.load(allow_pickle=True) do execute it, so the tests below mean something."""
    first, second = tmp_path / "a", tmp_path / "b"
    pickle.loads(_pickle(first))
    np.load(io.BytesIO(_object_npy(second)), allow_pickle=True)
    assert first.exists() and second.exists()


# ---- feature files ---------------------------------------------------------------------------------


def test_feature_npy_with_pickle_is_refused(tmp_path: Path, marker: Path) -> None:
    feats = tmp_path / "feats"
    feats.mkdir()
    (feats / "obj.npy").write_bytes(_object_npy(marker))
    (feats / "raw.npy").write_bytes(_pickle(marker))
    store = NpyDirectory(str(feats))
    with pytest.raises(DataError, match=r"obj\.npy: refusing a pickled/object \.npy"):
        store.load("obj")
    with pytest.raises(DataError, match=r"raw\.npy: refusing a pickled/object \.npy"):
        store.load("raw")


def test_prepare_refuses_a_pickled_feature_file(tmp_path: Path, marker: Path) -> None:
    """Through the whole `mktn prepare` path: annotations fine, the video's features a pickle."""
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"video_id": "v1", "duration": 9, "start": 1, "end": 2, "sentence": "a dog"}))
    (tmp_path / "feats").mkdir()
    (tmp_path / "feats" / "v1.npy").write_bytes(_object_npy(marker))
    with pytest.raises(DataError, match=r"v1\.npy: refusing a pickled/object \.npy"):
        prepare_annotations(
            "generic",
            str(ann),
            str(tmp_path / "feats"),
            str(tmp_path / "out"),
            options=BuildOptions("generic"),
            progress=False,
        )
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_hdf5_feature_holding_a_pickle_is_refused(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        f["opaque"] = np.void(_pickle(marker))
        f["bytes"] = np.frombuffer(_pickle(marker), dtype=np.uint8).reshape(1, -1)
    store = HDF5File(str(path))
    try:
        with pytest.raises(DataError, match=r"features have dtype \|V\d+, expected a float array"):
            check_features(store.load("opaque"), "opaque")
        with pytest.raises(DataError, match=r"features have dtype uint8, expected a float array"):
            check_features(store.load("bytes"), "bytes")
    finally:
        store.close()


# ---- features whose bytes live elsewhere (issue 17) -------------------------------------------------


def _generic(path: Path, videos: list[str]) -> str:
    rows = [{"video_id": v, "duration": 9, "start": 1, "end": 2, "sentence": "a dog runs"} for v in videos]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_hdf5_external_storage_never_reaches_a_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dataset stored in another file (`external=[("/proc/self/environ", 0, n)]`) passed `mktn prepare`, and
    the other file's bytes (the environment, a token in it) went into the shards. Now it is refused naming the
    key and the file; under --on-error skip the video is dropped and counted, and no shard holds the bytes."""
    secret = tmp_path / "environ"
    secret.write_bytes(b"TOKEN=s3cr3t;" * 10 + b"\0" * 2)  # 132 bytes: enough for a (4, 8) float32 array
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v1", shape=(4, 8), dtype="f4", external=[(str(secret), 0, 128)])
        f.create_dataset("env", shape=(16,), dtype="u1", external=[("/proc/self/environ", 0, 16)])
        f["v2"] = np.ones((4, 8), np.float32)
    store = HDF5File(str(path))
    try:
        with pytest.raises(
            DataError, match=r"HDF5 key 'env' is stored in other files \['/proc/self/environ'\]"
        ):
            store.load("env")
    finally:
        store.close()
    args = ["prepare", "generic", "--annotations", _generic(tmp_path / "ann.jsonl", ["v1", "v2"])]
    args += ["--features", str(path), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(
        f"{path}: HDF5 key 'v1' is stored in other files ['{secret}'] (external storage); refused"
    )
    assert main([*args, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    info = read_dataset_info(str(tmp_path / "b"))
    assert info["counts"]["videos"] == 1 and "external storage" in info["validation"]["skipped"][0]
    assert not any(b"s3cr3t" in p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file())


def test_hdf5_declaring_petabytes_is_refused_before_reading(tmp_path: Path) -> None:
    """A 2 KB file whose dataset declares (10**12, 1024) float32: a MemoryError traceback before; now the
    declared size is checked against the per-video bound (1 GiB by default, `max_bytes`) first."""
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("huge", shape=(10**12, 1024), dtype="f4", chunks=(1024, 1024))
        f["small"] = np.ones((64, 16), np.float32)  # 4 KiB
    assert path.stat().st_size < 10_000
    store = HDF5File(str(path))
    try:
        with pytest.raises(
            DataError,
            match=r"feats\.h5: HDF5 key 'huge' declares shape \(1000000000000, 1024\) float32, 4096000000000000 "
            r"bytes: over the limit of 1073741824 bytes per video",
        ):
            store.load("huge")
        assert store.load("small").shape == (64, 16)
    finally:
        store.close()
    small = HDF5File(str(path), max_bytes=1024)
    try:
        with pytest.raises(DataError, match=r"'small' declares .* 4096 bytes: over the limit of 1024 bytes"):
            small.load("small")
    finally:
        small.close()


@pytest.mark.timeout(60)  # a FIFO used to block the read forever
def test_feature_entries_that_are_not_regular_files_are_refused(tmp_path: Path) -> None:
    """A link to /dev/zero ended in a MemoryError (or ate all memory), a FIFO blocked: every entry that is
    not a regular file is refused naming it, links to devices included."""
    feats = tmp_path / "feats"
    feats.mkdir()
    (feats / "zero.npy").symlink_to("/dev/zero")
    os.mkfifo(feats / "fifo.npy")
    (feats / "dir.npy").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(feats / "sock.npy"))
        store = NpyDirectory(str(feats), follow_links=True)
        for video, kind in [("zero", "a character device"), ("fifo", "a FIFO"), ("dir", "a directory")]:
            with pytest.raises(
                DataError, match=rf"feats/{video}\.npy: not a regular file \({kind}\); refused"
            ):
                store.load(video)
        with pytest.raises(DataError, match=r"feats/sock\.npy: cannot be opened"):
            store.load("sock")
    with pytest.raises(DataError, match=r"zero\.npy: a link to /dev/zero, outside the feature directory"):
        NpyDirectory(str(feats)).load("zero")


def test_links_leaving_the_feature_directory_need_follow_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shared feature store linked in is read only with --follow-links; links inside the folder always."""
    store, feats = tmp_path / "store", tmp_path / "feats"
    store.mkdir()
    feats.mkdir()
    for video in ("v1", "v2", "v3"):
        np.save((store if video != "v3" else feats) / f"{video}.npy", np.ones((4, 8), np.float32))
    (feats / "v1.npy").symlink_to("../store/v1.npy")
    (feats / "v2.npy").symlink_to(store / "v2.npy")
    (feats / "v4.npy").symlink_to("v3.npy")
    assert NpyDirectory(str(feats)).load("v4").shape == (4, 8)
    args = ["prepare", "generic", "--annotations", _generic(tmp_path / "ann.jsonl", ["v1", "v2", "v3", "v4"])]
    args += ["--features", str(feats), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"feats/v1.npy: a link to {store}/v1.npy, outside the feature directory; refused" in line
    assert "--follow-links" in line
    assert main([*args, "--out", str(tmp_path / "b"), "--follow-links"]) == 0
    assert read_dataset_info(str(tmp_path / "b"))["counts"]["videos"] == 4


class _NoReadMemory(MemoryFileSystem):
    """The in-memory object store, failing any attempt to open a file: sizes must come from `info` first."""

    def _open(self, path: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"{path} was opened")


def test_feature_size_is_bounded_before_reading_on_object_stores() -> None:
    """On an object store there are no links or devices, but the size still comes from `info` before a read."""
    root = f"memory://feats-{uuid.uuid4().hex}"
    with fsspec.open(f"{root}/v1.npy", "wb") as f:
        np.save(f, np.ones((1024, 64), np.float32))  # 256 KiB + a 128-byte header
    assert NpyDirectory(root).load("v1").shape == (1024, 64)
    store = NpyDirectory(root, max_bytes=1024)
    store.fs = _NoReadMemory()
    with pytest.raises(DataError, match=r"v1\.npy: 262272 bytes, over the limit of 66560 bytes per video"):
        store.load("v1")


# ---- shards: the attacker controls the whole dataset, checksums included ---------------------------


def _resign(url: str) -> None:
    """Recompute shards.parquet's sha256/bytes so a tampered shard passes the checksum (a forged dataset)."""
    table = read_shard_table(url)
    rows = table.to_pylist()
    for row in rows:
        data = Path(url, row["shard"]).read_bytes()
        row["sha256"], row["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), Path(url, "shards.parquet"))


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            lambda good, m: {"vid.json": good["json"], "vid.npy": _object_npy(m)},
            r"refusing a pickled/object \.npy",
        ),
        (
            lambda good, m: {"vid.json": good["json"], "vid.npy": _pickle(m)},
            r"refusing a pickled/object \.npy",
        ),
        (
            lambda good, m: {"vid.json": good["json"], "vid.npy": good["npy"], "vid.pyd": _pickle(m)},
            r"members \['json', 'npy', 'pyd'\], expected exactly",
        ),
        (
            lambda good, m: {"vid.json": good["json"], "vid.pickle": _pickle(m)},
            r"members \['json', 'pickle'\], expected exactly",
        ),
        (
            lambda good, m: {"vid.json": _pickle(m), "vid.npy": good["npy"]},
            r"JSON does not match the sample schema",
        ),
    ],
)
@pytest.mark.parametrize("workers", [0, 1])
def test_shard_member_with_pickle_is_refused(
    tmp_path: Path, marker: Path, members, message: str, workers: int
) -> None:
    url = str(tmp_path / "ds")
    write_dataset(
        generate(3, seed=0, feature_dim=8),
        url,
        dataset="s",
        split="train",
        shard_size_mb=0.001,
        progress=False,
    )
    good = encode_sample(generate(1, seed=5, feature_dim=8)[0], "vid")
    Path(shard_urls(url)[0]).write_bytes(_tar(members(good, marker)))
    _resign(url)
    cfg = DataConfig(max_clips=8, shuffle_buffer=0, loader_workers=workers, max_corrupt_samples=5)
    stream = iter_batches(shard_urls(url), Vocab.load(f"{url}/vocab.json"), cfg, shuffle=False)
    videos = [v for batch in stream for v in batch.video_ids]
    assert len(videos) == 2 and stream.corrupt_samples == 1
    assert re.search(message, stream.corrupt_messages[0])


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
@pytest.mark.parametrize("target", ["outside.npy", "../../outside.npy", "ABSOLUTE"])
def test_links_in_a_shard_are_never_followed(tmp_path: Path, kind: bytes, target: str) -> None:
    """A (re-signed) shard whose `.npy` member is a symlink or hard link to a file outside the dataset:
    the sample is skipped and counted, and the outside file's values never reach a batch."""
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full((6, 8), 7.0, np.float32))
    url = str(tmp_path / "ds")
    write_dataset(
        generate(3, seed=0, feature_dim=8),
        url,
        dataset="s",
        split="train",
        shard_size_mb=0.001,
        progress=False,
    )
    good = encode_sample(generate(1, seed=5, feature_dim=8)[0], "vid")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("vid.json")
        info.size = len(good["json"])
        tar.addfile(info, io.BytesIO(good["json"]))
        link = tarfile.TarInfo("vid.npy")
        link.type, link.linkname = kind, str(outside) if target == "ABSOLUTE" else target
        tar.addfile(link)
    Path(shard_urls(url)[0]).write_bytes(buf.getvalue())
    _resign(url)
    stream = iter_batches(
        shard_urls(url), Vocab.load(f"{url}/vocab.json"), DataConfig(max_clips=8), shuffle=False
    )
    batches = list(stream)
    assert sum(len(b.video_ids) for b in batches) == 2 and stream.corrupt_samples == 1
    assert "members ['json'], expected exactly ['json', 'npy']" in stream.corrupt_messages[0]
    assert not any((b.video_feats == 7.0).any() for b in batches)


class _Zeros(io.RawIOBase):
    """`head` followed by zeros up to `size` bytes, produced as read (never held whole)."""

    def __init__(self, head: bytes, size: int):
        self.head, self.size, self.pos = head, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        n = min(len(buffer), self.size - self.pos)
        chunk = (self.head[self.pos : self.pos + n] + bytes(n))[:n]
        buffer[:n] = chunk
        self.pos += n
        return n


def _one_video_per_shard(tmp_path: Path, feature_dim: int = 8) -> tuple[str, dict]:
    """A 3-video dataset, one video per shard; returns its URL and the manifest row of the first video."""
    url = str(tmp_path / "ds")
    groups = generate(3, seed=0, feature_dim=feature_dim)
    write_dataset(groups, url, dataset="s", split="train", shard_size_mb=0.001, progress=False)
    assert len(shard_urls(url)) == 3
    return url, read_manifest(url).to_pylist()[0]


def _batches(url: str, **cfg: object) -> tuple[list, object]:
    stream = iter_batches(
        shard_urls(url), Vocab.load(f"{url}/vocab.json"), DataConfig(max_clips=8, **cfg), shuffle=False
    )
    return list(stream), stream


def test_compressed_shard_cannot_inflate_a_member_into_memory(tmp_path: Path) -> None:
    """A re-signed shard, gzip-compressed, holding a 256 MiB `.npy` of zeros in ~260 KB (the attack: 4.5 MB
    holding 1 GB, 2.5 GB peak RSS). The member's declared size is over what the manifest allows that sample
    (n_clips x tokens x dim x 4 + a header), so it is counted as corrupt without being read."""
    url, row = _one_video_per_shard(tmp_path)
    with tarfile.open(Path(url, row["shard"])) as tar:
        doc = tar.extractfile(f"{row['key']}.json").read()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 23, 8)}
    )
    size = len(header.getvalue()) + (1 << 28)
    with tarfile.open(Path(url, row["shard"]), "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(f"{row['key']}.json")
        info.size = len(doc)
        tar.addfile(info, io.BytesIO(doc))
        info = tarfile.TarInfo(f"{row['key']}.npy")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(header.getvalue(), size)))
    assert Path(url, row["shard"]).stat().st_size < 2_000_000
    _resign(url)
    tracemalloc.start()
    try:
        batches, stream = _batches(url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(b.num_videos for b in batches) == 2 and stream.corrupt_samples == 1
    bound = row["n_clips"] * 5 * 8 * 4 + (1 << 16)
    assert re.search(
        rf"shard-000000\.tar \[{row['key']}\.npy\]: member declares {size} bytes, over its bound of {bound} "
        r"\(the manifest's size of that sample\); not read",
        stream.corrupt_messages[0],
    )
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_member_over_max_sample_mb_is_refused(tmp_path: Path) -> None:
    """A sample the manifest does not list gets the configurable cap, `data.max_sample_mb`."""
    url, _ = _one_video_per_shard(tmp_path)
    big = dataclasses.replace(
        generate(1, seed=5, feature_dim=8)[0], features=np.ones((2000, 5, 8), np.float32)
    )
    good = encode_sample(big, "vid")  # 320 KB of features; the others hold under 20 KB
    Path(shard_urls(url)[0]).write_bytes(_tar({"vid.json": good["json"], "vid.npy": good["npy"]}))
    _resign(url)
    assert sum(b.num_videos for b in _batches(url)[0]) == 3
    batches, stream = _batches(url, max_sample_mb=0.1)
    assert sum(b.num_videos for b in batches) == 2 and stream.corrupt_samples == 1
    assert (
        "[vid.npy]: member declares 320128 bytes, over its bound of 104857 (data.max_sample_mb); not read"
        in (stream.corrupt_messages[0])
    )


def test_sample_of_another_feature_shape_is_counted_naming_shard_and_video(tmp_path: Path) -> None:
    """A sample whose feature dim differs from its dataset's stopped the run in collate ("video groups
    disagree", naming neither shard nor video); it is a corrupt sample now, under max_corrupt_samples."""
    url, row = _one_video_per_shard(tmp_path)
    odd = generate(1, seed=5, feature_dim=16)[0]
    good = encode_sample(odd, row["key"])
    Path(url, row["shard"]).write_bytes(
        _tar({f"{row['key']}.json": good["json"], f"{row['key']}.npy": good["npy"]})
    )
    _resign(url)
    batches, stream = _batches(url, max_corrupt_samples=1)
    assert sum(b.num_videos for b in batches) == 2 and stream.corrupt_samples == 1
    assert (
        f"{Path(url, row['shard'])} [{row['key']}]: video {odd.video_id!r} has features of 5 tokens x 16 dims per "
        "clip; its dataset's are 5 x 8 (dataset.json)"
    ) in stream.corrupt_messages[0]
    with pytest.raises(
        DataError, match=rf"more than max_corrupt_samples=0; .*video {odd.video_id!r} has features"
    ):
        _batches(url, max_corrupt_samples=0)


def test_shard_times_infinite_in_float32_are_a_corrupt_sample(tmp_path: Path) -> None:
    """A duration of 1e308 s is finite in float64 (the JSON schema passed it) and inf in float32 (NaN loss)."""
    url, row = _one_video_per_shard(tmp_path)
    group = generate(1, seed=5, feature_dim=8)[0]
    sample = encode_sample(group, row["key"])
    doc = json.loads(sample["json"])
    doc["duration"] = 1e308
    members = {f"{row['key']}.json": json.dumps(doc).encode(), f"{row['key']}.npy": sample["npy"]}
    Path(url, row["shard"]).write_bytes(_tar(members))
    _resign(url)
    batches, stream = _batches(url)
    assert sum(b.num_videos for b in batches) == 2 and stream.corrupt_samples == 1
    assert (
        "duration 1e+308 seconds is outside the accepted range [0.001, 1e+06]" in stream.corrupt_messages[0]
    )
    assert all(torch.isfinite(b.durations).all() for b in batches)


@pytest.mark.parametrize("name", ["dataset.json", "vocab.json", "manifest.parquet", "shards.parquet"])
def test_dataset_metadata_replaced_by_a_pickle_is_refused(tmp_path: Path, marker: Path, name: str) -> None:
    url = str(tmp_path / "ds")
    write_dataset(generate(2, seed=0, feature_dim=8), url, dataset="s", split="train", progress=False)
    Path(url, name).write_bytes(_pickle(marker))
    readers = {
        "dataset.json": lambda: read_dataset_info(url),
        "vocab.json": lambda: Vocab.load(f"{url}/vocab.json"),
        "manifest.parquet": lambda: read_manifest(url),
        "shards.parquet": lambda: shard_urls(url),
    }
    with pytest.raises(ValueError, match=rf"{name}: .*(JSON|Parquet)"):
        readers[name]()


# ---- configs ----------------------------------------------------------------------------------------


def test_config_yaml_with_python_tags_is_refused(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(f'train: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, [f'train.lr=!!python/object/apply:builtins.open ["{marker}", "w"]'])


# ---- checkpoints -------------------------------------------------------------------------------------


def test_checkpoint_files_with_pickles_are_refused(tmp_path: Path, marker: Path) -> None:
    """DeepSpeed's own `torch.load(..., weights_only=False)` runs under `safe_torch_load`, which forces
    weights_only: a planted pickle in a checkpoint's `.pt` file fails instead of running."""
    checkpoint = pytest.importorskip("cluster.checkpoint", reason="training checkpoints not in this tree yet")
    import torch

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "evil": _Payload(marker)}, path)
    with checkpoint.safe_torch_load():
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            torch.load(path, weights_only=False)  # what DeepSpeed's TorchCheckpointEngine passes
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path)
    clean = tmp_path / "clean.pt"
    torch.save({"module": {"w": torch.ones(2)}}, clean)
    with checkpoint.safe_torch_load():
        assert torch.load(clean)["module"]["w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_export_of_a_planted_checkpoint_is_refused(tmp_path: Path, marker: Path, zero_stage: int) -> None:
    """Consolidating weights (ZeRO 0: the module file; ZeRO 1-3: DeepSpeed's zero_to_fp32 reading every rank's
    optimizer and model states) from a checkpoint folder whose `.pt` files are pickles."""
    export = pytest.importorskip("cluster.export", reason="model export not in this tree yet")
    import torch

    ds = tmp_path / "ckpt" / "ds"
    ds.mkdir(parents=True)
    state = {
        "format": "mktn-checkpoint-v1",
        "epochs_done": 1,
        "global_step": 4,
        "run_id": "r",
        "world_size": 1,
        "zero_stage": zero_stage,
        "metrics": {},
    }
    (tmp_path / "ckpt" / "mktn_state.json").write_text(json.dumps(state))
    (tmp_path / "ckpt" / "latest").write_text("ds")
    for name in ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]:
        torch.save({"module": {"w": torch.zeros(2)}, "evil": _Payload(marker)}, ds / name)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        export.consolidated_state_dict(str(tmp_path / "ckpt"))


# ---- exported models and the registry ----------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model saved by `mktn.export.save_model` (safetensors + JSON)."""
    export = pytest.importorskip("mktn.export", reason="model export not in this tree yet")
    from mktn.config import ModelConfig
    from mktn.model import build_model

    folder = tmp_path_factory.mktemp("export") / "model"
    export.save_model(
        build_model(ModelConfig(), Vocab.build(["a person opens a door"]), 8, 1, 8), str(folder)
    )
    return folder


def test_exported_model_folder_with_a_pickle_is_refused(exported: Path, tmp_path: Path, marker: Path) -> None:
    """Each file of an exported model replaced by a pickle in turn: loading never runs it, and a
    replaced weights or JSON file is refused. Pickles next to the real files (`model.pkl`,
    `pytorch_model.bin`) are never read."""
    from mktn.export import load_model

    files = sorted(p.relative_to(exported) for p in exported.rglob("*") if p.is_file())
    assert any(f.suffix == ".safetensors" for f in files) and not any(
        f.suffix in {".pt", ".pkl"} for f in files
    )
    for k, rel in enumerate(files):
        copy = Path(shutil.copytree(exported, tmp_path / f"copy{k}"))
        (copy / rel).write_bytes(_pickle(marker))
        if rel.suffix in {".safetensors", ".json"}:
            with pytest.raises(Exception):  # noqa: B017 - the property is "refused", whatever the library's error
                load_model(str(copy))
    extra = Path(shutil.copytree(exported, tmp_path / "extra"))
    for name in ["model.pkl", "pytorch_model.bin", "model.pt"]:
        (extra / name).write_bytes(_pickle(marker))
    load_model(str(extra))


@pytest.fixture
def registered(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The exported model registered in a throwaway SQLite MLflow registry; returns its `models:/` URI."""
    registry = pytest.importorskip("cluster.registry", reason="model registry not in this tree yet")
    monkeypatch.chdir(tmp_path)  # the default artifact root (./mlruns) lands in tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return registry.register(
        str(exported), name="mktn-security", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"
    ).uri


def _artifact(root: Path, pattern: str) -> Path:
    (found,) = [p for p in root.rglob(pattern) if "mlartifacts" in p.parts]
    return found


def test_registry_artifact_with_a_pickle_is_refused(registered: str, tmp_path: Path, marker: Path) -> None:
    """The registered version's safetensors replaced by a pickle in the artifact store: `mktn predict`'s
    loader refuses it without running it."""
    from cluster.serve.predictor import Predictor

    _artifact(tmp_path, "*.safetensors").write_bytes(_pickle(marker))
    with pytest.raises(Exception):  # noqa: B017 - the property is "refused", whatever the library's error
        Predictor.load(registered)


def test_registry_artifact_code_file_is_not_run(registered: str, tmp_path: Path) -> None:
    """A tampered artifact store replaces the stored entry file: predicting must not execute it."""
    from cluster.serve.predictor import Predictor

    ran = tmp_path / "CODE-RAN"
    entry = _artifact(tmp_path, "pyfunc_entry.py")
    entry.write_text(f"open({str(ran)!r}, 'w')\n" + entry.read_text())
    try:
        Predictor.load(registered)
    finally:
        assert not ran.exists(), "code from the registry artifact was executed"


# ---- the source tree ---------------------------------------------------------------------------------

_UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("pytorch", "load_model"),
    ("sklearn", "load_model"),
}


def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every call that could unpickle or run code from data."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, kwargs = node.func, {k.arg: k.value for k in node.keywords}
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        owner = func.value if isinstance(func, ast.Attribute) else None
        owner_name = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else ""
        )
        if (owner_name, name) in _UNSAFE_CALLS or (isinstance(func, ast.Name) and name in {"eval", "exec"}):
            found.append((node.lineno, f"{owner_name}.{name}".lstrip(".")))
        elif (owner_name, name) == ("torch", "load") and not _is_true(kwargs.get("weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif owner_name in {"np", "numpy"} and name == "load" and _is_true(kwargs.get("allow_pickle")):
            found.append((node.lineno, "np.load(allow_pickle=True)"))
        elif (owner_name, name) == ("yaml", "load") and not _is_safe_loader(kwargs.get("Loader")):
            found.append((node.lineno, "yaml.load without SafeLoader"))
    return found


def _is_true(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def _is_safe_loader(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Attribute) and value.attr in {"SafeLoader", "CSafeLoader"}


def test_scan_finds_the_unsafe_patterns() -> None:
    """The scanner itself: each unsafe form is flagged, the safe forms are not."""
    source = """
pickle.loads(b); torch.load(p); torch.load(p, weights_only=False); np.load(p, allow_pickle=True)
yaml.load(s); eval(s); mlflow.pytorch.load_model(u); cloudpickle.load(f)
torch.load(p, weights_only=True); np.load(p, allow_pickle=False); np.load(p); yaml.load(s, Loader=yaml.SafeLoader)
yaml.safe_load(s); model.eval(); json.loads(s)
"""
    found = [what for _, what in _unsafe_loads(ast.parse(source))]
    assert found == [
        "pickle.loads",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "np.load(allow_pickle=True)",
        "yaml.load without SafeLoader",
        "eval",
        "pytorch.load_model",
        "cloudpickle.load",
    ]


def test_no_unsafe_deserialisation_in_the_source_tree() -> None:
    """Every package and benchmark: no pickle/marshal/shelve loads, torch.load only with weights_only=True,
    np.load never with allow_pickle=True, YAML only through the safe loader, no pickle-based MLflow flavours."""
    folders = ("data_pipeline", "mktn", "cluster", "bench", "scripts")
    files = [REPO / "strict_config.py", *(p for d in folders for p in sorted((REPO / d).rglob("*.py")))]
    assert len(files) > 20
    problems = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in files
        for line, what in _unsafe_loads(ast.parse(path.read_text(), str(path)))
    ]
    assert problems == []
