"""Per-video clip features from a directory of `{video_id}.npy` or one HDF5 file, never unpickled.

Only bytes that live in the named file or directory are read, and never more than a bound: an entry that is
not a regular file (a device such as /dev/zero, a FIFO, a socket), a link leading out of the feature
directory (unless `follow_links`), HDF5 data stored in other files (external storage, virtual datasets,
external links) and a feature array larger than `max_bytes` (file size, or an HDF5 dataset's declared shape)
are refused with a `DataError` naming the file and video, before anything is allocated.
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import re
import stat
import tokenize
from typing import Any, Protocol

import fsspec
import h5py
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from data_pipeline.errors import DataError

MAX_FEATURE_BYTES = 1 << 30
"""Default bound on one video's feature array (1 GiB: 260 M float32 values); `max_bytes` / `--max-feature-mb`."""
NPY_HEADER_BYTES = 1 << 16  # room for a .npy header on top of the array bytes

_SAFE_ID = re.compile(r"^[^/\\\x00]+$")
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class FeatureStore(Protocol):
    """Where features come from; `load` returns the raw array (checked by `check_features`)."""

    url: str

    def load(self, video_id: str) -> np.ndarray: ...


class NpyDirectory:
    """A directory (any fsspec URL) holding one `{video_id}.npy` per video.

    Entries may be links within the directory; a link leading out of it (a shared feature store linked in)
    is refused unless `follow_links`. Files over `max_bytes` (plus a header) are refused before being read.
    """

    def __init__(self, url: str, *, follow_links: bool = False, max_bytes: int = MAX_FEATURE_BYTES):
        self.url, self.follow_links, self.max_bytes = url, follow_links, max_bytes
        self.fs, self.root = fsspec.core.url_to_fs(url)
        if not self.fs.isdir(self.root):
            raise FileNotFoundError(f"{url}: feature directory not found")

    def load(self, video_id: str) -> np.ndarray:
        """The array of `{video_id}.npy`; ids that would leave the directory, missing files and pickles are errors."""
        if not _SAFE_ID.match(video_id) or video_id in (".", ".."):
            raise DataError(f"{self.url}: video id {video_id!r} is not a valid file name (path separators?)")
        where = f"{self.url}/{video_id}.npy"
        try:
            data = read_file(
                self.fs,
                posixpath.join(self.root, f"{video_id}.npy"),
                where,
                self.max_bytes + NPY_HEADER_BYTES,
                inside=None if self.follow_links else self.root,
            )
        except FileNotFoundError as exc:
            raise DataError(
                f"{self.url}: no features for video {video_id!r} (expected {video_id}.npy)"
            ) from exc
        return load_npy(data, where)


