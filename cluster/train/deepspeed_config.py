"""The DeepSpeed JSON of a job, generated from its `deepspeed:` and `train:` sections.

One micro-batch is one budgeted batch of whole video groups (its size in queries varies), so
`train_micro_batch_size_per_gpu` is 1 and `train_batch_size` counts batches: world size x accumulation.
The LR schedule is DeepSpeed's `WarmupCosineLR` over the planned optimizer steps; past the plan it stays
at its floor (`cos_min_ratio`). On CPU the optimizer is torch's AdamW (`torch_adam`: no C++ op to build);
on GPUs DeepSpeed's fused Adam. `deepspeed.overrides` is merged last, key by key, so any DeepSpeed
setting can be reached from the YAML without a code change.
"""

from __future__ import annotations

import copy
from typing import Any

from cluster.job.config import JobConfig

OPTIMIZERS = {"adamw": "AdamW", "sgd": "SGD"}
# The optimizers DeepSpeed's ZeRO stages 1-3 shard (deepspeed.runtime.zero.utils.ZERO_SUPPORTED_OPTIMIZERS).
ZERO_SHARDABLE = {"adamw"}
COS_MIN_RATIO = 0.01


def resolve_precision(precision: str, use_gpu: bool) -> str:
    """`auto` -> bf16 on GPUs, fp32 on CPU (DeepSpeed's fp16 is GPU-only; bf16 + ZeRO-0/1 is wrong on CPU,
    DeepSpeed #3979)."""
    if precision == "auto":
        return "bf16" if use_gpu else "fp32"
    return precision


def deepspeed_config(job: JobConfig, world_size: int, optimizer_steps: int) -> dict[str, Any]:
    """The DeepSpeed config dict for `job` on `world_size` workers planned for `optimizer_steps` updates."""
    ds, train = job.deepspeed, job.train
    use_gpu = job.cluster.use_gpu
    precision = resolve_precision(ds.precision, use_gpu)
    optimizer_params: dict[str, Any] = {"lr": train.lr, "weight_decay": train.weight_decay}
    if ds.optimizer == "adamw" and not use_gpu:
        optimizer_params["torch_adam"] = True
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": world_size * train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "optimizer": {"type": OPTIMIZERS[ds.optimizer], "params": optimizer_params},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(optimizer_steps, 1),
                "warmup_num_steps": max(round(train.warmup_frac * optimizer_steps), 1),
                "warmup_type": "linear",
                "cos_min_ratio": COS_MIN_RATIO,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
    }
    return merge(config, ds.overrides)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in recursively (an override's leaf replaces the base's)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
