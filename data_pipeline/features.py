"""Per-video clip features from a directory of `{video_id}.npy` or one HDF5 file, never unpickled."""

from __future__ import annotations

import io
import math
import posixpath
import re
import tokenize
from typing import Protocol

import fsspec
import h5py
import numpy as np

from data_pipeline.errors import DataError

_SAFE_ID = re.compile(r"^[^/\\\x00]+$")
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class FeatureStore(Protocol):
    """Where features come from; `load` returns the raw array (checked by `check_features`)."""

    url: str

    def load(self, video_id: str) -> np.ndarray: ...


class NpyDirectory:
    """A directory (any fsspec URL) holding one `{video_id}.npy` per video."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        if not self.fs.isdir(self.root):
            raise FileNotFoundError(f"{url}: feature directory not found")

    def load(self, video_id: str) -> np.ndarray:
        """The array of `{video_id}.npy`; ids that would leave the directory, missing files and pickles are errors."""
        if not _SAFE_ID.match(video_id) or video_id in (".", ".."):
            raise DataError(f"{self.url}: video id {video_id!r} is not a valid file name (path separators?)")
        path = posixpath.join(self.root, f"{video_id}.npy")
        try:
            with self.fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise DataError(
                f"{self.url}: no features for video {video_id!r} (expected {video_id}.npy)"
            ) from exc
        return load_npy(data, f"{self.url}/{video_id}.npy")


class HDF5File:
    """One HDF5 file keyed by video id (the usual C3D/I3D releases), optionally `f[vid][dataset_key]`."""

    def __init__(self, url: str, dataset_key: str | None = None):
        self.url = url
        self.dataset_key = dataset_key
        try:
            self._file = fsspec.open(url, "rb").open()
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
        node = self._h5.get(key)
        if node is None:
            raise DataError(f"{self.url}: HDF5 key {key!r} missing (no features for video {video_id!r})")
        if not isinstance(node, h5py.Dataset):
            raise DataError(
                f"{self.url}: HDF5 key {key!r} is a group, not an array (set the HDF5 dataset key?)"
            )
        if node.is_virtual:
            raise DataError(
                f"{self.url}: HDF5 key {key!r} is a virtual dataset (it reads other files); refused"
            )
        try:
            return np.asarray(node[()])
        except OSError as exc:
            raise DataError(f"{self.url}: HDF5 key {key!r} could not be read ({exc})") from exc

    def close(self) -> None:
        self._h5.close()
        self._file.close()


def open_features(url: str, hdf5_key: str | None = None) -> NpyDirectory | HDF5File:
    """An HDF5 file when `url` ends in .h5/.hdf5/.hdf, else a directory of `.npy` files."""
    if url.lower().endswith((".h5", ".hdf5", ".hdf")):
        return HDF5File(url, hdf5_key)
    if hdf5_key is not None:
        raise ValueError(f"{url}: an HDF5 dataset key was given but the features are not an HDF5 file")
    return NpyDirectory(url)


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
