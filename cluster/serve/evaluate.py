"""`mktn eval`: a `Predictor` on prepared shards, in one process -> metrics, inference QPS/VPS, MLflow.

Multi-pair inference: each batch holds whole video groups, so a video is encoded once for all its
queries (`Predictor.ground`). Throughput counts the model's forward pass and decoding only (not reading
shards), and skips the first batch as warm-up (unless there is only one). `log_eval` records the result
in the model's training run when it is known, else in a new run of experiment `mktn-eval`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient
from tqdm import tqdm

from cluster.serve.predictor import Predictor
from cluster.tracking.retry import retrying
from cluster.tracking.runs import log_metrics, open_run
from cluster.tracking.store import default_tracking_uri, use_short_http_retries
from data_pipeline.loader import iter_batches
from data_pipeline.shards import read_dataset_info, shard_urls
from mktn.metrics import grounding_metrics

EVAL_EXPERIMENT = "mktn-eval"
PATIENCE_S = 300.0


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


def evaluate(predictor: Predictor, dataset_url: str) -> EvalResult:
    """Ground every query of the prepared dataset at `dataset_url` (top-5 decoded), read and batched with the
    predictor's data settings."""
    model = predictor.model
    info = read_dataset_info(dataset_url)
    if (info["feature_dim"], info["tokens_per_clip"]) != (model.feature_dim, model.tokens_per_clip):
        raise ValueError(
            f"{dataset_url}: features are {info['tokens_per_clip']} tokens/clip of dim {info['feature_dim']}; "
            f"the model was trained on {model.tokens_per_clip} tokens/clip of dim {model.feature_dim}"
        )
    cfg = predictor.data.model_copy(update={"max_clips": model.max_clips})
    preds, gts = [], []
    videos = queries = timed_videos = timed_queries = 0
    seconds = 0.0
    batches = iter_batches(shard_urls(dataset_url), model.vocab, cfg, shuffle=False)
    for i, batch in enumerate(tqdm(batches, desc=f"evaluating {dataset_url}", unit="batch")):
        started = time.perf_counter()
        preds += predictor.ground(batch, top_k=5)
        elapsed = time.perf_counter() - started
        gts += [tuple(t) for t in batch.times.tolist()]
        videos, queries = videos + batch.num_videos, queries + batch.num_queries
        if i > 0:
            seconds += elapsed
            timed_videos, timed_queries = timed_videos + batch.num_videos, timed_queries + batch.num_queries
    if timed_queries == 0:  # a single batch: time it anyway
        seconds, timed_videos, timed_queries = elapsed, videos, queries
    return EvalResult(grounding_metrics(preds, gts), queries, videos, seconds, timed_queries, timed_videos)


def log_eval(predictor: Predictor, result: EvalResult, data_url: str, model_ref: str) -> str:
    """Log `eval/<dataset>/<split>/<metric>` (and inference QPS/VPS) to the model's run, or to a new eval run;
    returns the run id."""
    use_short_http_retries()
    uri = predictor.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(".")
    client = MlflowClient(uri)
    run_id = predictor.run_id or open_run(
        client, EVAL_EXPERIMENT, tags={"model": model_ref, "data": data_url}, patience_s=PATIENCE_S
    )
    info = read_dataset_info(data_url)
    values = result.metrics | {"inference_qps": result.qps, "inference_vps": result.vps}
    prefix = f"eval/{info['dataset']}/{info['split']}"
    log_metrics(client, run_id, {f"{prefix}/{k}": v for k, v in values.items()}, PATIENCE_S)
    if predictor.run_id is None:
        retrying(client.set_terminated, run_id, what="closing the eval run", patience_s=PATIENCE_S)
    return run_id
