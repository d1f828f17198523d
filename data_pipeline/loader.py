"""Read prepared shards into padded batches of whole video groups.

A webdataset pipeline over a list of shard URLs (any fsspec URL): each shard is read, its sha256
checked against the dataset's `shards.parquet` (when `DataConfig.verify_checksums`), expanded
with webdataset's tar iterator, decoded with the strict, pickle-free `decode_sample`, shuffled
with a buffer seeded by (seed, epoch), and cut into batches that respect the query and video
budgets without ever splitting a video's queries.

Failure policy: a tampered shard (sha256 mismatch) or a listed shard that is absent stops the
run with a `DataError`/`FileNotFoundError` naming it; a corrupt sample (truncated tar, member
with a wrong extension, JSON off-schema, bad array, features of another shape than the dataset's,
a member declaring more bytes than its bound) is skipped and counted in
`BatchStream.corrupt_samples`, and the run stops once more than `max_corrupt_samples` are seen.

Memory bound: a tar member's declared size is checked before its bytes are read (a compressed shard
cannot inflate a member past it) against `SampleLimits`: what the dataset's manifest and dataset.json
allow for that sample, and `data.max_sample_mb` for every member.
"""

from __future__ import annotations

import functools
import hashlib
import io
import lzma
import queue
import random
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys

from data_pipeline.batch import Batch, budget_batches, collate
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.features import NPY_HEADER_BYTES
from data_pipeline.sample import decode_sample
from data_pipeline.shards import read_dataset_info, read_manifest, shard_checksums
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup

JSON_BYTES, JSON_BYTES_PER_QUERY = 1 << 20, 1 << 16  # bound on a sample's .json: a base plus per query


@dataclass
class CorruptLog:
    """A webdataset exception handler that skips corrupt samples, keeping each message, up to `limit`."""

    limit: int
    messages: list[str] = field(default_factory=list)

    def __call__(self, exc: Exception) -> bool:
        self.messages.append(f"{type(exc).__name__}: {exc}")
        _check_limit(self.messages, self.limit)
        return True


def _check_limit(messages: Sequence[str], limit: int) -> None:
    if len(messages) > limit:
        raise DataError(
            f"{len(messages)} corrupt samples, more than max_corrupt_samples={limit}; last: {messages[-1]}"
        )


class BatchStream(Iterator[Batch]):
    """The batches of one epoch, with the corrupt samples skipped so far (for the trainer to log)."""

    def __init__(self, items: Iterator[tuple[Batch | None, int, tuple[str, ...]]], limit: int):
        self._items = items
        self._limit = limit
        self._per_worker: dict[int, tuple[str, ...]] = {}

    @property
    def corrupt_messages(self) -> list[str]:
        """What was wrong with each skipped sample (shard URL and key included)."""
        return [m for _, msgs in sorted(self._per_worker.items()) for m in msgs]

    @property
    def corrupt_samples(self) -> int:
        """Corrupt samples skipped so far in this epoch, over all loader workers."""
        return sum(len(m) for m in self._per_worker.values())

    def __next__(self) -> Batch:
        for batch, worker, messages in self._items:
            self._per_worker[worker] = messages
            _check_limit(self.corrupt_messages, self._limit)
            if batch is not None:
                return batch
        raise StopIteration


def iter_batches(
    shard_urls: Sequence[str],
    vocab: Vocab,
    data_cfg: DataConfig,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
) -> BatchStream:
    """The batches of one epoch over `shard_urls`: shards and video groups shuffled by (seed, epoch).

    With `data_cfg.loader_workers > 0` shards are split round-robin over torch DataLoader
    workers that decode and collate in parallel (batch order then depends on timing).
    """
    urls = list(shard_urls)
    if not urls:
        raise ValueError("no shard URLs to read")
    if shuffle:
        random.Random(f"shards/{seed}/{epoch}").shuffle(urls)
    dataset = _EpochBatches(urls, vocab, data_cfg, seed, epoch, shuffle)
    if data_cfg.loader_workers == 0:
        items = iter(dataset)
    else:
        items = iter(
            torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=data_cfg.loader_workers, collate_fn=_identity
            )
        )
    if data_cfg.prefetch_batches > 0:
        items = Prefetch(items, data_cfg.prefetch_batches)
    return BatchStream(items, data_cfg.max_corrupt_samples)


