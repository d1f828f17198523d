"""Write and read a prepared dataset: WebDataset shards of whole video groups plus Parquet/JSON metadata.

Layout under the output URL (any fsspec URL):

    shards/shard-000000.tar   one sample per video group (see `data_pipeline.sample`)
    manifest.parquet          one row per video: shard, key, video_id, n_queries, n_clips, duration, split
    shards.parquet            one row per shard: shard, sha256, bytes, n_videos, n_queries
    vocab.json                the word vocabulary (`data_pipeline.text.Vocab`)
    dataset.json              dataset, split, feature_dim, tokens_per_clip, counts, skipped items

Crash safety: each shard is written as `shards/.shard-NNNNNN.tar.partial` and renamed when
complete; `dataset.json` is written last, so a dataset without it is incomplete and refused.
Re-running into an output that holds any of these files is refused unless `overwrite=True`,
which deletes them first (`dataset.json` first of all).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from tqdm import tqdm

from data_pipeline.errors import DataError, ErrorLog
from data_pipeline.sample import encode_sample, sample_key
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup

DATASET_FORMAT = "mktn-dataset-v1"
SHARD_PATTERN = "shards/shard-%06d.tar"
SHARD_PATH = re.compile(r"^shards/shard-\d{6}\.tar$")
OUTPUTS = ("dataset.json", "manifest.parquet", "shards.parquet", "vocab.json", "shards")


@dataclass
class _ShardFile:
    """The open temporary file of one shard, hashing and counting what goes through it."""

    stream: Any
    partial: str
    sha256: Any
    bytes: int = 0
    videos: int = 0
    queries: int = 0
    discard: bool = False  # set on abort: the tar trailer goes nowhere

    def write(self, data: bytes) -> int:
        if self.discard:
            return len(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


class _DatasetWriter:
    """Wires webdataset's `ShardWriter` to fsspec temporary files that are committed by rename."""

    def __init__(self, fs: Any, root: str, shard_size_mb: float):
        self.fs, self.root = fs, root
        self.current: _ShardFile | None = None
        self.committed: list[dict[str, Any]] = []
        fs.makedirs(posixpath.join(root, "shards"), exist_ok=True)
        self.writer = wds.ShardWriter(
            posixpath.join(root, SHARD_PATTERN),
            maxcount=10**9,
            maxsize=shard_size_mb * 1e6,
            opener=self._open,
            post=self._commit,
            verbose=0,
            encoder=False,
        )

    def _open(self, final: str) -> _ShardFile:
        partial = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.partial")
        self.current = _ShardFile(self.fs.open(partial, "wb"), partial, hashlib.sha256())
        return self.current

    def _commit(self, final: str) -> None:
        shard = self.current
        shard.stream.close()
        self.fs.mv(shard.partial, final)
        self.committed.append(
            {
                "shard": posixpath.relpath(final, self.root),
                "sha256": shard.sha256.hexdigest(),
                "bytes": shard.bytes,
                "n_videos": shard.videos,
                "n_queries": shard.queries,
            }
        )
        self.current = None

    def write(self, group: VideoGroup, key: str) -> str:
        """Write one group; returns the shard (relative path) it went into."""
        self.writer.write(encode_sample(group, key))
        self.current.videos += 1
        self.current.queries += group.num_queries
        return SHARD_PATTERN % (self.writer.shard - 1)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Drop the shard being written (never renamed) and every committed one."""
        if self.current is not None:
            self.current.discard = True
            self.writer.tarstream.close()
            with contextlib.suppress(OSError):  # a full disk may refuse the final flush too
                self.current.stream.close()
        self.fs.rm(posixpath.join(self.root, "shards"), recursive=True)


def write_dataset(
    groups: Iterable[VideoGroup],
    out_url: str,
    *,
    dataset: str,
    split: str,
    vocab: Vocab | None = None,
    shard_size_mb: float = 64.0,
    overwrite: bool = False,
    log: ErrorLog | None = None,
    source: dict[str, Any] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Any]:
    """Write `groups` as a prepared dataset at `out_url`; returns the `dataset.json` content.

    `vocab=None` builds the vocabulary from this dataset's sentences (pass the training
    vocabulary when writing a validation split). Shards roll over at `shard_size_mb`; a video
    group never straddles two shards. `log` (the prepare's error log) is summarised in
    `dataset.json`; `source` records where the data came from; `total` (videos expected) sizes
    the progress bar. Any error while writing removes everything written so far and re-raises.
    """
    if shard_size_mb <= 0:
        raise ValueError(f"shard size must be > 0 MB, got {shard_size_mb}")
    fs, root = fsspec.core.url_to_fs(out_url)
    root = root.rstrip("/") or "/"
    _prepare_output(fs, root, out_url, overwrite)
    writer = _DatasetWriter(fs, root, shard_size_mb)
    rows: list[dict[str, Any]] = []
    sentences: list[str] = []
    keys: set[str] = set()
    shape: tuple[int, ...] | None = None
    try:
        for group in tqdm(groups, desc=f"writing {out_url}", unit="video", total=total, disable=not progress):
            shape = shape or group.features.shape[1:]
            key = _unique_key(group.video_id, keys)
            shard = writer.write(group, key)
            rows.append(
                {
                    "shard": shard,
                    "key": key,
                    "video_id": group.video_id,
                    "n_queries": group.num_queries,
                    "n_clips": group.num_clips,
                    "duration": group.duration,
                    "split": group.split,
                }
            )
            sentences.extend(q.sentence for q in group.queries)
        if not rows:
            raise DataError(f"{out_url}: no valid video groups to write (all inputs were skipped or empty)")
        writer.close()
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, OSError):
            raise DataError(f"{out_url}: writing shards failed ({exc}); nothing was committed") from exc
        raise
    vocab = vocab or Vocab.build(sentences)
    info = {
        "format": DATASET_FORMAT,
        "dataset": dataset,
        "split": split,
        "feature_dim": int(shape[-1]),
        "tokens_per_clip": int(shape[0]) if len(shape) == 2 else 1,
        "counts": {
            "videos": len(rows),
            "queries": sum(r["n_queries"] for r in rows),
            "shards": len(writer.committed),
            "bytes": sum(s["bytes"] for s in writer.committed),
            "vocab": len(vocab),
        },
        "validation": (log or ErrorLog()).summary(),
        "source": source or {},
    }
    try:
        _write_metadata(fs, root, rows, writer.committed, vocab, info)
    except OSError as exc:  # e.g. the disk filled up after the last shard
        _remove(fs, root, [*OUTPUTS, "dataset.json.partial"])
        raise DataError(
            f"{out_url}: writing the dataset metadata failed ({exc}); nothing was committed"
        ) from exc
    return info


def _write_metadata(
    fs: Any, root: str, rows: list[dict[str, Any]], shards: list[dict[str, Any]], vocab: Vocab, info: dict
) -> None:
    """The tables, vocabulary and, last of all (by rename), `dataset.json` that marks the dataset complete."""
    _write_parquet(fs, posixpath.join(root, "manifest.parquet"), rows)
    _write_parquet(fs, posixpath.join(root, "shards.parquet"), shards)
    with fs.open(posixpath.join(root, "vocab.json"), "w") as f:
        f.write(vocab.to_json())
    with fs.open(posixpath.join(root, "dataset.json.partial"), "w") as f:
        json.dump(info, f, indent=2)
    fs.mv(posixpath.join(root, "dataset.json.partial"), posixpath.join(root, "dataset.json"))


def _prepare_output(fs: Any, root: str, url: str, overwrite: bool) -> None:
    existing = [name for name in OUTPUTS if fs.exists(posixpath.join(root, name))]
    if not existing:
        return
    if not overwrite:
        raise DataError(
            f"{url}: output already holds {existing} (a prepared dataset, or what a crashed run left); "
            "pass --overwrite to replace it"
        )
    _remove(fs, root, existing)


def _remove(fs: Any, root: str, names: list[str]) -> None:
    """Delete the named outputs under `root` (in order, `dataset.json` first when listed) that exist."""
    for name in names:
        if fs.exists(posixpath.join(root, name)):
            fs.rm(posixpath.join(root, name), recursive=True)


def _unique_key(video_id: str, used: set[str]) -> str:
    key, n = sample_key(video_id), 1
    while key in used:
        n += 1
        key = f"{sample_key(video_id)}_{n}"
    used.add(key)
    return key


def _write_parquet(fs: Any, path: str, rows: list[dict[str, Any]]) -> None:
    with fs.open(path, "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)


def read_dataset_info(url: str) -> dict[str, Any]:
    """The `dataset.json` of a prepared dataset; a missing one means not prepared or not finished."""
    path = posixpath.join(url.rstrip("/"), "dataset.json")
    try:
        with fsspec.open(path, "r") as f:
            info = json.load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{url}: no dataset.json (not a prepared dataset, or its prepare did not finish)"
        ) from exc
    except (ValueError, RecursionError) as exc:  # also bytes that are not UTF-8 (a pickle, say)
        raise DataError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != DATASET_FORMAT:
        raise DataError(f"{path}: expected format {DATASET_FORMAT!r}")
    return info


def read_manifest(url: str) -> pa.Table:
    """`manifest.parquet`: one row per video (shard, key, video_id, n_queries, n_clips, duration, split).

    Shard paths are checked like `shard_urls` does, so a row can never point outside the dataset.
    """
    table = _read_table(url, "manifest.parquet")
    _checked_shards(table, f"{url}/manifest.parquet")
    return table


def read_shard_table(url: str) -> pa.Table:
    """`shards.parquet`: one row per shard (shard, sha256, bytes, n_videos, n_queries)."""
    return _read_table(url, "shards.parquet")


def shard_urls(url: str) -> list[str]:
    """Full URLs of the dataset's shards, in order; a listed path that could leave the root is refused."""
    read_dataset_info(url)
    root = url.rstrip("/")
    return [f"{root}/{shard}" for shard in _checked_shards(read_shard_table(url), f"{url}/shards.parquet")]


def shard_checksums(url: str) -> dict[str, str]:
    """Shard URL -> expected sha256, from the dataset's `shards.parquet`."""
    table = read_shard_table(url)
    root = url.rstrip("/")
    shards = _checked_shards(table, f"{url}/shards.parquet")
    return {f"{root}/{s}": h for s, h in zip(shards, table.column("sha256").to_pylist())}


def _checked_shards(table: pa.Table, source: str) -> list[str]:
    """The table's `shard` column, each entry required to be `shards/shard-NNNNNN.tar` (no `..`, no root)."""
    if "shard" not in table.column_names:
        raise DataError(f"{source}: no 'shard' column")
    shards = table.column("shard").to_pylist()
    for shard in shards:
        if not isinstance(shard, str) or not SHARD_PATH.match(shard):
            raise DataError(f"{source}: shard path {shard!r} is not of the form shards/shard-NNNNNN.tar")
    return shards


def _read_table(url: str, name: str) -> pa.Table:
    path = posixpath.join(url.rstrip("/"), name)
    try:
        with fsspec.open(path, "rb") as f:
            return pq.read_table(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{url}: no {name} (not a prepared dataset)") from exc
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: not a valid Parquet file ({exc})") from exc
