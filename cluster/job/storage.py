"""Shared storage for multi-node jobs: every path in the project is an fsspec URL.

A multi-node job works only when every node reads the same shards and writes checkpoints where every other
node (and the next attempt of the job) can read them: an object store (`s3://`, `gs://`, ...) or a shared
mount. Credentials and endpoints never travel in configs; they come from where each library already looks:

- S3: the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
  `AWS_PROFILE`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for MinIO, Ceph, moto...),
  read by botocore (s3fs, boto3, MLflow's S3 artifact repository) and by pyarrow's S3 filesystem alike.
- Any fsspec protocol: fsspec's own configuration, `FSSPEC_<PROTOCOL>_<OPTION>` variables
  (e.g. `FSSPEC_S3_ANON=true`) or JSON files in `~/.config/fsspec/`, applied to every filesystem it builds.

This module turns a URL into a filesystem for code that needs one (listing, atomic writes, copying folders)
and into the `pyarrow` filesystem Ray Train's `RunConfig(storage_path=..., storage_filesystem=...)` expects,
and fails fast with one clear line when the storage behind a URL cannot be reached.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import fsspec
import pyarrow.fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol


def filesystem_for(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem serving `url` and the path inside it (`s3://b/k` -> (S3FileSystem, "b/k")).

    `storage_options` (e.g. `endpoint_url=`, `anon=`) override the environment/fsspec configuration.
    A protocol whose package is missing becomes a ValueError naming the package to install.
    """
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:
        raise ValueError(f"{url}: no filesystem for this URL's protocol ({exc})") from exc


def is_local(url: str) -> bool:
    """True when `url` is a path on this node's own disk (a plain path or `file://`), visible to no other node
    unless it is a shared mount. Decided from the protocol alone: no filesystem is built, nothing is contacted."""
    return get_protocol(url) in ("file", "local")


def canonical_url(url: str) -> str:
    """`url` as the project records it: a local path made absolute (without `file://`), any other URL without
    a trailing slash. Nothing is contacted."""
    if is_local(url):
        return os.path.abspath(filesystem_for(url)[1])
    return url.rstrip("/")


def join(url: str, *names: str) -> str:
    """`url` with `names` appended as path segments (`join("s3://b/run", "model")` -> `s3://b/run/model`)."""
    return "/".join([url.rstrip("/"), *names])


def exists(url: str) -> bool:
    """True when a file, object or folder (prefix) is at `url`."""
    fs, path = filesystem_for(url)
    return fs.exists(path)


def check_reachable(url: str, what: str) -> None:
    """Fail with one clear line (a ValueError naming `what`, the URL and the storage's error, e.g. the endpoint
    it could not connect to) when the storage behind a non-local `url` does not answer, instead of a
    client library's traceback halfway through a job. A missing object is fine: only the store is checked."""
    if is_local(url):
        return
    fs, path = filesystem_for(url)
    try:
        fs.exists(path)
    except Exception as exc:  # noqa: BLE001 - any client error (connection, credentials, DNS) means: unusable
        raise ValueError(
            f"{what} {url}: cannot reach its storage ({type(exc).__name__}: {exc}); check the endpoint "
            "(AWS_ENDPOINT_URL for S3-compatible stores), the credentials and the network"
        ) from exc


def upload_folder(local_dir: str, url: str) -> None:
    """Copy every file under the local folder `local_dir` to the same relative path under `url` (existing
    objects of the same names are replaced; nothing else is touched)."""
    fs, root = filesystem_for(url)
    fs.put(f"{local_dir.rstrip('/')}/", f"{root.rstrip('/')}/", recursive=True)


def download_folder(url: str, local_dir: str) -> None:
    """Copy every file under `url` (a folder or object prefix) into the local folder `local_dir`."""
    fs, root = filesystem_for(url)
    fs.get(f"{root.rstrip('/')}/", f"{local_dir.rstrip('/')}/", recursive=True)


def pyarrow_filesystem(url: str, **storage_options: Any) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path) for Ray Train's `RunConfig(storage_path=path, storage_filesystem=filesystem)`.

    Local paths use pyarrow's own `LocalFileSystem` with an absolute path; every other URL goes through the
    fsspec filesystem wrapped as `pyarrow.fs.PyFileSystem(FSSpecHandler(fs))`, so Ray reads and writes
    checkpoints with the same credentials, endpoint and options as the rest of the job. The wrapper pickles
    with the filesystem's options only; each node resolves credentials from its own environment.
    """
    fs, path = filesystem_for(url, **storage_options)
    if isinstance(fs, LocalFileSystem):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(path)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write `data` to `url` so readers see the old object or the whole new one, never a partial file.

    An object-store PUT is already atomic, so remote URLs are written in one request; on a local or shared
    disk the bytes go to a temporary file in the same directory that is then renamed over the target.
    """
    fs, path = filesystem_for(url)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
