"""cluster.storage against a real S3 server on loopback (moto) and the local disk."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import boto3
import fsspec
import pyarrow.fs
import pytest
from fsspec.implementations.local import LocalFileSystem
from s3fs import S3FileSystem

from cluster.storage import filesystem_for, is_local, pyarrow_filesystem, write_bytes_atomic

pytest_plugins = ["tests.s3_server"]  # the s3_server / s3_bucket fixtures


def _object(bucket_url: str, key: str) -> bytes:
    """Read an object straight from the server with boto3, bypassing fsspec and its caches."""
    return boto3.client("s3").get_object(Bucket=bucket_url.removeprefix("s3://"), Key=key)["Body"].read()


def test_filesystem_for_s3_uses_aws_environment(s3_bucket):
    fs, path = filesystem_for(f"{s3_bucket}/data/x.txt")
    assert isinstance(fs, S3FileSystem)
    assert path == f"{s3_bucket.removeprefix('s3://')}/data/x.txt"
    with fsspec.open(f"{s3_bucket}/data/x.txt", "w") as f:
        f.write("hello")
    assert _object(s3_bucket, "data/x.txt") == b"hello"
    assert fs.cat_file(path) == b"hello"


def test_filesystem_for_explicit_options_override_environment(s3_bucket, monkeypatch):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    fs, path = filesystem_for(f"{s3_bucket}/k", endpoint_url=endpoint)
    fs.pipe_file(path, b"via option")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert _object(s3_bucket, "k") == b"via option"


def test_filesystem_for_local_and_unknown_protocol(tmp_path):
    fs, path = filesystem_for(str(tmp_path / "a"))
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path / "a")
    assert is_local(str(tmp_path)) and is_local(f"file://{tmp_path}") and is_local("runs/train")
    assert not any(
        is_local(u) for u in ("s3://bucket/x", "gs://bucket/x", "memory://x", "simplecache::s3://b/x")
    )
    with pytest.raises(ValueError, match="nosuchproto"):
        filesystem_for("nosuchproto://bucket/x")


def test_pyarrow_filesystem_s3_round_trip_and_pickles_to_another_process(s3_bucket):
    fs, path = pyarrow_filesystem(f"{s3_bucket}/ray")
    assert isinstance(fs, pyarrow.fs.PyFileSystem) and path == f"{s3_bucket.removeprefix('s3://')}/ray"
    fs.create_dir(f"{path}/exp")
    with fs.open_output_stream(f"{path}/exp/marker.json") as out:
        out.write(b'{"ok": true}')
    assert _object(s3_bucket, "ray/exp/marker.json") == b'{"ok": true}'
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    assert [i.path for i in infos if i.type == pyarrow.fs.FileType.File] == [f"{path}/exp/marker.json"]

    # What Ray ships to workers on other nodes: the pickled filesystem, credentials resolved there from env.
    blob = pickle.dumps(fs)
    assert b"testing" not in blob  # the access key stays out of the pickle
    code = (
        "import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read());"
        f"sys.stdout.buffer.write(fs.open_input_stream('{path}/exp/marker.json').read())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, check=True, timeout=60
    )
    assert out.stdout == b'{"ok": true}'


def test_pyarrow_filesystem_local_is_native_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = pyarrow_filesystem("runs/x")
    assert isinstance(fs, pyarrow.fs.LocalFileSystem) and path == str(tmp_path / "runs" / "x")


def test_write_bytes_atomic_local_replaces_without_leftovers(tmp_path):
    target = tmp_path / "sub" / "model.safetensors"
    write_bytes_atomic(str(target), b"v1")
    write_bytes_atomic(f"file://{target}", b"v2")
    assert target.read_bytes() == b"v2"
    assert os.listdir(target.parent) == ["model.safetensors"]


def test_write_bytes_atomic_failure_keeps_old_file(tmp_path):
    target = tmp_path / "latest.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["latest.json"]


def test_write_bytes_atomic_s3(s3_bucket):
    write_bytes_atomic(f"{s3_bucket}/run/latest.json", b"{}")
    assert _object(s3_bucket, "run/latest.json") == b"{}"


def test_train_refuses_an_object_store_run_folder(capsys):
    from cluster.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml")
    assert main(["train", config, "--output", "s3://bucket/runs/r1"]) == 2
    err = capsys.readouterr().err
    assert "--output s3://bucket/runs/r1" in err and "cluster.storage_path=s3://" in err
    assert not Path("s3:").exists()
