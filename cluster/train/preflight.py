"""Reject a job that cannot run, before Ray starts a single worker.

Every problem found is listed in one error, each naming the config key and what would work instead,
so a user fixes them all at once rather than meeting them one by one deep inside a worker.
"""

from __future__ import annotations

from cluster.job.config import JobConfig
from cluster.train.assign import DatasetShards
from cluster.train.deepspeed_config import ZERO_SHARDABLE, resolve_precision
from mktn.metrics import METRIC_KEYS


def check_job(job: JobConfig, train: DatasetShards, val: DatasetShards, resources: dict[str, float]) -> None:
    """Raise ValueError listing every reason `job` cannot run on a cluster offering `resources`
    (total CPU/GPU counts) with these training and validation shards."""
    problems = (
        _resource_problems(job, resources)
        + _deepspeed_problems(job)
        + [p for data in (train, val) for p in _data_problems(job, data)]
    )
    if job.train.best_metric not in METRIC_KEYS:
        problems.append(
            f"train.best_metric={job.train.best_metric!r}: expected one of {', '.join(METRIC_KEYS)}"
        )
    if problems:
        raise ValueError("the job cannot run:\n  " + "\n  ".join(problems))


def _resource_problems(job: JobConfig, resources: dict[str, float]) -> list[str]:
    cluster = job.cluster
    needs = {"CPU": cluster.num_workers * cluster.cpus_per_worker}
    if cluster.use_gpu:
        needs["GPU"] = cluster.num_workers * cluster.gpus_per_worker
    return [
        f"cluster.num_workers={cluster.num_workers} needs {need:g} {kind} "
        f"({cluster.num_workers} x {cluster.cpus_per_worker if kind == 'CPU' else cluster.gpus_per_worker:g}) "
        f"but the cluster has {resources.get(kind, 0):g}"
        for kind, need in needs.items()
        if need > resources.get(kind, 0)
    ]


def _deepspeed_problems(job: JobConfig) -> list[str]:
    ds, problems = job.deepspeed, []
    precision = resolve_precision(ds.precision, job.cluster.use_gpu)
    if precision != "fp32" and not job.cluster.use_gpu:
        problems.append(
            f"deepspeed.precision={ds.precision} needs GPUs (cluster.use_gpu=true); on CPU use fp32 or auto "
            "(DeepSpeed's fp16 is GPU-only and bf16 with ZeRO-0/1 loses accuracy on CPU, DeepSpeed #3979)"
        )
    untested_allowed = bool(ds.overrides.get("zero_allow_untested_optimizer"))
    if ds.zero_stage > 0 and ds.optimizer not in ZERO_SHARDABLE and not untested_allowed:
        problems.append(
            f"deepspeed.optimizer={ds.optimizer} cannot be sharded by ZeRO stage {ds.zero_stage} "
            f"(DeepSpeed shards {', '.join(sorted(ZERO_SHARDABLE))}); use deepspeed.optimizer=adamw "
            "or deepspeed.zero_stage=0"
        )
    if ds.offload_optimizer and ds.zero_stage == 0:
        problems.append("deepspeed.offload_optimizer=true needs deepspeed.zero_stage 1, 2 or 3")
    return problems


def _data_problems(job: JobConfig, data: DatasetShards) -> list[str]:
    problems = []
    workers = job.cluster.num_workers
    if len(data.shards) < workers:
        problems.append(
            f"{data.url}: {len(data.shards)} shards for cluster.num_workers={workers}: each worker needs at least "
            "one whole shard; prepare it with a smaller --shard-size-mb or use fewer workers"
        )
    budget = job.data.max_queries_per_batch
    if data.max_group_queries > budget:
        problems.append(
            f"data.max_queries_per_batch={budget} is smaller than the largest video group of {data.url} "
            f"({data.max_group_queries} queries); a video's queries are never split, so raise it"
        )
    return problems
