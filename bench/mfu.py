"""Model FLOPs utilisation: achieved FLOP/s of a training step against this machine's measured matmul peak (issue 7).

Per backbone (MKTN, multi-pair, the embedded defaults of configs/synthetic.yaml) on Charades-like
batches: the FLOPs of a training step (forward + backward) counted by
`torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and attention; elementwise
work is not counted, as in the usual MFU definition) over the step's median wall time (forward,
backward, AdamW). The peak is the median FLOP/s of a large square fp32 `torch.mm` with the same
threads, timed interleaved with the steps in the same run; a matmul of the model's own typical shape
(rows = queries x clips, d_model x d_model) shows how far small products sit below it. The forward
FLOPs per top-level module show where the work is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.flop_counter import FlopCounterMode

from bench.common import Report, Table, interleaved, median, parse, parser, publish
from cluster.job.config import load_config
from data_pipeline.batch import Batch, budget_batches, collate
from data_pipeline.synthetic import generate
from mktn.fit import synthetic_vocab
from mktn.model import MKTN, build_model

NAME = "mfu"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
BACKBONES = ("span", "proposal_map")


def train_flops(model: MKTN, batch: Batch) -> int:
    """FLOPs of one forward + backward pass on `batch`."""
    with FlopCounterMode(display=False) as counter:
        model(batch).losses["total"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def forward_flops_by_module(model: MKTN, batch: Batch) -> dict[str, int]:
    """Forward FLOPs of each top-level module of `model`, and of the ops outside any module.

    FlopCounterMode counts per module, parents including children. A top-level module whose methods
    are called instead of its `forward` (AVM, OPM, APA) has no entry of its own: its submodules' add up.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    counts = {tuple(name.split(".")): sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    tops = {parts[1]: n for parts, n in counts.items() if len(parts) == 2}
    for parts, n in counts.items():
        if len(parts) == 3 and parts[:2] not in counts:
            tops[parts[1]] = tops.get(parts[1], 0) + n
    tops["outside modules (scores, losses)"] = counts.get(("Global",), 0) - sum(tops.values())
    return tops


def matmul(n: int, k: int, m: int) -> tuple[Any, float]:
    """A timed `torch.mm` of (n, k) x (k, m) and its FLOPs."""
    a, b = torch.randn(n, k), torch.randn(k, m)
    return (lambda r: torch.mm(a, b)), 2.0 * n * k * m


def main(argv: list[str] | None = None) -> int:
    """Count, time and compare; publish the report."""
    args = parse(parser(NAME, __doc__.split("\n\n")[0]), argv)
    report = Report(NAME, args.quick)
    overrides = ["model.d_model=16", "data.max_clips=8"] if args.quick else []
    job = load_config(str(CONFIG), overrides)
    groups = generate(12 if args.quick else 64, seed=0, query_mix="charades")
    vocab = synthetic_vocab(groups)
    batches = [
        collate(c, vocab, job.data.max_clips)
        for c in budget_batches(groups, job.data.max_queries_per_batch, job.data.max_videos_per_batch)
    ]
    shape = groups[0].features.shape
    size = 256 if args.quick else 2048
    peak_call, peak_flops = matmul(size, size, size)
    rows_model = batches[0].num_queries * job.data.max_clips
    small_call, small_flops = matmul(rows_model, job.model.d_model, job.model.d_model)
    calls: dict[str, Any] = {"peak": peak_call, "model-shaped mm": small_call}
    flops: dict[str, float] = {"peak": peak_flops, "model-shaped mm": small_flops}
    modules: dict[str, dict[str, int]] = {}
    for backbone in BACKBONES:
        cfg = load_config(str(CONFIG), [*overrides, f"model.backbone={backbone}"]).model
        torch.manual_seed(0)
        model = build_model(cfg, vocab, shape[-1], shape[1], job.data.max_clips)
        optimizer = torch.optim.AdamW(model.parameters(), lr=job.train.lr)
        flops[backbone] = train_flops(model, batches[0])
        modules[backbone] = forward_flops_by_module(model, batches[0])
        calls[backbone] = _step(model, optimizer, batches[0])
    seconds = interleaved(calls, rounds=2 if args.quick else 7, warmup=1)
    rate = {name: flops[name] / median(seconds[name]) for name in calls}
    peak = rate["peak"]
    report.tables.append(
        Table(
            f"Training step FLOP/s (Charades-like batch: {batches[0].num_videos} videos, {batches[0].num_queries} queries, "
            f"{job.data.max_clips} clips, d_model {job.model.d_model}) against a {size}x{size} fp32 matmul",
            [
                {
                    "what": name,
                    "GFLOP": flops[name] / 1e9,
                    "median s": median(seconds[name]),
                    "GFLOP/s": rate[name] / 1e9,
                    "% of matmul peak (MFU)": 100 * rate[name] / peak,
                }
                for name in calls
            ],
        )
    )
    for backbone in BACKBONES:
        total = sum(modules[backbone].values()) or 1
        report.tables.append(
            Table(
                f"{backbone}: forward FLOPs by module",
                [
                    {"module": name, "GFLOP": count / 1e9, "share %": 100 * count / total}
                    for name, count in sorted(modules[backbone].items(), key=lambda kv: -kv[1])
                ],
            )
        )
    report.metrics |= {f"{name}/gflops_per_s": r / 1e9 for name, r in rate.items()}
    report.metrics |= {f"{b}/mfu_pct": 100 * rate[b] / peak for b in BACKBONES}
    report.data |= {"flops": flops, "seconds": seconds, "modules": modules}
    publish(report, args.results, plot)
    return 0


def _step(model: MKTN, optimizer: torch.optim.Optimizer, batch: Batch) -> Any:
    def step(r: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch).losses["total"].backward()
        optimizer.step()

    return step


def plot(report: Report) -> Figure:
    """Achieved GFLOP/s per step against the matmul peak, and each backbone's forward FLOPs by module."""
    rows = report.tables[0].rows
    fig, axes = plt.subplots(1, 1 + len(BACKBONES), figsize=(5 * (1 + len(BACKBONES)), 4))
    axes[0].bar([r["what"] for r in rows], [r["GFLOP/s"] for r in rows], color="tab:blue")
    axes[0].set(title="GFLOP/s", yscale="log")
    axes[0].tick_params(axis="x", labelrotation=20)
    for ax, backbone in zip(axes[1:], BACKBONES):
        modules = report.data["modules"][backbone]
        names = sorted(modules, key=lambda n: -modules[n])
        ax.barh(names[::-1], np.array([modules[n] for n in names[::-1]]) / 1e9, color="tab:orange")
        ax.set(title=f"{backbone}: forward GFLOP by module")
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