class Prefetch(Iterator):
    """Iterate `items` in a background thread, up to `depth` items ahead of the consumer.

    Reading, checksumming and decoding the next batch (I/O and numpy, which release the GIL) overlap the
    training step, so the loop does not wait for data. Order is unchanged; an exception raised by `items`
    is raised by `__next__` at its place in the stream. A consumer that stops early (lockstep abandoning a
    repeat pass) lets the object be collected, which stops the thread.
    """

    _END = object()

    def __init__(self, items: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        # The thread holds the queue and the event, never `self`, so `self` can be collected and `__del__` runs.
        threading.Thread(target=_fill, args=(items, self._queue, self._stop), daemon=True).start()

    def __next__(self) -> object:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is Prefetch._END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread (it exits at its next hand-over)."""
        self._stop.set()

    __del__ = close


@dataclass
class _Raised:
    error: BaseException


def _fill(items: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    """The prefetch thread: put every item, then the end marker (or what went wrong), until `stop` is set."""

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in items:
            if not put(item):
                return
        put(Prefetch._END)
    except Exception as exc:  # handed to the consumer, raised there
        put(_Raised(exc))


def iter_video_groups(
    shard_urls: Sequence[str],
    data_cfg: DataConfig,
    corrupt: CorruptLog,
    rng: random.Random | None = None,
) -> Iterator[VideoGroup]:
    """Decoded video groups of `shard_urls` in order, or shuffled through a buffer when `rng` is given."""
    limits = SampleLimits(shard_urls, int(data_cfg.max_sample_mb * 2**20))
    stages = [
        wds.SimpleShardList(list(shard_urls)),
        functools.partial(
            _open_shards, checksums=_checksums(shard_urls) if data_cfg.verify_checksums else None
        ),
        functools.partial(_tar_members, limits=limits, handler=corrupt),
        functools.partial(group_by_keys, handler=corrupt),
        wds.map(limits.decode, handler=corrupt),
    ]
    if rng is not None and data_cfg.shuffle_buffer > 1:
        stages.append(wds.shuffle(data_cfg.shuffle_buffer, initial=data_cfg.shuffle_buffer, rng=rng))
    return iter(wds.DataPipeline(*stages))


def check_batch_budget(dataset_url: str, data_cfg: DataConfig) -> None:
    """Refuse, before training starts, a dataset holding a video with more queries than the batch budget."""
    manifest = read_manifest(dataset_url)
    counts = manifest.column("n_queries").to_pylist()
    if counts and max(counts) > data_cfg.max_queries_per_batch:
        video = manifest.column("video_id")[counts.index(max(counts))].as_py()
        raise ValueError(
            f"{dataset_url}: video {video!r} has {max(counts)} queries but data.max_queries_per_batch="
            f"{data_cfg.max_queries_per_batch}; a video group is never split, so raise the budget"
        )


class _EpochBatches(torch.utils.data.IterableDataset):
    """(batch, worker id, corrupt messages) items of one epoch; a final `None` batch carries the last count."""

    def __init__(self, urls: list[str], vocab: Vocab, cfg: DataConfig, seed: int, epoch: int, shuffle: bool):
        super().__init__()
        self.urls, self.vocab, self.cfg = urls, vocab, cfg
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle

    def __iter__(self) -> Iterator[tuple[Batch | None, int, tuple[str, ...]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        urls = self.urls[worker::workers]
        corrupt = CorruptLog(self.cfg.max_corrupt_samples)
        if urls:
            rng = random.Random(f"groups/{self.seed}/{self.epoch}/{worker}") if self.shuffle else None
            groups = iter_video_groups(urls, self.cfg, corrupt, rng)
            for chunk in budget_batches(
                groups, self.cfg.max_queries_per_batch, self.cfg.max_videos_per_batch
            ):
                batch = collate(chunk, self.vocab, self.cfg.max_clips, self.cfg.max_words)
                yield batch, worker, tuple(corrupt.messages)
        yield None, worker, tuple(corrupt.messages)


def _identity(item: object) -> object:
    return item


class SampleLimits:
    """What the samples of a prepared dataset may hold, from its `dataset.json` and manifest: features of its
    (tokens per clip, dim), and per sample key a bound on each member's bytes (`.npy`: n_clips x tokens x dim x
    4 + a header; `.json`: `JSON_BYTES` + `JSON_BYTES_PER_QUERY` per query). Every member is also capped at
    `cap` bytes, which alone applies to shards outside a prepared dataset layout."""

    def __init__(self, shard_urls: Sequence[str], cap: int):
        self.cap = cap
        self.shapes: dict[str, tuple[int, int]] = {}
        self.members: dict[tuple[str, str], dict[str, int]] = {}
        if not shard_urls or any("/shards/" not in url for url in shard_urls):
            return
        for root in sorted({_root(url) for url in shard_urls}):
            info, manifest = read_dataset_info(root), read_manifest(root)
            try:
                tokens, dim = int(info["tokens_per_clip"]), int(info["feature_dim"])
                rows = zip(*(manifest.column(c).to_pylist() for c in ("key", "n_clips", "n_queries")))
                for key, clips, queries in rows:
                    self.members[root, key] = {
                        "npy": int(clips) * tokens * dim * 4 + NPY_HEADER_BYTES,
                        "json": JSON_BYTES + int(queries) * JSON_BYTES_PER_QUERY,
                    }
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{root}: dataset.json or manifest.parquet lacks sample sizes ({exc})"
                ) from exc
            self.shapes[root] = (tokens, dim)
        if len(set(self.shapes.values())) > 1:
            raise DataError(f"the datasets disagree on (tokens per clip, feature dim): {self.shapes}")

    def refusal(self, url: str, name: str, size: int) -> DataError | None:
        """Why member `name` of shard `url`, declaring `size` bytes, must not be read; None when it may."""
        key, ext = base_plus_ext(name)
        bound = self.members.get((_root(url), key), {}).get(ext, self.cap)
        if size <= min(bound, self.cap):
            return None
        source = "data.max_sample_mb" if bound >= self.cap else "the manifest's size of that sample"
        return DataError(
            f"{url} [{name}]: member declares {size} bytes, over its bound of {min(bound, self.cap)} ({source}); "
            "not read"
        )

    def decode(self, sample: dict[str, Any]) -> VideoGroup:
        """`decode_sample`, raising for a member refused by size, and requiring the dataset's feature shape."""
        for value in sample.values():
            if isinstance(value, DataError):
                raise value
        return decode_sample(sample, self.shapes.get(_root(str(sample.get("__url__", "")))))


