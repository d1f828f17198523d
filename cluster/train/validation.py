"""Validation on held-out shards, sharded across the training workers, gathered into one table on rank 0.

Each rank predicts the queries of its own validation shards (the same LPT assignment as training, fixed
across epochs); ranks step in lockstep so ZeRO-3's parameter gathers line up, and the predictions of
repeated batches are discarded. Rank 0 gathers every rank's predictions and scores them all at once,
so the metrics are those of the whole validation set, not an average of per-rank averages.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from cluster.train.assign import DatasetShards, assign_shards
from cluster.train.engine import EngineModel
from cluster.train.lockstep import lockstep
from data_pipeline.batch import Batch
from data_pipeline.config import DataConfig
from data_pipeline.loader import iter_batches
from data_pipeline.text import Vocab
from mktn.metrics import grounding_metrics


@torch.no_grad()
def validate(
    engine: Any,
    val: DatasetShards,
    vocab: Vocab,
    data_cfg: DataConfig,
    rank: int,
    world: int,
    device: torch.device,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, prediction rows) of the whole validation set on rank 0; ({}, []) on the other ranks."""
    engine.eval()
    urls = [s.url for s in assign_shards(val.shards, world, seed=0, epoch=0).per_rank[rank]]
    rows: list[dict[str, Any]] = []
    for step in lockstep(lambda _: iter_batches(urls, vocab, data_cfg, shuffle=False), device):
        batch = step.batch.to(device)
        output = EngineModel.output(engine(batch, compute_loss=False))
        if step.fresh:
            rows += prediction_rows(batch, engine.module.model.decode(output, batch, top_k=5))
    engine.train()
    gathered: list[list[dict[str, Any]] | None] = [None] * world if rank == 0 else []
    if dist.is_initialized():
        dist.gather_object(rows, gathered if rank == 0 else None, dst=0)
    else:
        gathered = [rows]
    if rank != 0:
        return {}, []
    everything = [row for part in gathered for row in part or []]
    metrics = grounding_metrics([r["pred"] for r in everything], [r["gt"] for r in everything])
    metrics["queries"] = float(len(everything))
    return metrics, everything


def prediction_rows(batch: Batch, moments: list[list[tuple[float, float, float]]]) -> list[dict[str, Any]]:
    """One JSON-able row per query: ids, sentence, video duration, ground truth and ranked moments (seconds)."""
    return [
        {
            "query_id": batch.query_ids[j],
            "video_id": batch.video_ids[int(batch.query_video[j])],
            "sentence": batch.sentences[j],
            "duration": float(batch.durations[int(batch.query_video[j])]),
            "gt": [float(x) for x in batch.times[j].tolist()],
            "pred": [[float(x) for x in m] for m in moments[j]],
        }
        for j in range(batch.num_queries)
    ]
