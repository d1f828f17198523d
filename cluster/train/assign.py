"""Whole shards to Ray Train workers, balanced by query count.

A shard holds whole video groups (one sample per video, all its queries inside), so handing each worker
whole shards keeps every pair of a video on one worker; the loader then keeps them in one batch. Ray Data's
`streaming_split` could cut a block between workers, which is why the assignment is done here from the
dataset's `manifest.parquet`.

Balance: greedy LPT (longest processing time first): shards in decreasing query count, each to the worker
with the fewest queries so far; its makespan is at most 4/3 of the optimum. Per epoch, ties are broken by
a seeded shuffle and the resulting bins are dealt to ranks in a seeded order, so a worker sees other
shards from epoch to epoch while the balance stays the same.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pyarrow.compute as pc

from data_pipeline.shards import read_manifest, shard_urls


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a prepared dataset and what it holds."""

    url: str
    videos: int
    queries: int


@dataclass(frozen=True)
class DatasetShards:
    """The shards of a prepared dataset, read from its manifest, with its largest video group."""

    url: str
    shards: tuple[ShardInfo, ...]
    max_group_queries: int

    @property
    def queries(self) -> int:
        return sum(s.queries for s in self.shards)

    @property
    def videos(self) -> int:
        return sum(s.videos for s in self.shards)


@dataclass(frozen=True)
class Assignment:
    """The shards of each rank for one epoch (`per_rank[r]` belongs to world rank r)."""

    per_rank: tuple[tuple[ShardInfo, ...], ...]

    @property
    def queries(self) -> list[int]:
        return [sum(s.queries for s in shards) for shards in self.per_rank]

    @property
    def videos(self) -> list[int]:
        return [sum(s.videos for s in shards) for shards in self.per_rank]

    @property
    def imbalance(self) -> float:
        """Most-loaded rank's queries over the mean (1.0 = perfectly balanced)."""
        queries = self.queries
        return max(queries) * len(queries) / max(sum(queries), 1)


def read_dataset_shards(url: str) -> DatasetShards:
    """Per-shard video and query counts of the prepared dataset at `url`, from its `manifest.parquet`.

    A manifest row naming a shard that `shards.parquet` does not list is an error (the dataset is
    inconsistent); so is a listed shard without any video.
    """
    root = url.rstrip("/")
    manifest = read_manifest(url)
    counts = manifest.group_by("shard").aggregate([("n_queries", "sum"), ("video_id", "count")])
    per_shard = {
        f"{root}/{shard}": (videos, queries)
        for shard, queries, videos in zip(
            counts.column("shard").to_pylist(),
            counts.column("n_queries_sum").to_pylist(),
            counts.column("video_id_count").to_pylist(),
        )
    }
    listed = shard_urls(url)
    unknown = sorted(set(per_shard) - set(listed))
    if unknown:
        raise ValueError(
            f"{url}/manifest.parquet: rows name shards absent from shards.parquet: {unknown[:3]}"
        )
    empty = [u for u in listed if u not in per_shard]
    if empty:
        raise ValueError(f"{url}/shards.parquet: shards without any video in manifest.parquet: {empty[:3]}")
    shards = tuple(ShardInfo(u, *per_shard[u]) for u in listed)
    max_group = int(pc.max(manifest.column("n_queries")).as_py() or 0)
    return DatasetShards(url=url, shards=shards, max_group_queries=max_group)


def assign_shards(shards: tuple[ShardInfo, ...], num_workers: int, seed: int, epoch: int) -> Assignment:
    """Deal whole shards to `num_workers` ranks by greedy LPT on query counts, reshuffled by (seed, epoch).

    Every rank computes the same assignment from the same inputs, so no communication is needed.
    """
    if len(shards) < num_workers:
        raise ValueError(
            f"{len(shards)} shards cannot feed {num_workers} workers (each needs at least one whole shard); "
            "prepare the dataset with a smaller --shard-size-mb or use fewer workers"
        )
    rng = random.Random(f"assign/{seed}/{epoch}")
    order = list(shards)
    rng.shuffle(order)  # random tie-breaking among shards of equal size
    order.sort(key=lambda s: s.queries, reverse=True)  # stable: LPT order
    bins: list[list[ShardInfo]] = [[] for _ in range(num_workers)]
    loads = [0] * num_workers
    for shard in order:
        target = min(range(num_workers), key=lambda r: (loads[r], len(bins[r])))
        bins[target].append(shard)
        loads[target] += shard.queries
    rng.shuffle(bins)  # which rank gets which bin changes per epoch
    return Assignment(per_rank=tuple(tuple(b) for b in bins))


def steps_lower_bound(assignment: Assignment, max_queries: int, max_videos: int) -> int:
    """Fewest batches the busiest rank can need this epoch under the query and video budgets.

    The loader packs whole video groups, so a batch may hold fewer queries than the budget: the true count
    can be somewhat higher. Used to plan the LR schedule; the trainer runs however many batches there are.
    """
    return max(
        max(math.ceil(q / max_queries), math.ceil(v / max_videos))
        for q, v in zip(assignment.queries, assignment.videos)
    )
