"""Everything the training workers need, decided once on the driver and shipped to every rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.job.config import JobConfig
from cluster.train.assign import DatasetShards, assign_shards, steps_lower_bound
from cluster.train.deepspeed_config import deepspeed_config


@dataclass
class TrainPlan:
    """The job, its data, the planned schedule, the DeepSpeed config and where metrics go."""

    job: JobConfig
    output: str  # the driver's run folder (absolute)
    train: DatasetShards
    val: DatasetShards
    vocab_json: str
    features: dict[str, Any]  # feature_dim, tokens_per_clip, dataset
    planned_steps: int  # micro-steps the LR schedule and AVM's threshold schedule are laid out over
    ds_config: dict[str, Any]
    run_id: str
    sink: Any  # the MetricSink actor handle


def build_plan(
    job: JobConfig,
    output: str,
    train: DatasetShards,
    val: DatasetShards,
    vocab_json: str,
    features: dict[str, Any],
    run_id: str,
    sink: Any,
) -> TrainPlan:
    """Plan the schedule from the manifest: per epoch, the busiest rank's batch count (a lower bound, see
    `steps_lower_bound`), summed over epochs; then the DeepSpeed config for that many optimizer steps."""
    workers, data = job.cluster.num_workers, job.data
    planned = sum(
        steps_lower_bound(
            assign_shards(train.shards, workers, job.train.seed, epoch),
            data.max_queries_per_batch,
            data.max_videos_per_batch,
        )
        for epoch in range(job.train.epochs)
    )
    ds_config = deepspeed_config(job, workers, optimizer_steps=max(planned // job.train.grad_accum, 1))
    return TrainPlan(job, output, train, val, vocab_json, features, planned, ds_config, run_id, sink)
