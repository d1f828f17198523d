"""Equal step counts on every rank, without dropping data.

Workers hold different shards, so their loaders run out after different numbers of batches. Every
collective (DeepSpeed's gradient all-reduce, ZeRO-3's parameter gathers, `ray.train.report`) needs all
ranks, so a rank that stopped early would leave the others hanging. Before each step the ranks agree,
with one all-reduce(MAX) of a "still have fresh data" flag, whether anyone has fresh data left. A rank
that ran out early repeats its own batches from the start (a new pass over its shards) until everyone
is done; those steps are marked `fresh=False`. Nothing is dropped: every fresh batch of every rank is
used; the repeats are extra steps (training counts them as `train/repeat_steps`; validation discards
their predictions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data_pipeline.batch import Batch


@dataclass
class Step:
    """One step's batch, whether it is fresh data (not a repeat), and the seconds spent waiting for it."""

    batch: Batch
    fresh: bool
    data_wait_s: float


def lockstep(make_batches: Callable[[int], Iterator[Batch]], device: torch.device) -> Iterator[Step]:
    """Steps until no rank has fresh batches; `make_batches(n)` starts pass `n` over this rank's shards."""
    passes, stream, exhausted = 0, make_batches(0), False
    while True:
        started = time.perf_counter()
        batch = None if exhausted else next(stream, None)
        waited = time.perf_counter() - started
        exhausted = batch is None
        flag = torch.tensor([0.0 if exhausted else 1.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() == 0:
            return
        if exhausted:
            started = time.perf_counter()
            batch = next(stream, None)
            if batch is None:
                passes += 1
                stream = make_batches(passes)
                batch = next(stream, None)
            if batch is None:
                raise RuntimeError("this rank's shards yielded no batch at all (every sample corrupt?)")
            waited += time.perf_counter() - started
        yield Step(batch, fresh=not exhausted, data_wait_s=waited)
