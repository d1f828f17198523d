"""ZeRO stages 0-3 with 2 workers: step time, memory per worker, checkpoint size and save/load time (issue 7).

Real DeepSpeed over gloo on CPU (DS_ACCELERATOR=cpu). For each model (the default of
configs/synthetic.yaml, and a wide variant with d_model=1024 where sharding matters) and each stage,
two fresh worker processes (forked from a server that has imported torch and DeepSpeed; each peak RSS
belongs to that configuration alone) build the model and its engine as training does
(`cluster.train.engine.build_engine`, with the DeepSpeed config of `cluster.train.deepspeed_config`), train
on their own synthetic batches, then save and load a checkpoint with `cluster.train.checkpoint`. Each worker
gets one thread (two workers share the two cores, like Ray's `cpus_per_worker=1`).

Param+optimizer memory per worker counts the distinct tensor storages the worker holds after a step:
parameters (its ZeRO-3 partition plus the parameters too small to partition, else the whole model),
the optimizer's master weights when they are a separate copy, and its state (Adam's two moments).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from matplotlib.figure import Figure
from tqdm import tqdm

from bench.common import Report, Table, Target, parse, parser, publish
from cluster.job.config import load_config
from cluster.job.network import free_port
from cluster.train import checkpoint
from cluster.train.deepspeed_config import deepspeed_config
from cluster.train.engine import EngineModel, build_engine
from data_pipeline.batch import budget_batches, collate
from data_pipeline.synthetic import generate
from mktn.fit import synthetic_vocab
from mktn.model import build_model

NAME = "zero"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
WORLD = 2
STAGES = (0, 1, 2, 3)
# name -> (timed steps, config overrides). The wide model (~92M parameters) trains on small batches of few
# clips: its step is there to exercise the sharded optimizer, the memory is what it measures.
WIDE = [
    "model.d_model=1024",
    "data.max_clips=8",
    "data.max_queries_per_batch=8",
    "data.max_videos_per_batch=4",
]
MODELS = {"default": (4, []), "wide": (2, WIDE)}
QUICK_MODELS = {
    "default": (1, ["model.d_model=16"]),
    "wide": (1, ["model.d_model=512", "data.max_queries_per_batch=8"]),
}
SHARE_GOAL = 1.10  # ZeRO-3 param+optimizer bytes per worker <= 1.1 x stage 0's / world size (wide model)
MIB = 2**20


@dataclass(frozen=True)
class Spec:
    """One configuration: which model overrides, which ZeRO stage, how many timed steps."""

    model: str
    overrides: tuple[str, ...]
    stage: int
    steps: int
    timeout_s: float


def state_bytes(engine: Any) -> dict[str, int]:
    """Bytes of the distinct tensor storages a worker holds for parameters, master weights and optimizer state."""
    seen: set[int] = set()

    def add(tensors: Any) -> int:
        total = 0
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.numel() and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
        return total

    params = list(engine.module.parameters())
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps the torch optimizer
    return {
        "params": add(p.data for p in params) + add(getattr(p, "ds_tensor", None) for p in params),
        "master": add(p for group in inner.param_groups for p in group["params"]),
        "optimizer_state": add(v for state in inner.state.values() for v in state.values()),
    }


def _worker(rank: int, spec: Spec, port: int, out: str) -> None:
    """One training worker: DeepSpeed engine, timed steps, memory, checkpoint save and load; writes rank<R>.json."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    job = load_config(str(CONFIG), [*spec.overrides, f"deepspeed.zero_stage={spec.stage}"])
    groups = generate(24 * WORLD if spec.steps > 2 else 8 * WORLD, seed=0, query_mix="charades")
    vocab = synthetic_vocab(groups)
    mine = groups[rank::WORLD]
    batches = [
        collate(c, vocab, job.data.max_clips)
        for c in budget_batches(mine, job.data.max_queries_per_batch, job.data.max_videos_per_batch)
    ]
    torch.manual_seed(0)
    model = build_model(
        job.model, vocab, mine[0].features.shape[-1], mine[0].features.shape[1], job.data.max_clips
    )
    engine = build_engine(model, deepspeed_config(job, WORLD, optimizer_steps=spec.steps + 1))
    times = []
    for i in range(spec.steps + 1):  # the first step builds the optimizer state: warm-up, not timed
        batch = batches[i % len(batches)]
        started = time.perf_counter()
        engine.backward(EngineModel.output(engine(batch)).losses["total"])
        engine.step()
        if i:
            times.append(time.perf_counter() - started)
        if i == 0:
            memory = state_bytes(engine)
    directory = Path(out, "checkpoint")
    dist.barrier()
    started = time.perf_counter()
    checkpoint.save(
        engine, str(directory), checkpoint.TrainState(world_size=WORLD, zero_stage=spec.stage), rank, {}
    )
    dist.barrier()
    save_s = time.perf_counter() - started
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    started = time.perf_counter()
    checkpoint.load(engine, str(directory))
    dist.barrier()
    load_s = time.perf_counter() - started
    result = {
        "rank": rank,
        "step_s": times,
        "memory": memory,
        "save_s": save_s,
        "load_s": load_s,
        "checkpoint_bytes": size,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()),
        "queries": [b.num_queries for b in batches],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run_spec(spec: Spec) -> dict[str, Any]:
    """Run one configuration in two fresh processes; their results, or an error naming the configuration."""
    with tempfile.TemporaryDirectory(prefix="mktn-bench-zero-") as out:
        context = mp.start_processes(
            _worker, args=(spec, free_port(), out), nprocs=WORLD, join=False, start_method="forkserver"
        )
        deadline = time.monotonic() + spec.timeout_s
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(
                    f"ZeRO-{spec.stage} ({spec.model} model) did not finish in {spec.timeout_s:.0f} s"
                )
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(WORLD)]
        shutil.rmtree(Path(out, "checkpoint"), ignore_errors=True)
    memory = {k: max(r["memory"][k] for r in ranks) for k in ranks[0]["memory"]}
    return {
        "model": spec.model,
        "stage": spec.stage,
        "params": ranks[0]["params"],
        "step_s": statistics.median(t for r in ranks for t in r["step_s"]),
        "step_s_all": [r["step_s"] for r in ranks],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks),
        "memory_mib": {k: v / MIB for k, v in memory.items()},
        "param_opt_mib": sum(memory.values()) / MIB,
        "checkpoint_mib": ranks[0]["checkpoint_bytes"] / MIB,
        "save_s": max(r["save_s"] for r in ranks),
        "load_s": max(r["load_s"] for r in ranks),
    }


