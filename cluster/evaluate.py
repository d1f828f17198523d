"""Single-process evaluation of a trained model on prepared shards: the metrics table and inference QPS/VPS.

Multi-pair inference: each batch holds whole video groups, so a video is encoded once for all its
queries. Throughput counts the model's forward pass and decoding only (not reading shards), and skips
the first batch as warm-up (unless there is only one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from data_pipeline.config import DataConfig
from data_pipeline.loader import iter_batches
from data_pipeline.shards import read_dataset_info, shard_urls
from mktn.metrics import grounding_metrics
from mktn.model import MKTN


@dataclass
class EvalResult:
    """Metrics (percent) of every query of a dataset, with the work and time inference took."""

    metrics: dict[str, float]
    queries: int
    videos: int
    seconds: float  # forward + decode, after warm-up
    timed_queries: int
    timed_videos: int

    @property
    def qps(self) -> float:
        return self.timed_queries / max(self.seconds, 1e-9)

    @property
    def vps(self) -> float:
        return self.timed_videos / max(self.seconds, 1e-9)

    def to_json(self) -> dict[str, Any]:
        return self.metrics | {
            "queries": self.queries,
            "videos": self.videos,
            "inference_qps": self.qps,
            "inference_vps": self.vps,
        }


@torch.no_grad()
def evaluate(model: MKTN, dataset_url: str, data_cfg: DataConfig | None = None) -> EvalResult:
    """Ground every query of the prepared dataset at `dataset_url` with `model` (eval mode, top-5 decoded)."""
    info = read_dataset_info(dataset_url)
    if (info["feature_dim"], info["tokens_per_clip"]) != (model.feature_dim, model.tokens_per_clip):
        raise ValueError(
            f"{dataset_url}: features are {info['tokens_per_clip']} tokens/clip of dim {info['feature_dim']}; "
            f"the model was trained on {model.tokens_per_clip} tokens/clip of dim {model.feature_dim}"
        )
    cfg = (data_cfg or DataConfig()).model_copy(update={"max_clips": model.max_clips})
    model.eval()
    preds, gts = [], []
    videos = queries = timed_videos = timed_queries = 0
    seconds = 0.0
    batches = iter_batches(shard_urls(dataset_url), model.vocab, cfg, shuffle=False)
    for i, batch in enumerate(tqdm(batches, desc=f"evaluating {dataset_url}", unit="batch")):
        started = time.perf_counter()
        preds += model.decode(model(batch, compute_loss=False), batch, top_k=5)
        elapsed = time.perf_counter() - started
        gts += [tuple(t) for t in batch.times.tolist()]
        videos, queries = videos + batch.num_videos, queries + batch.num_queries
        if i > 0:
            seconds += elapsed
            timed_videos, timed_queries = timed_videos + batch.num_videos, timed_queries + batch.num_queries
    if timed_queries == 0:  # a single batch: time it anyway
        seconds, timed_videos, timed_queries = elapsed, videos, queries
    return EvalResult(grounding_metrics(preds, gts), queries, videos, seconds, timed_queries, timed_videos)
