"""The run's figures, logged to MLflow as artifacts: training curves and predicted vs true moments."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

CURVE_PANELS = {
    "loss terms": ("train/loss", "train/L_CL", "train/L_1", "train/L_2", "train/L_3"),
    "learning rate": ("train/lr",),
    "AVM threshold phi": ("train/phi",),
    "validation (%)": ("val/R1@0.5", "val/R1@0.7", "val/R5@0.5", "val/mIoU"),
}


def training_curves(records: list[dict[str, Any]], path: str) -> str:
    """Loss terms, LR/phi and validation metrics against the global step, from the run's metric records."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        for key, value in record["values"].items():
            series[key].append((record["step"], value))
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.5 * len(CURVE_PANELS), 3.6))
    for ax, (title, keys) in zip(axes, CURVE_PANELS.items()):
        for key in keys:
            if series.get(key):
                steps, values = zip(*sorted(series[key]))
                ax.plot(
                    steps, values, label=key.split("/", 1)[1], marker="o" if key.startswith("val/") else None
                )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return _save(fig, path)


def moments_figure(predictions: list[dict[str, Any]], path: str, count: int = 8) -> str:
    """A timeline per validation query: the true moment and the top-1 prediction, in seconds."""
    rows = predictions[:count]
    fig, ax = plt.subplots(figsize=(9, 0.55 * max(len(rows), 1) + 1))
    for i, row in enumerate(rows):
        y = len(rows) - i
        ax.plot([0, row["duration"]], [y, y], color="lightgray", linewidth=6, solid_capstyle="butt")
        ax.plot(
            row["gt"], [y + 0.12, y + 0.12], color="tab:green", linewidth=4, label="true" if i == 0 else None
        )
        if row["pred"]:
            ax.plot(
                row["pred"][0][:2],
                [y - 0.12, y - 0.12],
                color="tab:red",
                linewidth=4,
                label="predicted (top-1)" if i == 0 else None,
            )
        ax.text(0, y + 0.3, row["sentence"][:70], fontsize=7)
    ax.set_yticks([])
    ax.set_xlabel("seconds")
    ax.set_title("validation queries: predicted vs true moments")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: str) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
