"""Loader round trips (real annotations -> shards -> batches) and every way a shard can be bad."""

from __future__ import annotations

import gc
import io
import itertools
import json
import os
import pickle
import re
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_pipeline.batch import budget_batches
from data_pipeline.build import BuildOptions
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.loader import Prefetch, check_batch_budget, iter_batches
from data_pipeline.prepare import prepare_annotations
from data_pipeline.sample import encode_sample
from data_pipeline.shards import read_manifest, shard_urls, write_dataset
from data_pipeline.synthetic import generate
from data_pipeline.text import Vocab
from tests.conftest import write_npy_features

CFG = DataConfig(max_clips=16, max_queries_per_batch=24, max_videos_per_batch=6, shuffle_buffer=64)


def _epoch(url: str, cfg: DataConfig = CFG, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> list:
    return list(iter_batches(shard_urls(url), Vocab.load(f"{url}/vocab.json"), cfg, seed, epoch, shuffle))


def _assert_exact_once(batches: list, url: str, cfg: DataConfig) -> None:
    """Every manifest query arrives once, with all of its video's queries in the same batch, within budgets."""
    manifest = {r["video_id"]: r for r in read_manifest(url).to_pylist()}
    videos = [v for b in batches for v in b.video_ids]
    assert sorted(videos) == sorted(manifest)
    for b in batches:
        assert b.num_queries <= cfg.max_queries_per_batch and b.num_videos <= cfg.max_videos_per_batch
        per_video = Counter(b.query_video.tolist())
        for i, vid in enumerate(b.video_ids):
            assert per_video[i] == manifest[vid]["n_queries"]
            assert b.num_clips[i] == min(manifest[vid]["n_clips"], cfg.max_clips)


@pytest.fixture(scope="module")
def charades_test(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """The real Charades-STA test split (1334 videos, 3720 queries) with stand-in features, prepared once."""
    root = tmp_path_factory.mktemp("charades")
    ids = {
        line.split()[0]
        for line in (shared_data / "charades_sta/charades_sta_test.txt").read_text().splitlines()
    }
    write_npy_features(root / "feats", sorted(ids), dim=8, tokens=2)
    url = f"file://{root}/ds"
    info = prepare_annotations(
        "charades-sta",
        str(shared_data / "charades_sta/charades_sta_test.txt"),
        str(root / "feats"),
        url,
        options=BuildOptions("charades-sta", split="test"),
        durations=[str(shared_data / "charades_sta/charades.json")],
        shard_size_mb=0.5,
        progress=False,
    )
    return url, info


def test_round_trip_real_charades(charades_test: tuple[str, dict], shared_data: Path) -> None:
    url, info = charades_test
    assert (
        info["counts"]["videos"] == 1334
        and info["counts"]["queries"] == 3720
        and info["counts"]["shards"] > 2
    )
    assert info["validation"]["clamped_ends"] == 562 and info["validation"]["skipped"] == []
    durations = json.loads((shared_data / "charades_sta/charades.json").read_text())
    expected: dict[tuple[str, str], tuple[float, float]] = {}
    counts: Counter = Counter()
    for line in (shared_data / "charades_sta/charades_sta_test.txt").read_text().splitlines():
        head, sentence = line.split("##", 1)
        vid, start, end = head.split()
        key = (f"{vid}#{counts[vid]}", sentence.strip())
        counts[vid] += 1
        expected[key] = (float(start), min(float(end), durations[vid]["duration"]))
    batches = _epoch(url)
    _assert_exact_once(batches, url, CFG)
    got = {
        (qid, s): tuple(t) for b in batches for qid, s, t in zip(b.query_ids, b.sentences, b.times.tolist())
    }
    assert len(got) == sum(b.num_queries for b in batches) == 3720
    assert got.keys() == expected.keys()
    assert all(np.allclose(got[k], expected[k], atol=1e-5) for k in expected)


def test_shuffle_is_seeded_per_epoch(charades_test: tuple[str, dict]) -> None:
    url, _ = charades_test
    small = CFG.model_copy(update={"max_queries_per_batch": 64, "max_videos_per_batch": 32})
    order = [v for b in _epoch(url, small, seed=1, epoch=0) for v in b.video_ids]
    assert order == [v for b in _epoch(url, small, seed=1, epoch=0) for v in b.video_ids]
    assert order != [v for b in _epoch(url, small, seed=1, epoch=1) for v in b.video_ids]
    plain = [v for b in _epoch(url, small, shuffle=False) for v in b.video_ids]
    assert plain == read_manifest(url).column("video_id").to_pylist()


def test_loader_workers(charades_test: tuple[str, dict]) -> None:
    url, _ = charades_test
    cfg = CFG.model_copy(update={"loader_workers": 2})
    batches = _epoch(url, cfg)
    _assert_exact_once(batches, url, cfg)


def test_round_trip_tacos_hdf5_memory(shared_data: Path, tmp_path: Path) -> None:
    """TACoS val (4436 queries in 27 videos, duplicates kept on request) from HDF5 features into memory://."""
    vids = json.loads((shared_data / "tacos/val.json").read_text())
    with h5py.File(tmp_path / "feats.h5", "w") as f:
        for vid in vids:
            f[vid.removesuffix(".avi")] = np.random.default_rng(0).random((20, 8), dtype=np.float32)
    url = "memory://loader-test/tacos"
    info = prepare_annotations(
        "tacos",
        str(shared_data / "tacos/val.json"),
        str(tmp_path / "feats.h5"),
        url,
        options=BuildOptions("tacos", split="val", allow_duplicates=True),
        overwrite=True,
        progress=False,
    )
    assert (info["counts"]["videos"], info["counts"]["queries"]) == (27, 4436)
    most = max(read_manifest(url).column("n_queries").to_pylist())
    with pytest.raises(ValueError, match=rf"has {most} queries but data.max_queries_per_batch=24"):
        check_batch_budget(url, CFG)
    with pytest.raises(
        DataError, match=r"video 's\d+-d\d+' has \d+ queries, more than max_queries_per_batch=24"
    ):
        _epoch(url)
    cfg = CFG.model_copy(update={"max_queries_per_batch": most})
    _assert_exact_once(_epoch(url, cfg), url, cfg)


def test_budget_batches_never_split_groups() -> None:
    groups = generate(60, seed=2, feature_dim=4)
    batches = list(budget_batches(groups, max_queries=7, max_videos=3))
    assert [g for b in batches for g in b] == groups
    assert all(sum(g.num_queries for g in b) <= 7 and len(b) <= 3 for b in batches)
    # greedy: the next group would have broken a budget
    for b, nxt in zip(batches, batches[1:]):
        assert sum(g.num_queries for g in b) + nxt[0].num_queries > 7 or len(b) == 3


def test_budget_batches_oversized_group_refused_or_alone() -> None:
    groups = generate(30, seed=2, feature_dim=4)
    big = max(groups, key=lambda g: g.num_queries)
    limit = big.num_queries - 1
    with pytest.raises(DataError, match=rf"video '{big.video_id}' has {big.num_queries} queries, more than "):
        list(budget_batches(groups, max_queries=limit, max_videos=4))
    batches = list(budget_batches(groups, max_queries=limit, max_videos=4, oversized="alone"))
    assert [g for b in batches for g in b] == groups
    assert [big] in batches
    assert all(sum(g.num_queries for g in b) <= limit for b in batches if b != [big])
    with pytest.raises(ValueError, match="oversized='split'"):
        list(budget_batches(groups, 5, 4, oversized="split"))


def test_prefetch_keeps_order_and_raises_in_place(small: str) -> None:
    inline = _epoch(small, CFG.model_copy(update={"prefetch_batches": 0}), seed=3)
    ahead = _epoch(small, CFG.model_copy(update={"prefetch_batches": 3}), seed=3)
    assert [b.query_ids for b in ahead] == [b.query_ids for b in inline] and len(inline) > 1
    assert all(torch.equal(a.video_feats, b.video_feats) for a, b in zip(ahead, inline))

    def failing():
        yield from (1, 2)
        raise ValueError("bad batch 3")

    stream = Prefetch(failing(), depth=2)
    assert [next(stream), next(stream)] == [1, 2]
    with pytest.raises(ValueError, match="bad batch 3"):
        next(stream)
    with pytest.raises(StopIteration):
        next(stream)


def test_an_abandoned_prefetch_thread_stops() -> None:
    before = threading.active_count()
    stream = Prefetch(itertools.count(), depth=2)
    assert next(stream) == 0
    del stream
    gc.collect()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


# ---- bad shards ----------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> str:
    url = str(tmp_path / "ds")
    write_dataset(
        generate(12, seed=0, feature_dim=8),
        url,
        dataset="s",
        split="train",
        shard_size_mb=0.02,
        progress=False,
    )
    return url


def _shard(url: str, k: int = 0) -> Path:
    return Path(shard_urls(url)[k])


def test_tampered_shard_is_detected(small: str) -> None:
    path = _shard(small, 1)
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard-000001\.tar: sha256 .* does not match shards\.parquet"):
        _epoch(small)


def test_missing_shard(small: str) -> None:
    _shard(small, 0).unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-000000\.tar: shard is listed but absent"):
        _epoch(small)


def test_truncated_tar_is_skipped_and_counted(small: str) -> None:
    path = _shard(small, 0)
    path.write_bytes(path.read_bytes()[:3000])
    cfg = CFG.model_copy(update={"verify_checksums": False})
    stream = iter_batches(shard_urls(small), Vocab.load(f"{small}/vocab.json"), cfg, shuffle=False)
    videos = [v for b in stream for v in b.video_ids]
    assert stream.corrupt_samples >= 1 and "shard-000000.tar" in " ".join(stream.corrupt_messages)
    rest = read_manifest(small).to_pylist()
    assert set(videos) >= {r["video_id"] for r in rest if r["shard"] != "shards/shard-000000.tar"}
    assert len(videos) < len(rest)
    with pytest.raises(DataError, match=r"sha256 .* does not match"):
        _epoch(small)


def _forge(url: str, members: list[tuple[str, bytes | None]]) -> list[str]:
    """Replace shard 0 by a hand-made tar (None = a symlink member), checksums off for the test."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    _shard(url, 0).write_bytes(buf.getvalue())
    return shard_urls(url)[:1]


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _good(key: str = "vid") -> dict:
    return encode_sample(generate(1, seed=9, feature_dim=8)[0], key)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            lambda g: [("vid.npy", g["npy"]), ("vid.json", g["json"]), ("vid.txt", b"x")],
            r"members \['json', 'npy', 'txt'\]",
        ),
        (
            lambda g: [("vid.npy", g["npy"]), ("vid.pickle", g["json"])],
            r"members \['npy', 'pickle'\], expected exactly",
        ),
        (
            lambda g: [("vid.npy", g["npy"]), ("vid.json", b'{"format": "mktn-video-v1"}')],
            r"JSON does not match the sample schema",
        ),
        (
            lambda g: [("vid.npy", g["npy"]), ("vid.json", g["json"].replace(b'"start": ', b'"start": -'))],
            r"must satisfy 0 <= start < end <= duration .* in float32",
        ),
        (
            lambda g: [("vid.npy", pickle.dumps(_Boom())), ("vid.json", g["json"])],
            r"refusing a pickled/object \.npy",
        ),
        (lambda g: [("../evil.npy", g["npy"]), ("../evil.json", g["json"])], r"sample key must match"),
        (lambda g: [("/abs/evil.npy", g["npy"]), ("/abs/evil.json", g["json"])], r"sample key must match"),
        (lambda g: [("vid.npy", None), ("vid.json", g["json"])], r"members \['json'\], expected exactly"),
    ],
)
def test_bad_samples_are_skipped_counted_and_never_executed(
    small: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    urls = _forge(small, members(_good()))
    cfg = CFG.model_copy(update={"verify_checksums": False, "max_corrupt_samples": 3})
    stream = iter_batches(urls, Vocab.load(f"{small}/vocab.json"), cfg)
    assert list(stream) == []
    assert stream.corrupt_samples == 1 and re.search(message, stream.corrupt_messages[0])
    assert not (tmp_path / "PWNED").exists() and not (tmp_path.parent / "evil.json").exists()


def test_corrupt_limit_stops_the_run(small: str) -> None:
    bad = [(f"v{i}.npy", b"junk") for i in range(3)] + [(f"v{i}.json", b"{}") for i in range(3)]
    urls = _forge(small, sorted(bad))
    cfg = CFG.model_copy(update={"verify_checksums": False, "max_corrupt_samples": 2})
    with pytest.raises(DataError, match=r"3 corrupt samples, more than max_corrupt_samples=2"):
        list(iter_batches(urls, Vocab.load(f"{small}/vocab.json"), cfg))