def main(argv: list[str] | None = None) -> int:
    """Every (model, stage) configuration, then the report."""
    args = parse(parser(NAME, __doc__.split("\n\n")[0]), argv)
    report = Report(NAME, args.quick)
    models = QUICK_MODELS if args.quick else MODELS
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mp.set_forkserver_preload(["torch", "deepspeed", "bench.zero"])  # each worker forks with the imports done
    specs = [
        Spec(name, tuple(overrides), stage, steps, timeout_s=600.0)
        for name, (steps, overrides) in models.items()
        for stage in STAGES
    ]
    results = [run_spec(spec) for spec in tqdm(specs, desc="bench.zero (model x stage)", unit="config")]
    rows = []
    for r in results:
        base = next(x for x in results if x["model"] == r["model"] and x["stage"] == 0)
        rows.append(
            {
                "model": r["model"],
                "params (M)": r["params"] / 1e6,
                "ZeRO": r["stage"],
                "step s": r["step_s"],
                "peak RSS MiB/worker": r["peak_rss_mib"],
                "params MiB": r["memory_mib"]["params"],
                "master MiB": r["memory_mib"]["master"],
                "optimizer state MiB": r["memory_mib"]["optimizer_state"],
                "param+opt MiB/worker": r["param_opt_mib"],
                "vs stage 0 / 2": r["param_opt_mib"] / (base["param_opt_mib"] / WORLD),
                "checkpoint MiB": r["checkpoint_mib"],
                "save s": r["save_s"],
                "load s": r["load_s"],
            }
        )
    report.tables.append(
        Table(
            f"ZeRO stages, {WORLD} workers (gloo, fp32, torch AdamW), per worker",
            rows,
            note="`vs stage 0 / 2`: param+optimizer bytes per worker over stage 0's divided by "
            "the world size (1.0 = perfectly sharded).",
        )
    )
    wide = next(r for r in rows if r["model"] == "wide" and r["ZeRO"] == 3)
    report.targets.append(
        Target(
            "wide model: ZeRO-3 param+opt per worker / (stage 0's / world size)",
            wide["vs stage 0 / 2"],
            SHARE_GOAL,
            lower_is_better=True,
        )
    )
    report.metrics |= {
        f"{r['model']}/zero{r['ZeRO']}/{k}": v
        for r in rows
        for k, v in r.items()
        if k not in ("model", "ZeRO")
    }
    report.data["results"] = results
    publish(report, args.results, plot)
    return 0


def plot(report: Report) -> Figure:
    """Per model: param+optimizer and peak RSS per worker by stage, and the step time."""
    rows = report.tables[0].rows
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(5 * (len(models) + 1), 4))
    x = np.arange(len(STAGES))
    for ax, name in zip(axes, models):
        mine = [r for r in rows if r["model"] == name]
        bottom = np.zeros(len(mine))
        for key in ("params MiB", "master MiB", "optimizer state MiB"):
            values = np.array([r[key] for r in mine])
            ax.bar(x, values, 0.6, bottom=bottom, label=key.replace(" MiB", ""))
            bottom += values
        ax.plot(x, [r["peak RSS MiB/worker"] for r in mine], "ko-", label="peak RSS")
        ax.axhline(
            mine[0]["param+opt MiB/worker"] / WORLD, color="red", linestyle=":", label="stage 0 / world size"
        )
        ax.set(title=f"{name} model: MiB per worker", xticks=x, xticklabels=[f"ZeRO-{s}" for s in STAGES])
        ax.legend(fontsize=8)
    for name in models:
        axes[-1].plot(
            [f"ZeRO-{s}" for s in STAGES], [r["step s"] for r in rows if r["model"] == name], "o-", label=name
        )
    axes[-1].set(title="median step time (s)")
    axes[-1].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