class HDF5File:
    """One HDF5 file keyed by video id (the usual C3D/I3D releases), optionally `f[vid][dataset_key]`.

    Only datasets stored in this file are read: external links, external raw storage and virtual datasets
    are refused, and so is a dataset whose declared shape holds more than `max_bytes`.
    """

    def __init__(self, url: str, dataset_key: str | None = None, *, max_bytes: int = MAX_FEATURE_BYTES):
        self.url, self.dataset_key, self.max_bytes = url, dataset_key, max_bytes
        fs, path = fsspec.core.url_to_fs(url)
        try:
            _check_regular(fs, path, url)
            self._file = fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{url}: feature file not found") from exc
        try:
            self._h5 = h5py.File(self._file, "r")
        except OSError as exc:
            self._file.close()
            raise DataError(f"{url}: not a readable HDF5 file ({exc})") from exc

    def load(self, video_id: str) -> np.ndarray:
        """The dataset stored under `video_id` (and `dataset_key`), read fully into memory."""
        key = video_id if self.dataset_key is None else f"{video_id}/{self.dataset_key}"
        node = self._dataset(key, video_id)
        where = f"{self.url}: HDF5 key {key!r}"
        if node.is_virtual:
            raise DataError(f"{where} is a virtual dataset (it reads other files); refused")
        if node.external:
            files = sorted({str(entry[0]) for entry in node.external})
            raise DataError(f"{where} is stored in other files {files} (external storage); refused")
        if node.shape is not None:
            declared = math.prod(node.shape) * node.dtype.itemsize
            if declared > self.max_bytes:
                raise DataError(
                    f"{where} declares shape {node.shape} {node.dtype}, {declared} bytes: over the limit of "
                    f"{self.max_bytes} bytes per video (max_bytes / --max-feature-mb)"
                )
        try:
            return np.asarray(node[()])
        except OSError as exc:
            raise DataError(f"{where} could not be read ({exc})") from exc

    def _dataset(self, key: str, video_id: str) -> h5py.Dataset:
        """The dataset at `key`, every step of its path a link inside this file."""
        parts = [part for part in key.split("/") if part]
        for depth in range(1, len(parts) + 1):
            step = "/".join(parts[:depth])
            try:
                link = self._h5.get(step, getlink=True)
            except (RuntimeError, KeyError, ValueError):  # h5py on names it cannot look up
                link = None
            if isinstance(link, h5py.ExternalLink):
                raise DataError(
                    f"{self.url}: HDF5 key {step!r} is an external link to {link.filename}:{link.path}; refused"
                )
            if link is not None and not isinstance(link, h5py.HardLink | h5py.SoftLink):
                raise DataError(f"{self.url}: HDF5 key {step!r} is a user-defined link; refused")
        node = self._h5.get(key)
        if node is None:
            raise DataError(f"{self.url}: HDF5 key {key!r} missing (no features for video {video_id!r})")
        if not isinstance(node, h5py.Dataset):
            raise DataError(
                f"{self.url}: HDF5 key {key!r} is a group, not an array (set the HDF5 dataset key?)"
            )
        return node

    def close(self) -> None:
        self._h5.close()
        self._file.close()


def open_features(
    url: str, hdf5_key: str | None = None, *, follow_links: bool = False, max_bytes: int = MAX_FEATURE_BYTES
) -> NpyDirectory | HDF5File:
    """An HDF5 file when `url` ends in .h5/.hdf5/.hdf, else a directory of `.npy` files.

    `follow_links` lets a directory's entries be links that lead out of it; `max_bytes` bounds one video's
    features (see `NpyDirectory`, `HDF5File`).
    """
    if max_bytes < 1:
        raise ValueError(f"the feature size limit must be >= 1 byte, got {max_bytes}")
    if url.lower().endswith((".h5", ".hdf5", ".hdf")):
        return HDF5File(url, hdf5_key, max_bytes=max_bytes)
    if hdf5_key is not None:
        raise ValueError(f"{url}: an HDF5 dataset key was given but the features are not an HDF5 file")
    return NpyDirectory(url, follow_links=follow_links, max_bytes=max_bytes)


def read_file(fs: Any, path: str, where: str, limit: int, inside: str | None = None) -> bytes:
    """The bytes of the regular file `path` on `fs`, refused (`DataError` naming `where`) when they cannot be
    trusted to be a bounded file: not a regular file (device, FIFO, socket, directory), over `limit` bytes, or,
    with `inside` (a local directory), a path that resolves outside it through a link.

    Local files are checked on the opened descriptor (opened non-blocking, so a FIFO cannot hang the open);
    other filesystems have no devices or links, and their size comes from `fs.info` before any read. The read
    itself stops at `limit` + 1 bytes whatever the size said.
    """
    if isinstance(fs, LocalFileSystem):
        if inside is not None:
            real, root = os.path.realpath(path), os.path.realpath(inside)
            if os.path.commonpath([real, root]) != root:
                raise DataError(
                    f"{where}: a link to {real}, outside the feature directory; refused "
                    "(allow links that leave it with follow_links / --follow-links)"
                )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise DataError(f"{where}: cannot be opened ({exc.strerror})") from exc
        try:
            info = os.fstat(fd)
            _check_kind(stat.S_ISREG(info.st_mode), _kind(info.st_mode), where)
            _check_size(info.st_size, limit, where)
        except BaseException:
            os.close(fd)
            raise
        with open(fd, "rb") as f:
            data = f.read(limit + 1)
    else:
        info = fs.info(path)
        _check_kind(info.get("type") == "file", str(info.get("type")), where)
        if info.get("size") is not None:
            _check_size(int(info["size"]), limit, where)
        with fs.open(path, "rb") as f:
            data = f.read(limit + 1)
    _check_size(len(data), limit, where)
    return data


