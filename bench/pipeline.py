"""Data pipeline headroom: shard read + decode + collate throughput against the trainer's consumption (issue 7).

On a synthetic dataset prepared like `mktn prepare synthetic` does (Charades-like mix, the embedded
defaults' feature shape, small shards so loader workers can split them):
1. loader: one epoch of `data_pipeline.loader.iter_batches` (sha256 check, tar expand, strict decode,
   shuffle buffer, budgeted collate) with 0 (in-process), 1 and 2 loader workers, repetitions
   interleaved: time to first batch, videos/s, queries/s, shard MB/s;
2. consumption: training steps (forward, backward, AdamW) of the default model (configs/synthetic.yaml)
   on the same batches, timed in the same run: the queries/s one training worker consumes;
3. data wait: the trainer's own loop shape (`cluster.train.lockstep` over `iter_batches`, a step per batch)
   for each worker count: the fraction of wall time spent waiting for the next batch, with the
   configured prefetch thread (`data.prefetch_batches`, the default) and without it (0), side by side.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from bench.common import Report, Table, Target, interleaved, median, parse, parser, publish
from cluster.job.config import load_config
from cluster.train.lockstep import lockstep
from data_pipeline.config import DataConfig
from data_pipeline.loader import iter_batches
from data_pipeline.prepare import prepare_synthetic
from data_pipeline.shards import read_dataset_info, read_shard_table, shard_urls
from data_pipeline.text import Vocab
from mktn.model import build_model

NAME = "pipeline"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
WORKERS = (0, 1, 2)
HEADROOM_GOAL = 10.0
WAIT_GOAL_PCT = 5.0


def read_epoch(urls: list[str], vocab: Vocab, cfg: DataConfig) -> dict[str, float]:
    """Read one epoch of batches; seconds to the first batch and in all, and what was read."""
    started = time.perf_counter()
    first, videos, queries = None, 0, 0
    for batch in iter_batches(urls, vocab, cfg, seed=0, epoch=0, shuffle=True):
        first = first if first is not None else time.perf_counter() - started
        videos, queries = videos + batch.num_videos, queries + batch.num_queries
    return {
        "first_batch_s": first or 0.0,
        "seconds": time.perf_counter() - started,
        "videos": videos,
        "queries": queries,
    }


def main(argv: list[str] | None = None) -> int:
    """Prepare the dataset, measure loader, trainer and data wait, publish the report."""
    args = parse(parser(NAME, __doc__.split("\n\n")[0]), argv)
    report = Report(NAME, args.quick)
    job = load_config(str(CONFIG))
    videos, rounds, steps = (24, 1, 3) if args.quick else (600, 3, 40)
    with tempfile.TemporaryDirectory(prefix="mktn-bench-pipeline-") as tmp:
        prepare_synthetic(
            tmp,
            videos=videos,
            val_videos=0,
            mix="charades",
            shard_size_mb=0.25 if args.quick else 2.0,
            progress=False,
        )
        url = f"{tmp}/train"
        urls, vocab, info = shard_urls(url), Vocab.load(f"{url}/vocab.json"), read_dataset_info(url)
        shard_mb = sum(read_shard_table(url).column("bytes").to_pylist()) / 1e6
        configs = {w: job.data.model_copy(update={"loader_workers": w}) for w in WORKERS}
        reads: dict[int, list[dict[str, float]]] = {w: [] for w in WORKERS}
        interleaved(
            {
                f"{w} workers": (lambda r, w=w: reads[w].append(read_epoch(urls, vocab, configs[w])))
                for w in WORKERS
            },
            rounds,
            warmup=0,
        )
        model = build_model(
            job.model, vocab, info["feature_dim"], info["tokens_per_clip"], job.data.max_clips
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=job.train.lr)

        def train_step(batch: Any) -> None:
            optimizer.zero_grad(set_to_none=True)
            model(batch).losses["total"].backward()
            optimizer.step()

        batches = list(iter_batches(urls, vocab, configs[0], seed=0, epoch=0, shuffle=True))[: steps + 1]
        step_s = interleaved(
            {"train step": lambda r: train_step(batches[r % len(batches)])}, len(batches) - 1
        )["train step"]
        queries = np.array([b.num_queries for b in batches[1:]], dtype=float)
        consumed_qps = median(queries / np.array(step_s))
        waits = {w: data_wait(urls, vocab, configs[w], train_step, steps) for w in WORKERS}
        inline = {
            w: data_wait(
                urls, vocab, configs[w].model_copy(update={"prefetch_batches": 0}), train_step, steps
            )
            for w in WORKERS
        }
    loader = {w: {key: median([r[key] for r in reads[w]]) for key in reads[w][0]} for w in WORKERS}
    rows = []
    for w in WORKERS:
        m = loader[w]
        rows.append(
            {
                "loader workers": w,
                "first batch s": m["first_batch_s"],
                "videos/s": m["videos"] / m["seconds"],
                "queries/s": m["queries"] / m["seconds"],
                "shard MB/s": shard_mb / m["seconds"],
                "x trainer consumption": m["queries"] / m["seconds"] / consumed_qps,
                "data wait % (no prefetch)": 100 * inline[w],
                "data wait % (train loop)": 100 * waits[w],
            }
        )
    report.tables += [
        Table(
            f"Loader throughput, one epoch of {videos} videos ({shard_mb:.1f} MB in {len(urls)} shards), median of "
            f"{rounds}",
            rows,
            note=f"data wait: {steps} steps of the training loop; 'train loop' as configured (a prefetch thread, "
            f"data.prefetch_batches={job.data.prefetch_batches}), 'no prefetch' decoding in the loop.",
        ),
        Table(
            "Trainer consumption (default model, forward + backward + AdamW, one process)",
            [
                {
                    "queries/s": consumed_qps,
                    "median step s": median(step_s),
                    "steps": len(step_s),
                    "queries/batch": float(queries.mean()),
                }
            ],
        ),
    ]
    best = max(rows, key=lambda r: r["x trainer consumption"])
    report.targets += [
        Target(f"loader ({w} workers) / trainer consumption", row["x trainer consumption"], HEADROOM_GOAL)
        for w, row in zip(WORKERS, rows)
    ] + [
        Target(
            f"data wait ({w} workers), % of train loop",
            row["data wait % (train loop)"],
            WAIT_GOAL_PCT,
            lower_is_better=True,
        )
        for w, row in zip(WORKERS, rows)
    ]
    report.metrics |= {
        f"workers{r['loader workers']}/{k}": v for r in rows for k, v in r.items() if k != "loader workers"
    }
    report.metrics |= {"trainer_qps": consumed_qps, "best_headroom": best["x trainer consumption"]}
    report.data |= {
        "reads": reads,
        "step_s": step_s,
        "consumed_qps": consumed_qps,
        "waits": waits,
        "waits_no_prefetch": inline,
        "shard_mb": shard_mb,
    }
    publish(report, args.results, plot)
    return 0


def data_wait(urls: list[str], vocab: Vocab, cfg: DataConfig, train_step: Any, steps: int) -> float:
    """Fraction of wall time the trainer's loop (`cluster.train.lockstep` + a step per batch) waits for data."""
    started, waited = time.perf_counter(), 0.0
    stream = lockstep(
        lambda p: iter_batches(urls, vocab, cfg, seed=1, epoch=p, shuffle=True), torch.device("cpu")
    )
    for _, step in zip(range(steps), stream):
        waited += step.data_wait_s
        train_step(step.batch)
    return waited / (time.perf_counter() - started)


def plot(report: Report) -> Figure:
    """Loader queries/s per worker count against the trainer's consumption, and the data-wait fraction."""
    rows = report.tables[0].rows
    consumed = report.data["consumed_qps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [str(r["loader workers"]) for r in rows]
    left.bar(labels, [r["queries/s"] for r in rows], color="tab:blue", label="loader")
    left.axhline(consumed, color="tab:red", label="trainer consumption")
    left.axhline(
        HEADROOM_GOAL * consumed, color="tab:red", linestyle=":", label=f"{HEADROOM_GOAL:g}x consumption"
    )
    left.set(title="queries/s read + decoded + collated", xlabel="loader workers", yscale="log")
    left.legend(fontsize=8)
    right.bar(labels, [r["data wait % (train loop)"] for r in rows], color="tab:orange")
    right.axhline(WAIT_GOAL_PCT, color="tab:red", linestyle=":", label=f"goal < {WAIT_GOAL_PCT:g}%")
    right.set(title="data wait in the training loop (% of wall time)", xlabel="loader workers")
    right.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    raise SystemExit(main())
