"""A single-process reference loop (plain torch AdamW) over in-memory video groups.

It is what the learning test and `bench/ablations.py` use to check that the model learns, with no
Ray or DeepSpeed involved; distributed training lives in `cluster/`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from data_pipeline.batch import budget_batches, collate
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup
from mktn.metrics import grounding_metrics
from mktn.model import MKTN


@dataclass
class FitResult:
    """Metrics on the evaluation groups after training, the last epoch's mean loss, and the wall time."""

    metrics: dict[str, float]
    final_loss: float
    seconds: float


@torch.no_grad()
def evaluate(
    model: MKTN, groups: Sequence[VideoGroup], max_videos: int = 16, max_words: int = 30
) -> dict[str, float]:
    """`grounding_metrics` of `model` on `groups` (eval mode, decoded top-5)."""
    model.eval()
    preds, gts = [], []
    for chunk in budget_batches(groups, 10**9, max_videos):
        batch = collate(chunk, model.vocab, model.max_clips, max_words)
        preds += model.decode(model(batch, compute_loss=False), batch, top_k=5)
        gts += [(q.start, q.end) for g in chunk for q in g.queries]
    return grounding_metrics(preds, gts)


def fit(
    model: MKTN,
    train: Sequence[VideoGroup],
    val: Sequence[VideoGroup],
    epochs: int,
    lr: float,
    max_videos: int = 16,
    max_queries: int = 48,
    weight_decay: float = 0.01,
    warmup_frac: float = 0.1,
    grad_clip: float = 1.0,
    seed: int = 0,
    progress_bar: bool = False,
) -> FitResult:
    """Train `model` on `train` with AdamW (warm-up over `warmup_frac` of the steps, then cosine decay; gradients
    clipped to norm `grad_clip`, 0 = off), then evaluate on `val`. The defaults are `cluster`'s TrainConfig's."""
    torch.manual_seed(seed)
    order, groups = random.Random(seed), list(train)
    steps = epochs * sum(1 for _ in budget_batches(groups, max_queries, max_videos))
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=lr, total_steps=steps, pct_start=warmup_frac)
    start, step, last = time.perf_counter(), 0, 0.0
    for _ in tqdm(range(epochs), desc="epochs", disable=not progress_bar):
        model.train()
        order.shuffle(groups)
        batches = [
            collate(c, model.vocab, model.max_clips) for c in budget_batches(groups, max_queries, max_videos)
        ]
        total = 0.0
        for batch in batches:
            loss = model(batch, progress=step / max(steps - 1, 1)).losses["total"]
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optim.step()
            schedule.step()
            total += loss.item()
            step += 1
        last = total / len(batches)
    return FitResult(evaluate(model, val, max_videos), last, time.perf_counter() - start)


def synthetic_vocab(groups: Sequence[VideoGroup]) -> Vocab:
    """The vocabulary of every sentence of `groups`."""
    return Vocab.build(q.sentence for g in groups for q in g.queries)
