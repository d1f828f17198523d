"""What a finished search leaves behind: one row per trial, the best trial, and the metric-vs-hyper-parameter plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

from cluster.job.run_folder import RunFolder  # noqa: E402
from mktn.metrics import METRIC_KEYS  # noqa: E402


@dataclass
class TrialRow:
    """One trial: its sampled values, its last validation, how far it got and its MLflow run."""

    trial_id: str
    values: dict[str, Any]
    # Validation in percent: a finished trial's last (its model's); otherwise the last Tune received, what ASHA
    # decided on (a stopped trial may have validated one more epoch in MLflow before the stop reached it).
    metrics: dict[str, float]
    epochs: int
    status: str  # finished | stopped (by ASHA) | failed | pending (never started training)
    run_id: str | None

    def as_record(self, keys: list[str]) -> dict[str, Any]:
        record: dict[str, Any] = {
            "trial_id": self.trial_id,
            "status": self.status,
            "epochs": self.epochs,
            "run_id": self.run_id,
        }
        record |= {key: _cell(self.values.get(key)) for key in keys}
        return record | {k: self.metrics.get(k, math.nan) for k in METRIC_KEYS}


def trial_rows(results: Any, runs: dict[str, RunFolder]) -> list[TrialRow]:
    """The rows of a `ResultGrid`: each result's config and last metrics, with its run folder's status
    (finished, stopped or failed; pending when it never started training)."""
    rows = []
    for result in results:
        trial_id = str(result.metrics["trial_id"])  # Tune sets it even before a trial's first report
        folder = runs.get(trial_id)
        epochs = int(result.metrics.get("epoch", 0))
        status = "pending" if folder is None else "failed" if result.error is not None else folder.status
        metrics = {k: float(result.metrics[k]) for k in METRIC_KEYS if k in result.metrics}
        rows.append(
            TrialRow(
                trial_id, dict(result.config), metrics, epochs, status, folder.run_id if folder else None
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


def best_trial(rows: list[TrialRow], metric: str) -> TrialRow | None:
    """The finished trial (one with an exported model) with the highest last `metric`; ties: first trial id."""
    finished = [r for r in rows if r.status == "finished" and metric in r.metrics]
    return max(finished, key=lambda r: r.metrics[metric], default=None)


def write_table(rows: list[TrialRow], keys: list[str], directory: Path) -> list[Path]:
    """`results.csv` and `results.parquet` in `directory`: one row per trial."""
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([row.as_record(keys) for row in rows])
    csv_path, parquet_path = directory / "results.csv", directory / "results.parquet"
    pa_csv.write_csv(table, csv_path)
    pq.write_table(table, parquet_path)
    return [csv_path, parquet_path]


def plot_metric(rows: list[TrialRow], space: dict[str, Any], metric: str, path: Path) -> Path:
    """One panel per searched key: each trial's last `metric` against its value (log axis for loguniform
    keys, categories for choices); trials ASHA stopped are hollow."""
    fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.4), squeeze=False)
    for ax, (key, dist) in zip(axes[0], space.items()):
        for status, filled in (("finished", True), ("stopped", False)):
            points = [
                (r.values.get(key), r.metrics[metric])
                for r in rows
                if r.status == status and metric in r.metrics
            ]
            if not points:
                continue
            xs, ys = zip(*points)
            if dist.kind == "choice":
                labels = [str(c) for c in dist.choice]
                xs = [labels.index(str(x)) for x in xs]
                ax.set_xticks(range(len(labels)), labels)
            ax.scatter(
                xs, ys, label=status, facecolors="tab:blue" if filled else "none", edgecolors="tab:blue"
            )
        if dist.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"val {metric} (%)")
        ax.legend(fontsize=7)
    fig.suptitle(f"search: validation {metric} per trial")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cell(value: Any) -> Any:
    """A table cell: lists/dicts (e.g. a choice of lists) as their string form, scalars as they are."""
    return str(value) if isinstance(value, list | dict) else value
