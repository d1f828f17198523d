"""cluster.job.storage against a real S3 server on loopback (moto) and the local disk."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import boto3
import fsspec
import pyarrow.fs
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from s3fs import S3FileSystem

from cluster.job.storage import (
    canonical_url,
    download_folder,
    exists,
    filesystem_for,
    is_local,
    join,
    pyarrow_filesystem,
    upload_folder,
    write_bytes_atomic,
)

pytest_plugins = ["tests.s3_server"]  # the s3_server / s3_bucket fixtures
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml")


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


def test_upload_and_download_folder_round_trip_through_s3(s3_bucket, tmp_path):
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_bytes(b"{}")
    (source / "sub" / "weights.bin").write_bytes(b"w" * 10)
    upload_folder(str(source), f"{s3_bucket}/run/model")
    upload_folder(str(source), f"{s3_bucket}/run/model/")  # again: replaced, not nested
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket[5:])["Contents"]]
    assert sorted(keys) == ["run/model/config.json", "run/model/sub/weights.bin"]
    back = tmp_path / "back"
    back.mkdir()
    download_folder(f"{s3_bucket}/run/model", str(back))
    assert (back / "sub" / "weights.bin").read_bytes() == b"w" * 10 and (back / "config.json").exists()
    local = tmp_path / "local" / "model"
    upload_folder(str(source), str(local))  # a local target: folders created as needed
    assert (local / "sub" / "weights.bin").read_bytes() == b"w" * 10


def test_canonical_url_join_and_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert canonical_url("runs/r1/") == str(tmp_path / "runs" / "r1")
    assert canonical_url(f"file://{tmp_path}/r") == str(tmp_path / "r")
    assert canonical_url("s3://bucket/runs/r1/") == "s3://bucket/runs/r1"
    assert join("s3://bucket/run/", "ray", "train") == "s3://bucket/run/ray/train"
    assert not exists(str(tmp_path / "r")) and exists(str(tmp_path))


UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused on loopback


def _unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS variables pointing at a port nobody listens on; one attempt, so the refusal comes at once."""
    for key, value in {
        "AWS_ENDPOINT_URL": UNREACHABLE,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["prepare", "synthetic", "--out", "s3://bucket/data", "--videos", "4"], "--out s3://bucket/data"),
        (["train", CONFIG, "--output", "s3://bucket/runs/r1"], "--output s3://bucket/runs/r1"),
        (
            [
                "train",
                CONFIG,
                "data.train=s3://bucket/data/train",
                "data.val=s3://bucket/data/val",
                "--output",
                "RUN",
            ],
            "data.train s3://bucket/data/train",
        ),
    ],
)
def test_an_unreachable_object_store_is_one_clear_line(args, what, monkeypatch, tmp_path, capsys):
    from cluster.cli import main

    _unreachable(monkeypatch)
    started = time.monotonic()
    assert main([str(tmp_path / "run") if a == "RUN" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mktn {args[0]}: error: {what}: cannot reach its storage")
    assert UNREACHABLE in err and "AWS_ENDPOINT_URL" in err
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists() and not Path("s3:").exists()


def test_remote_run_folder_without_a_tracking_server_is_refused_before_ray(s3_bucket, monkeypatch, capsys):
    import ray

    from cluster.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    output = f"{s3_bucket}/runs/r1"
    args = ["train", CONFIG, f"data.train={s3_bucket}/data/train", f"data.val={s3_bucket}/data/val"]
    assert main([*args, "--output", output]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mktn train: error: --output {output}: MLflow's embedded SQLite store cannot live")
    assert "MLFLOW_TRACKING_URI" in err and "mlflow.tracking_uri" in err
    assert not ray.is_initialized()
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=s3_bucket[5:])  # nothing written


def test_run_folder_on_s3_round_trips_and_spools_locally(s3_bucket, monkeypatch, tmp_path):
    from cluster.job.config import load_config
    from cluster.job.run_folder import RunFolder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = RunFolder(f"{s3_bucket}/runs/r1/", load_config(CONFIG), "http://127.0.0.1:5000", "abc")
    folder.write()
    assert json.loads(_object(s3_bucket, "runs/r1/run.json"))["run_id"] == "abc"
    again = RunFolder.read(f"{s3_bucket}/runs/r1")
    assert (again.path, again.run_id, again.storage) == (
        f"{s3_bucket}/runs/r1",
        "abc",
        f"{s3_bucket}/runs/r1/ray",
    )
    assert again.spool.startswith(str(tmp_path / "cache" / "mktn" / "spool"))
    with pytest.raises(FileNotFoundError, match="no run.json"):
        RunFolder.read(f"{s3_bucket}/runs/none")


def test_open_model_reads_a_run_folder_on_s3(s3_bucket):
    from cluster.job.config import load_config
    from cluster.job.run_folder import RunFolder
    from cluster.serve.model_source import open_model
    from mktn.export import save_model
    from tests.model_support import model_for, small_config, tiny_groups

    model = model_for(tiny_groups(2), small_config())
    run = f"{s3_bucket}/runs/r1"
    RunFolder(run, load_config(CONFIG), "http://127.0.0.1:5000", "abc", status="finished").write()
    with pytest.raises(FileNotFoundError, match="no exported model yet"):
        open_model(run)
    save_model(model, f"{run}/model")
    for source, run_id in ((run, "abc"), (f"{run}/", "abc"), (f"{run}/model", None)):
        found = open_model(source)
        assert found.run_id == run_id and found.model.state_dict().keys() == model.state_dict().keys()
        assert all(
            torch.equal(a, b) for a, b in zip(found.model.state_dict().values(), model.state_dict().values())
        )
    assert open_model(run).tracking_uri == "http://127.0.0.1:5000"
    with pytest.raises(FileNotFoundError, match="expected a run folder"):
        open_model(f"{s3_bucket}/runs/none")
