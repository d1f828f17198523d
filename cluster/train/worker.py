"""The function every Ray Train worker runs: build the model, wrap it in DeepSpeed, train epoch by epoch.

Per epoch: this rank's whole shards (`assign_shards`) -> lockstep batches -> forward/backward/step on the
DeepSpeed engine -> validation on held-out shards -> `ray.train.report` with a checkpoint that every rank
writes its part of. A restarted worker group (FailureConfig) or a resumed job (`--resume`) continues from
`ray.train.get_checkpoint()`: the engine state and the data position (epochs done, global step).
Step metrics go to the MetricSink actor from rank 0; MLflow sees each step once however often a step is
replayed after a restart.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import tempfile
import time
import warnings
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from cluster.job.storage import join, write_bytes_atomic
from cluster.tracking.runs import now_ms
from cluster.tracking.step_log import StepWindow
from cluster.train import checkpoint
from cluster.train.assign import assign_shards
from cluster.train.engine import EngineModel, build_engine
from cluster.train.lockstep import lockstep
from cluster.train.plan import TrainPlan
from cluster.train.validation import validate
from data_pipeline.loader import BatchStream, iter_batches
from data_pipeline.text import Vocab
from mktn.model import build_model


def say(message: str) -> None:
    """Write one progress line to the worker's stdout, which Ray streams to the driver and to `ray job logs`.

    Ray Train v2 replaces `print` in workers by one that logs the line *and*, when `sys.stdout` is wrapped (as
    it is here), prints it too, so every line came out twice; the real stream gets it once."""
    print(message, file=sys.__stdout__, flush=True)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop (`TorchTrainer(train_worker, train_loop_config={"plan": plan})`)."""
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    plan: TrainPlan = config["plan"]
    job = plan.job
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(int(job.cluster.cpus_per_worker), 1))

    torch.manual_seed(job.train.seed)  # identical initial weights on every rank
    vocab = Vocab.from_json(plan.vocab_json)
    model = build_model(
        job.model, vocab, plan.features["feature_dim"], plan.features["tokens_per_clip"], job.data.max_clips
    ).to(device)
    engine = build_engine(model, plan.ds_config)
    state = _restore(engine, plan, world)
    for epoch in range(state.epochs_done, job.train.epochs):
        torch.manual_seed(job.train.seed * 100_003 + epoch * 101 + rank)  # a replayed epoch: the same dropout
        started = time.perf_counter()
        loss = _train_epoch(engine, plan, vocab, epoch, state, rank, world, device)
        metrics, predictions = validate(engine, plan.val, vocab, job.data, rank, world, device)
        state.epochs_done, state.metrics = epoch + 1, metrics
        peak = _gather_peak_memory_mb(device, world)
        if rank == 0:
            plan.sink.log.remote([_epoch_record(state, metrics, peak)])
            say(
                f"epoch {epoch + 1}/{job.train.epochs} (step {state.global_step}): loss {loss:.3f}; validation "
                f"R1@0.5 {metrics['R1@0.5']:.1f} R5@0.5 {metrics['R5@0.5']:.1f} mIoU {metrics['mIoU']:.1f}; "
                f"{time.perf_counter() - started:.0f} s"
            )
        _report(engine, plan, state, rank, predictions)


def _restore(engine: Any, plan: TrainPlan, world: int) -> checkpoint.TrainState:
    """The state to start from: the latest checkpoint of this run (after a restart or `--resume`), else a fresh one."""
    saved = ray.train.get_checkpoint()
    if saved is None:
        return checkpoint.TrainState(
            run_id=plan.run_id, world_size=world, zero_stage=plan.job.deepspeed.zero_stage
        )
    with saved.as_directory() as directory:
        state = checkpoint.TrainState.read(directory)
        if (state.world_size, state.zero_stage) != (world, plan.job.deepspeed.zero_stage):
            raise ValueError(
                f"checkpoint {saved.path} was written by {state.world_size} workers under ZeRO-{state.zero_stage}; "
                f"this job has {world} workers under ZeRO-{plan.job.deepspeed.zero_stage}: its shards do not fit"
            )
        return checkpoint.load(engine, directory)


def _train_epoch(
    engine: Any,
    plan: TrainPlan,
    vocab: Vocab,
    epoch: int,
    state: checkpoint.TrainState,
    rank: int,
    world: int,
    device: torch.device,
) -> float:
    """One epoch over this rank's shards, in lockstep with the other ranks; step metrics to the sink.
    Returns the epoch's mean loss (over ranks and steps)."""
    job = plan.job
    assignment = assign_shards(plan.train.shards, world, job.train.seed, epoch)
    urls = [s.url for s in assignment.per_rank[rank]]
    if rank == 0:
        balance = {f"data/queries_rank{r}": q for r, q in enumerate(assignment.queries)}
        plan.sink.log.remote(
            [
                {
                    "step": state.global_step,
                    "ts": now_ms(),
                    "values": balance | {"data/imbalance": assignment.imbalance},
                }
            ]
        )
    audit = _BatchAudit(plan.output, rank, job.train.log_every_steps) if job.train.record_batches else None

    first_pass: list[BatchStream] = []  # its corrupt-sample count is the epoch's (repeats see the same ones)

    def batches(repeat: int) -> BatchStream:
        """Pass `repeat` over this rank's shards; a repeat reshuffles with another seed."""
        seed = job.train.seed + 7919 * repeat
        stream = iter_batches(urls, vocab, job.data, seed=seed, epoch=epoch, shuffle=True)
        if repeat == 0:
            first_pass.append(stream)
        return stream

    engine.train()
    window, losses = StepWindow(device), []
    for step in lockstep(batches, device):
        batch = step.batch.to(device)
        progress = min(state.global_step / plan.planned_steps, 1.0)
        output = EngineModel.output(engine(batch, progress=progress))
        engine.backward(output.losses["total"])
        engine.step()
        state.global_step += 1
        window.add(
            state.global_step,
            output.losses,
            output.phi,
            engine.get_lr()[0],
            batch.num_queries,
            batch.num_videos,
            step.data_wait_s,
            step.fresh,
        )
        if audit is not None:
            audit.write(epoch, state.global_step, step.fresh, batch)
        if state.global_step % job.train.log_every_steps == 0:
            losses += _send(plan, rank, window.flush(world))
            window = StepWindow(device)
    losses += _send(plan, rank, window.flush(world))
    if audit is not None:
        audit.flush()
    _report_corrupt_samples(plan, first_pass[0], epoch, state.global_step, rank, device)
    return sum(losses) / max(len(losses), 1)


