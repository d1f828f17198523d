"""Two jobs on one output: the second is refused at once naming the first, a crashed holder's lock is reported
as stale and taken over only on request, and concurrent `mktn prepare --overwrite` runs never leave a
dataset that looks complete but is not (issue 17: 26 shards in dataset.json with 25 on disk)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cluster.cli.prepare  # noqa: F401  imported before the clock starts
from cluster.cli import main
from data_pipeline.output_lock import LOCK_NAME, OutputLock, OutputLocked
from data_pipeline.shards import read_dataset_info, read_shard_table

pytest_plugins = ["tests.s3_server"]  # the s3_server / s3_bucket fixtures

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from data_pipeline.output_lock import OutputLock
OutputLock(sys.argv[1], command=sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(url: str, tag: str = "A") -> subprocess.Popen:
    """A separate process that takes the lock on `url` and sleeps holding it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, f"holder {tag}"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _prepare(out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """`mktn prepare synthetic` through the real entry point in this process: (exit status, stderr)."""
    args = ["prepare", "synthetic", "--out", str(out), "--videos", "30", "--val-videos", "0"]
    status = main([*args, "--shard-size-mb", "0.05", "--no-progress", *extra])
    return status, capsys.readouterr().err


def _assert_complete_or_absent(dataset: Path) -> None:
    """Either no dataset.json, or one whose every listed shard is on disk with its checksum and no other."""
    if not (dataset / "dataset.json").exists():
        return
    info = read_dataset_info(str(dataset))
    table = read_shard_table(str(dataset)).to_pylist()
    on_disk = sorted(p.name for p in (dataset / "shards").iterdir())
    assert on_disk == sorted(Path(row["shard"]).name for row in table)
    assert info["counts"]["shards"] == len(table)
    for row in table:
        assert hashlib.sha256((dataset / row["shard"]).read_bytes()).hexdigest() == row["sha256"]


def test_a_second_prepare_on_a_held_output_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "syn"
    holder = _holder(str(out / "train"))
    try:
        started = time.monotonic()
        status, err = _prepare(out, capsys, "--overwrite")
        assert status == 2
        (line,) = err.strip().splitlines()
        assert f"{out}/train: in use by another job (host {socket.gethostname()}, pid {holder.pid}" in line
        assert "command 'holder A'" in line
        assert not (out / "train" / "dataset.json").exists() and not (out / "train" / "shards").exists()
        assert time.monotonic() - started < 5  # refused before any work, not after a whole prepare
    finally:
        holder.kill()
        holder.wait()


def test_a_crashed_holders_lock_is_reported_and_broken_only_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "syn"
    holder = _holder(str(out / "train"), tag="crashed")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    status, err = _prepare(out, capsys)
    assert status == 2
    (line,) = err.strip().splitlines()
    assert "locked by a job that is no longer running" in line and f"pid {holder.pid}" in line
    assert "command 'holder crashed'" in line and "--break-lock" in line
    status, err = _prepare(out, capsys, "--break-lock")
    assert status == 0, err
    assert read_dataset_info(str(out / "train"))["counts"]["videos"] == 30
    assert not (out / "train" / LOCK_NAME).exists()  # released when the prepare finished


def _race(out: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    from data_pipeline.prepare import prepare_synthetic

    barrier.wait()
    try:
        prepare_synthetic(out, videos=30, val_videos=0, shard_size_mb=0.05, overwrite=True, progress=False)
        results.put("done")
    except OutputLocked as exc:
        results.put(f"refused: {exc}")


def test_concurrent_overwrites_never_leave_a_dataset_that_looks_complete(tmp_path: Path) -> None:
    """Two processes start `prepare --overwrite` into one output at the same instant, twice (the second round overwrites the first's dataset)."""
    out = tmp_path / "syn"
    ctx = multiprocessing.get_context("fork")  # no re-import per process; the children run no torch code
    outcomes: list[str] = []
    for _ in range(2):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(out), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
            assert p.exitcode == 0
        round_outcomes = sorted(results.get(timeout=5) for _ in procs)
        assert round_outcomes[0] == "done"  # never both refused
        assert all(o == "done" or "in use by another job" in o for o in round_outcomes)
        outcomes += round_outcomes
        _assert_complete_or_absent(out / "train")
        assert (out / "train" / "dataset.json").exists()
    assert any(o.startswith("refused") for o in outcomes)  # the processes did overlap at least once


def test_a_lock_is_exclusive_within_one_host_and_released(tmp_path: Path) -> None:
    url = str(tmp_path / "out")
    with OutputLock(url, command="first") as first:
        record = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "first"
        with pytest.raises(OutputLocked, match=r"in use by another job \(.*command 'first'\)"):
            OutputLock(url, break_lock=True).acquire()  # a live holder is never broken
        first.release()
        assert not (tmp_path / "out" / LOCK_NAME).exists()
    with OutputLock(url):
        assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK_NAME]  # no private file left behind


def test_a_lock_on_an_object_store_is_a_conditional_create(s3_bucket: str) -> None:
    url = f"{s3_bucket}/datasets/train"
    first = OutputLock(url, command="first").acquire()
    with pytest.raises(OutputLocked, match=rf"{url}: in use by another job \(host .*pid {os.getpid()}"):
        OutputLock(url).acquire()
    first.release()
    with OutputLock(url):
        pass
    # A holder that died on this host: its pid no longer runs, so the lock is stale.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import fsspec

    fs, path = fsspec.core.url_to_fs(f"{url}/{LOCK_NAME}")
    fs.pipe_file(
        path, json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "command": "x"}).encode()
    )
    with pytest.raises(OutputLocked, match="locked by a job that is no longer running"):
        OutputLock(url).acquire()
    with OutputLock(url, break_lock=True) as taken:
        assert json.loads(fs.cat_file(path))["token"] == taken.holder["token"]
