"""Knowledge-transfer health: whether each cross-pair module tells a query's own video from the batch's others.

Computed on the pair embeddings of a batch (`ModelOutput.pairs`), summed over batches and workers, and
reported as means under `transfer/`:

- `avm_top1`, `opm_top1`, `apa_top1`: share of queries whose own video scores strictly highest among the
  batch's videos by AVM's score (Eq. 1 on F'), S_op and S_es; compare with
- `chance`: mean of 1 / videos in the batch (what a module that knows nothing scores);
- `avm_gap`: mean own-video AVM score minus mean other-video score;
- `negatives_kept`: share of candidate negatives (other videos) that AVM's selection (Eq. 1-2) keeps;
- `sentence_cosine`: mean cosine between the sentence features q_e of distinct queries (near 1 = collapsed).

A module that has collapsed scores near chance with a gap near 0; `tests/test_transfer.py` trains a small
model on structured synthetic data and requires each top-1 to reach 3x chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mktn.avm import negative_videos
from mktn.model import MKTN
from mktn.pairs import PairEmbeddings

HEALTH_KEYS = (
    "avm_top1",
    "opm_top1",
    "apa_top1",
    "chance",
    "avm_gap",
    "negatives_kept",
    "sentence_cosine",
)
PREFIX = "transfer/"


@dataclass
class TransferHealth:
    """Running sums (numerator, denominator) per health key; `means()` gives the `transfer/*` metrics."""

    sums: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, total: float, count: float) -> None:
        value = self.sums.setdefault(key, [0.0, 0.0])
        value[0] += total
        value[1] += count

    def merge(self, other: TransferHealth) -> TransferHealth:
        for key, (total, count) in other.sums.items():
            self.add(key, total, count)
        return self

    def as_tensor(self) -> Tensor:
        """(len(HEALTH_KEYS), 2) sums, zeros for absent keys: what workers all-reduce."""
        return torch.tensor([self.sums.get(k, [0.0, 0.0]) for k in HEALTH_KEYS], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, sums: Tensor) -> TransferHealth:
        health = cls()
        for key, (total, count) in zip(HEALTH_KEYS, sums.tolist()):
            if count > 0:
                health.add(key, total, count)
        return health

    def means(self) -> dict[str, float]:
        """`transfer/<key>` -> mean, for every key with data (modules that are off report nothing)."""
        return {PREFIX + k: t / c for k, (t, c) in self.sums.items() if c > 0}


def _top1(health: TransferHealth, key: str, scores: Tensor, query_video: Tensor) -> None:
    own = scores[query_video, torch.arange(len(query_video), device=scores.device)]
    others = scores.masked_fill(
        torch.arange(len(scores), device=scores.device)[:, None] == query_video[None, :], float("-inf")
    )
    health.add(key, float((own > others.amax(dim=0)).sum()), len(query_video))


@torch.no_grad()
def measure(model: MKTN, pairs: PairEmbeddings | None, phi: float) -> TransferHealth:
    """The health sums of one batch's pair embeddings (`ModelOutput.pairs`; None in single-pair mode)."""
    health = TransferHealth()
    if pairs is None or pairs.query_video is None:
        return health
    qv = pairs.query_video
    n_videos, n_queries = pairs.clip_mask.shape[0], len(qv)
    health.add("chance", n_queries / n_videos, n_queries)
    scores = model.pair_scores(pairs)
    for key, sim in (("avm_top1", scores.avm), ("opm_top1", scores.opm), ("apa_top1", scores.apa)):
        if sim is not None:
            _top1(health, key, sim.float(), qv)
    if scores.avm is not None:
        own = torch.arange(n_videos, device=qv.device)[:, None] == qv[None, :]
        avm = scores.avm.float()
        if n_videos > 1:
            gap = float(avm[own].mean() - avm[~own].mean())
            health.add("avm_gap", gap * n_queries, n_queries)
        kept = negative_videos(avm, qv, phi, model.cfg.avm.negative_selection)
        health.add("negatives_kept", float(kept.sum()), float((~own).sum()))
    if pairs.sentence is not None and n_queries > 1:
        unit = F.normalize(pairs.sentence.float(), dim=-1)
        cos = unit @ unit.T
        health.add("sentence_cosine", float(cos.sum() - cos.diagonal().sum()), n_queries * (n_queries - 1))
    return health