def _report_corrupt_samples(
    plan: TrainPlan, stream: BatchStream, epoch: int, step: int, rank: int, device: torch.device
) -> None:
    """Each rank prints the samples it skipped this epoch; rank 0 logs the sum over ranks to MLflow as
    `data/corrupt_samples` at the epoch's last step (0 included, so a clean run shows it was checked)."""
    for message in stream.corrupt_messages:
        say(f"rank {rank}, epoch {epoch + 1}: skipped a corrupt sample: {message}")
    total = torch.tensor([float(stream.corrupt_samples)], device=device)
    if dist.is_initialized():
        dist.all_reduce(total)
    if rank == 0:
        record = {"step": step, "ts": now_ms(), "values": {"data/corrupt_samples": total.item()}}
        plan.sink.log.remote([record])


def _report(
    engine: Any,
    plan: TrainPlan,
    state: checkpoint.TrainState,
    rank: int,
    predictions: list[dict],
) -> None:
    """`ray.train.report` the epoch (a barrier on every rank), with a checkpoint when one is due."""
    job = plan.job
    metrics = {"epoch": state.epochs_done, "global_step": state.global_step, **state.metrics}
    due = state.epochs_done % job.train.checkpoint_every_epochs == 0 or state.epochs_done == job.train.epochs
    if not due:
        ray.train.report(metrics)
        return
    files = checkpoint.model_files(job, engine.module.model, plan.features)
    files["val_predictions.json"] = predictions
    with tempfile.TemporaryDirectory(prefix="mktn-ckpt-") as directory:
        checkpoint.save(engine, directory, state, rank, files)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"checkpoint_epoch{state.epochs_done:04d}",
        )


def _send(plan: TrainPlan, rank: int, records: list[dict]) -> list[float]:
    """Rank 0 sends the step records to the metric sink; every rank gets the steps' losses back."""
    if rank == 0 and records:
        plan.sink.log.remote(records)
    return [r["values"]["train/loss"] for r in records]


def _epoch_record(state: checkpoint.TrainState, metrics: dict[str, float], peak_mb: list[float]) -> dict:
    values = {f"val/{k}": v for k, v in metrics.items()} | {"epoch": state.epochs_done}
    values |= {f"sys/peak_memory_mb_rank{r}": mb for r, mb in enumerate(peak_mb)}
    return {"step": state.global_step, "ts": now_ms(), "values": values}


def _gather_peak_memory_mb(device: torch.device, world: int) -> list[float]:
    """Every rank's peak memory in MB (GPU: peak allocated by torch; CPU: the process's peak resident set)."""
    if device.type == "cuda":
        mine = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    everyone = torch.zeros(world, dtype=torch.float64, device=device)
    everyone[ray.train.get_context().get_world_rank()] = mine
    if dist.is_initialized():
        dist.all_reduce(everyone)
    return everyone.cpu().tolist()


class _BatchAudit:
    """`train.record_batches`: every batch this rank trained on (video -> query ids, with the worker's pid and
    Ray node) as JSON lines under `<output>/batches/rank-R/`, to check from outside that no video's pairs
    were split and which process and node did the work. The output may be an object store, which cannot
    append: lines are buffered and every `flush_every` steps (and at the epoch's end) written as one new
    object, `<first step:08d>-<pid>.jsonl`. Nothing is overwritten (a replayed step comes from another
    process); what a killed worker had not flushed is lost."""

    def __init__(self, output: str, rank: int, flush_every: int):
        self.directory, self.flush_every = join(output, "batches", f"rank-{rank}"), flush_every
        self.pid, self.node = os.getpid(), ray.get_runtime_context().get_node_id()
        self.lines: list[dict[str, Any]] = []

    def write(self, epoch: int, step: int, fresh: bool, batch: Any) -> None:
        videos: dict[str, list[str]] = {v: [] for v in batch.video_ids}
        for j, q in enumerate(batch.query_ids):
            videos[batch.video_ids[int(batch.query_video[j])]].append(q)
        line = {
            "epoch": epoch,
            "step": step,
            "fresh": fresh,
            "pid": self.pid,
            "node": self.node,
            "videos": videos,
        }
        self.lines.append(line)
        if len(self.lines) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines as one object."""
        if self.lines:
            name = f"{self.lines[0]['step']:08d}-{self.pid}.jsonl"
            write_bytes_atomic(
                join(self.directory, name), "".join(json.dumps(x) + "\n" for x in self.lines).encode()
            )
            self.lines = []
