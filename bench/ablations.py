"""Ablations on the synthetic set (paper Table 3 style): the full model, each cross-pair module off, single-pair.

Every variant trains from the same initial seed on the same data: `TRAIN_VIDEOS` Charades-like synthetic
videos from seed 0 and `VAL_VIDEOS` held-out ones from seed 1 (the generator's defaults, as `mktn prepare
synthetic` writes them: 64-d features with 4 patch tokens), with the model, learning rate, warm-up,
clipping and batch budgets of `configs/synthetic.yaml`, for `EPOCHS` epochs of plain torch AdamW
(`mktn.fit`, one process, no DeepSpeed). The learning test (`tests/test_model_learning.py`) runs the
"full" row of this table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from bench.common import Report, Table, parse, parser, publish
from cluster.job.config import JobConfig, load_config
from data_pipeline.synthetic import generate
from data_pipeline.types import VideoGroup
from mktn.config import ModelConfig
from mktn.fit import FitResult, fit, synthetic_vocab
from mktn.model import build_model

NAME = "ablations"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
EPOCHS, QUICK_EPOCHS = 16, 4
TRAIN_VIDEOS, QUICK_TRAIN_VIDEOS, VAL_VIDEOS = 400, 120, 200
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "w/o CSM": {"csm": {"enabled": False}},
    "w/o AVM": {"avm": {"enabled": False}},
    "w/o OPM": {"opm": {"enabled": False}},
    "w/o APA": {"apa": {"enabled": False}},
    "single-pair": {"mode": "single_pair"},
}
METRICS = ("R1@0.3", "R1@0.5", "R1@0.7", "R5@0.5", "mIoU")


def synthetic_data(train_videos: int = TRAIN_VIDEOS) -> tuple[list[VideoGroup], list[VideoGroup]]:
    """The training and held-out groups (the generator's defaults, as `mktn prepare synthetic` uses them)."""
    return generate(train_videos, seed=0), generate(VAL_VIDEOS, seed=1, split="val")


def learning_run(
    job: JobConfig,
    overrides: dict[str, Any],
    data: tuple[list[VideoGroup], list[VideoGroup]],
    epochs: int = EPOCHS,
    seed: int = 0,
) -> FitResult:
    """Train one variant (`overrides` on the config's model section) and evaluate it on the held-out groups."""
    train, val = data
    cfg = ModelConfig.model_validate(job.model.model_dump() | overrides)
    torch.manual_seed(seed)
    shape = train[0].features.shape
    model = build_model(
        cfg, synthetic_vocab(train), shape[-1], shape[1] if len(shape) == 3 else 1, job.data.max_clips
    )
    t = job.train
    return fit(
        model,
        train,
        val,
        epochs,
        t.lr,
        job.data.max_videos_per_batch,
        job.data.max_queries_per_batch,
        weight_decay=t.weight_decay,
        warmup_frac=t.warmup_frac,
        grad_clip=t.grad_clip,
        seed=seed,
    )


def plot(report: Report) -> Figure:
    """R@1, IoU=0.5 per variant and backbone."""
    fig, ax = plt.subplots(figsize=(8, 4))
    rows = report.tables[0].rows
    labels = [f"{r['backbone']}\n{r['variant']}" for r in rows]
    ax.bar(range(len(rows)), [r["R1@0.5"] for r in rows], color="tab:blue")
    ax.axhline(80, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
    ax.set_ylabel("R@1, IoU=0.5 (%)")
    ax.set_title("Synthetic ablations (held-out videos)")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__)
    p.add_argument(
        "--backbone",
        choices=("span", "proposal_map", "both"),
        default="span",
        help="grounding backbone(s) to ablate (default span)",
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed (default 0)")
    args = parse(p, argv)
    job = load_config(str(CONFIG))
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    data = synthetic_data(QUICK_TRAIN_VIDEOS if args.quick else TRAIN_VIDEOS)
    report = Report(NAME, args.quick)
    rows = []
    for backbone in ("span", "proposal_map") if args.backbone == "both" else (args.backbone,):
        for variant, overrides in VARIANTS.items():
            started = time.process_time()
            result = learning_run(job, {"backbone": backbone} | overrides, data, epochs, args.seed)
            cpu = time.process_time() - started
            rows.append(
                {"backbone": backbone, "variant": variant}
                | {m: result.metrics[m] for m in METRICS}
                | {"final loss": result.final_loss, "wall s": result.seconds, "CPU s": cpu}
            )
            print(
                f"{backbone} {variant}: R1@0.5 {result.metrics['R1@0.5']:.1f} ({result.seconds:.0f} s)",
                flush=True,
            )
            report.metrics |= {f"{backbone}/{variant}/{m}": result.metrics[m] for m in METRICS}
    n_train, n_val = len(data[0]), len(data[1])
    report.tables.append(
        Table(
            f"Held-out grounding after {epochs} epochs ({n_train} train / {n_val} val videos, seed {args.seed})",
            rows,
            note="Same data, seed and config for every row; w/o X switches the module off in multi-pair mode; "
            "single-pair is the backbone alone, every pair on its own copy of its video.",
        )
    )
    report.data = {"config": job.model.model_dump(mode="json"), "epochs": epochs, "rows": rows}
    publish(report, args.results, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