def _root(url: str) -> str:
    return url.rsplit("/shards/", 1)[0]


def _tar_members(
    sources: Iterable[dict[str, Any]], limits: SampleLimits, handler: Callable[[Exception], bool]
) -> Iterator[dict[str, Any]]:
    """webdataset's `tar_file_expander` with every member's declared size checked before it is read.

    A member over its bound travels as its `DataError` (its sample is then counted as corrupt once);
    links and other non-regular members are skipped, never followed; `{}` ends each shard.
    """
    for source in sources:
        url = source["url"]
        try:
            with tarfile.open(fileobj=source["stream"], mode="r|*") as tar:
                for info in tar:
                    if info.isreg():
                        refused = limits.refusal(url, info.name, info.size)
                        data = refused or tar.extractfile(info).read()
                        yield {"fname": info.name, "data": data, "__url__": url}
                    tar.members = []  # stream mode keeps every header otherwise
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            exc.args = (f"{url}: {exc}",)
            if not handler(exc):
                return
        yield {}


def _checksums(shard_urls: Sequence[str]) -> dict[str, str]:
    """Expected sha256 of each shard, from the `shards.parquet` of the dataset holding it."""
    roots = {_root(url) for url in shard_urls}
    if any("/shards/" not in url for url in shard_urls):
        raise DataError(
            "checksums need shard URLs inside a prepared dataset (<root>/shards/shard-NNNNNN.tar)"
        )
    expected: dict[str, str] = {}
    for root in sorted(roots):
        expected.update(shard_checksums(root))
    return expected


def _open_shards(
    sources: Iterable[dict[str, str]], checksums: dict[str, str] | None
) -> Iterator[dict[str, object]]:
    """`{url, stream}` per shard, read whole so its sha256 is checked before a byte of it is used."""
    for url in (source["url"] for source in sources):
        try:
            with fsspec.open(url, "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{url}: shard is listed but absent") from exc
        if checksums is not None:
            if url not in checksums:
                raise DataError(f"{url}: shard is not listed in its dataset's shards.parquet")
            actual = hashlib.sha256(data).hexdigest()
            if actual != checksums[url]:
                raise DataError(
                    f"{url}: sha256 {actual} does not match shards.parquet ({checksums[url]}); tampered or corrupt"
                )
        yield {"url": url, "stream": io.BytesIO(data)}