def _check_regular(fs: Any, path: str, where: str) -> None:
    """Refuse `path` unless it is a regular file (links followed: the user named this file)."""
    if isinstance(fs, LocalFileSystem):
        mode = os.stat(path).st_mode
        _check_kind(stat.S_ISREG(mode), _kind(mode), where)
    else:
        kind = fs.info(path).get("type")
        _check_kind(kind == "file", str(kind), where)


def _check_kind(regular: bool, kind: str, where: str) -> None:
    if not regular:
        raise DataError(f"{where}: not a regular file (a {kind}); refused")


def _check_size(size: int, limit: int, where: str) -> None:
    if size > limit:
        raise DataError(
            f"{where}: {size} bytes, over the limit of {limit} bytes per video (max_bytes / --max-feature-mb)"
        )


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "directory",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
        stat.S_ISFIFO: "FIFO",
        stat.S_ISSOCK: "socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def load_npy(data: bytes, source: str) -> np.ndarray:
    """Decode `.npy` bytes with `allow_pickle=False`; pickled or object arrays are refused, never executed.

    Anything without the `.npy` magic (a pickle, an `.npz` archive) is refused, and the header's
    shape must match the bytes that follow, so a forged 128-byte header cannot make numpy
    allocate terabytes.
    """
    if not data.startswith(np.lib.format.MAGIC_PREFIX):
        raise DataError(f"{source}: refusing a pickled/object .npy or other non-.npy data (no .npy header)")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_HEADERS:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = _NPY_HEADERS[version](stream)
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError) as exc:  # numpy's header parser on junk
        raise DataError(f"{source}: not a valid .npy array ({exc})") from exc
    if dtype.hasobject:
        raise DataError(f"{source}: refusing a pickled/object .npy (only plain numeric arrays are loaded)")
    size, expected = len(data) - stream.tell(), math.prod(shape) * dtype.itemsize
    if size != expected:
        raise DataError(
            f"{source}: not a valid .npy array (header declares {shape} {dtype}, {expected} bytes; {size} follow)"
        )
    return np.load(io.BytesIO(data), allow_pickle=False)


def check_features(array: np.ndarray, source: str, feature_dim: int | None = None) -> np.ndarray:
    """`array` as contiguous float32 `(N, D)` or `(N, C+1, D)` after checking dtype, shape and values.

    Floats of any width are accepted (cast to float32); integers, objects, zero clips, a last
    axis other than `feature_dim` and NaN/inf values are errors naming `source`.
    """
    if array.dtype.kind != "f":
        raise DataError(f"{source}: features have dtype {array.dtype}, expected a float array")
    if array.ndim not in (2, 3):
        raise DataError(
            f"{source}: features have shape {array.shape}, expected (clips, dim) or (clips, tokens, dim)"
        )
    if array.shape[0] == 0 or 0 in array.shape:
        raise DataError(f"{source}: features have shape {array.shape}: zero clips/tokens/dims")
    if feature_dim is not None and array.shape[-1] != feature_dim:
        raise DataError(f"{source}: feature dim {array.shape[-1]}, expected {feature_dim}")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        out = np.ascontiguousarray(array, dtype=np.float32)
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise DataError(f"{source}: features contain {bad} NaN/inf values (after the cast to float32)")
    return out
