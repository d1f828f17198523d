"""An exclusive lock on a job's output location, so two jobs never write into the same place.

    with OutputLock(out_url, break_lock=args.break_lock):
        ...  # write the outputs

The lock is the file `<output>/.mktn.lock`, holding its holder (host, pid, start time, command) as JSON. A
second job on the same output is refused at once with one `OutputLocked` line naming the holder.

- Local paths (NFS included, where the mount supports locks): the file is created complete under a private
  name, locked with `flock`, then hard-linked into place, which fails if a lock is there already. The
  kernel drops the `flock` when the holder dies however it dies, so a lock whose `flock` is free belongs to
  a crashed job: it is reported as stale, with its holder, and taken over only with `break_lock=True`.
- Object stores: a conditional create, `fs.pipe_file(path, data, mode="create")`: s3fs sends it as a PutObject
  with `If-None-Match: *`, which S3 (and the moto server the tests use) refuses once the key exists. A dead
  holder cannot be detected from another host; on the holder's own host its pid is checked.
  `break_lock=True` removes a lock whose holder is not known to be alive; that removal is not atomic, so
  break a lock on an object store only when its holder is known to be gone. Filesystems without an atomic
  create (fsspec's fallback checks, then writes) get that weaker guarantee.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import posixpath
import socket
import sys
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from data_pipeline.errors import DataError, echo

LOCK_NAME = ".mktn.lock"


class OutputLocked(DataError):
    """The output is held by another job (running, or crashed and not yet broken); the message names it."""


class OutputLock:
    """An exclusive lock on the output at `url` (any fsspec URL), held from `acquire` (or `with`) to `release`.

    `command` is recorded for whoever is refused (default: this process's command line). `break_lock=True`
    takes over a lock whose holder is gone (a crashed job); a live holder's lock is never taken.
    """

    def __init__(self, url: str, *, command: str | None = None, break_lock: bool = False):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.path = posixpath.join(root.rstrip("/") or "/", LOCK_NAME)
        self.break_lock = break_lock
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": command if command is not None else " ".join(sys.argv),
            "token": uuid.uuid4().hex,
        }
        self._fd: int | None = None
        self._held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> OutputLock:
        """Take the lock, or raise `OutputLocked` naming its holder."""
        if self._held:
            raise RuntimeError(f"{self.url}: this OutputLock is already held")
        record = json.dumps(self.holder).encode()
        try:
            if isinstance(self.fs, LocalFileSystem):
                self._fd = self._acquire_local(record)
            else:
                self._acquire_store(record)
        except OSError as exc:  # a read-only or unreachable output
            raise DataError(f"{self.url}: cannot create the output lock {LOCK_NAME} ({exc})") from exc
        self._held = True
        return self

    def release(self) -> None:
        """Give the lock up (the file goes first, then the `flock`, so nobody sees it as stale)."""
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- local files: hard link + flock -------------------------------------------------------------

    def _acquire_local(self, record: bytes) -> int:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            private = f"{self.path}.{self.holder['token']}"
            fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, record)
                os.fsync(fd)
                os.link(private, self.path)  # atomic: fails when a lock is already there
            except FileExistsError:
                os.close(fd)
            except BaseException:
                os.close(fd)
                raise
            else:
                return fd
            finally:
                os.unlink(private)
            fd = self._take_over_local(record)
            if fd is not None:
                return fd

    def _take_over_local(self, record: bytes) -> int | None:
        """The existing lock's descriptor, taken over when its holder is gone and `break_lock`; None when the
        lock vanished meanwhile (try again); `OutputLocked` otherwise."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            holder = _parse(os.pread(fd, 1 << 16, 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputLocked(f"{self.url}: in use by another job ({describe(holder)})") from None
            if not _same_file(fd, self.path):  # released (unlinked) while we looked: start again
                os.close(fd)
                return None
            holder = _parse(os.pread(fd, 1 << 16, 0))
            if not self.break_lock:
                raise OutputLocked(self._stale(holder, "is no longer running"))
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            os.fsync(fd)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    # ---- object stores: conditional create ----------------------------------------------------------

    def _acquire_store(self, record: bytes) -> None:
        for _ in range(2):
            try:
                self.fs.pipe_file(self.path, record, mode="create")
                return
            except FileExistsError:
                pass
            try:
                holder = _parse(self.fs.cat_file(self.path))
            except FileNotFoundError:  # released meanwhile
                continue
            alive = _alive_here(holder)
            if alive is True:
                raise OutputLocked(f"{self.url}: in use by another job ({describe(holder)})")
            if not self.break_lock:
                state = "is no longer running" if alive is False else "may still be running on another host"
                raise OutputLocked(self._stale(holder, state))
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)
        raise OutputLocked(f"{self.url}: the lock changed hands while being broken; try again")

    def _stale(self, holder: dict[str, Any], state: str) -> str:
        return (
            f"{self.url}: locked by a job that {state} ({describe(holder)}); "
            "if it is gone, pass --break-lock (break_lock=True) to take over"
        )


def describe(holder: dict[str, Any]) -> str:
    """One line naming a lock's holder: host, pid, start time and command."""
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('started', '?')}, "
        f"command {echo(holder.get('command', '?'), 200)}"
    )


def _parse(data: bytes) -> dict[str, Any]:
    """A lock file's holder record; a damaged one (a holder killed mid-write) reads as an unknown holder."""
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _alive_here(holder: dict[str, Any]) -> bool | None:
    """Whether the holder's process runs, when it ran on this host; None when that cannot be known."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
