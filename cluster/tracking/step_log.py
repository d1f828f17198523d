"""Per-step training metrics, averaged over ranks, and throughput summed over ranks.

Ray keeps only rank 0's reported metrics, so every number is reduced across ranks here first: loss terms
are averaged (one all-reduce per logging window, not per step), queries and videos are summed, and the
window's wall time is the slowest rank's. Rank 0 turns the result into MLflow records, one per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from cluster.tracking.runs import now_ms
from mktn.model import LOSS_KEYS

LOSS_NAMES = {
    "total": "train/loss",
    "L_CL": "train/L_CL",
    "L_1": "train/L_1",
    "L_2": "train/L_2",
    "L_3": "train/L_3",
}


@dataclass
class StepWindow:
    """The steps since the last flush: their losses, phi and lr, and the work and waiting they took."""

    device: torch.device
    steps: list[int] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)
    phi_lr: list[tuple[float, float]] = field(default_factory=list)
    queries: int = 0
    videos: int = 0
    data_wait_s: float = 0.0
    repeats: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(
        self,
        step: int,
        losses: dict[str, torch.Tensor],
        phi: float,
        lr: float,
        queries: int,
        videos: int,
        data_wait_s: float,
        fresh: bool,
    ) -> None:
        """Record one finished step."""
        self.steps.append(step)
        self.losses.append([float(losses[k].detach()) for k in LOSS_KEYS])
        self.phi_lr.append((phi, lr))
        self.queries += queries
        self.videos += videos
        self.data_wait_s += data_wait_s
        self.repeats += 0 if fresh else 1

    def flush(self, world_size: int) -> list[dict]:
        """Reduce the window across ranks (a collective: every rank calls it at the same step); returns one
        MLflow record per step, the last one carrying the window's throughput. Start a new window after."""
        wall = time.perf_counter() - self.started
        n = len(self.steps)
        sums = torch.tensor(
            [v for row in self.losses for v in row]
            + [self.queries, self.videos, self.data_wait_s, wall, self.repeats],
            dtype=torch.float64,
            device=self.device,
        )
        slowest = torch.tensor([wall], dtype=torch.float64, device=self.device)
        if dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        values = sums.cpu().tolist()
        losses = [values[i * len(LOSS_KEYS) : (i + 1) * len(LOSS_KEYS)] for i in range(n)]
        queries, videos, wait, busy, repeats = values[n * len(LOSS_KEYS) :]
        stamp = now_ms()
        records = [
            {
                "step": step,
                "ts": stamp,
                "values": {LOSS_NAMES[k]: v / world_size for k, v in zip(LOSS_KEYS, row)}
                | {"train/phi": phi, "train/lr": lr},
            }
            for step, row, (phi, lr) in zip(self.steps, losses, self.phi_lr)
        ]
        if records:
            seconds = max(slowest.item(), 1e-9)
            records[-1]["values"] |= {
                "train/qps": queries / seconds,
                "train/vps": videos / seconds,
                "train/step_time_s": seconds / n,
                "train/data_wait_frac": wait / max(busy, 1e-9),
                "train/repeat_steps": repeats,
            }
        return records
