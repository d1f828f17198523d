"""Read prepared shards into padded batches of whole video groups.

A webdataset pipeline over a list of shard URLs (any fsspec URL): each shard is read, its sha256
checked against the dataset's `shards.parquet` (when `DataConfig.verify_checksums`), expanded
with webdataset's tar iterator, decoded with the strict, pickle-free `decode_sample`, shuffled
with a buffer seeded by (seed, epoch), and cut into batches that respect the query and video
budgets without ever splitting a video's queries.

Failure policy: a tampered shard (sha256 mismatch) or a listed shard that is absent stops the
run with a `DataError`/`FileNotFoundError` naming it; a corrupt sample (truncated tar, member
with a wrong extension, JSON off-schema, bad array) is skipped and counted in
`BatchStream.corrupt_samples`, and the run stops once more than `max_corrupt_samples` are seen.
"""

from __future__ import annotations

import functools
import hashlib
import io
import queue
import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import fsspec
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_pipeline.batch import Batch, budget_batches, collate
from data_pipeline.config import DataConfig
from data_pipeline.errors import DataError
from data_pipeline.sample import decode_sample
from data_pipeline.shards import read_manifest, shard_checksums
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup


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
    stages = [
        wds.SimpleShardList(list(shard_urls)),
        functools.partial(
            _open_shards, checksums=_checksums(shard_urls) if data_cfg.verify_checksums else None
        ),
        functools.partial(tar_file_expander, handler=corrupt),
        functools.partial(group_by_keys, handler=corrupt),
        wds.map(decode_sample, handler=corrupt),
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


def _checksums(shard_urls: Sequence[str]) -> dict[str, str]:
    """Expected sha256 of each shard, from the `shards.parquet` of the dataset holding it."""
    roots = {url.rsplit("/shards/", 1)[0] for url in shard_urls}
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
