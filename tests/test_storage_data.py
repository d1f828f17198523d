"""The data path on an object store: `mktn prepare` writes to s3:// and training's readers read it back, with
the same manifest and batches as on a local disk (loopback S3 server)."""

from __future__ import annotations

from cluster.job.storage import filesystem_for
from cluster.train.assign import read_dataset_shards
from data_pipeline.config import DataConfig
from data_pipeline.loader import iter_batches
from data_pipeline.prepare import prepare_synthetic
from data_pipeline.shards import read_dataset_info, read_manifest
from data_pipeline.text import Vocab

pytest_plugins = ["tests.s3_server"]  # the s3_server / s3_bucket fixtures


def _queries_per_batch(url: str) -> list[list[str]]:
    shards = read_dataset_shards(url)
    vocab = Vocab.load(f"{url}/vocab.json")
    batches = iter_batches([s.url for s in shards.shards], vocab, DataConfig(max_clips=8), seed=3, epoch=1)
    return [b.query_ids for b in batches]


def test_prepared_dataset_on_s3_matches_local_and_reads_back(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = {"videos": 12, "val_videos": 4, "shard_size_mb": 0.1, "progress": False}
    prepare_synthetic(f"{s3_bucket}/data", **options)
    prepare_synthetic(str(tmp_path / "local"), **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"], "prepare to s3:// wrote to the local disk"

    fs, root = filesystem_for(f"{s3_bucket}/data/train")
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(root)}
    assert names == {"shards", "manifest.parquet", "shards.parquet", "dataset.json", "vocab.json"}
    remote, local = f"{s3_bucket}/data/train", str(tmp_path / "local" / "train")
    columns = [
        "video_id",
        "key",
        "n_queries",
        "n_clips",
        "duration",
    ]  # shard bytes differ: tar headers hold mtimes
    assert read_manifest(remote).select(columns).equals(read_manifest(local).select(columns))
    assert read_dataset_info(remote)["counts"] == read_dataset_info(local)["counts"]
    assert _queries_per_batch(remote) == _queries_per_batch(local)
