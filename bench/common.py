"""Shared plumbing of every benchmark: the command line, interleaved timing, the machine, and the outputs.

A benchmark fills a `Report` (markdown tables, targets with pass/fail, flat metrics, raw data) and
calls `publish`, which prints the tables and writes `<results>/<name>.json`, `<results>/<name>.png`
and one MLflow run (a SQLite store `<results>/mlflow.db` unless MLFLOW_TRACKING_URI is set).
The machine is shared and noisy, so ratios are measured side by side: `interleaved` runs the
contenders round-robin in one process, drops warm-up rounds, and callers compare medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cluster.tracking.runs import git_commit, log_metrics, mlflow_key, open_run  # noqa: E402
from cluster.tracking.store import default_tracking_uri  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EXPERIMENT = "mktn-bench"
PATIENCE_S = 60.0  # how long MLflow calls wait out an unreachable tracking server
REPO_ROOT = Path(__file__).resolve().parents[1]


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """The command line every benchmark shares: `--quick`, `--threads` and `--results`."""
    p = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=description,
        epilog=f"Writes RESULTS/{name}.json, RESULTS/{name}.png and an MLflow run (experiment {EXPERIMENT!r}; "
        "SQLite store RESULTS/mlflow.db unless MLFLOW_TRACKING_URI is set).",
    )
    p.add_argument(
        "--quick", action="store_true", help="a small, fast run (what CI runs) instead of the full one"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch threads of the benchmark process (default 1, what a training worker uses: "
        "cluster.cpus_per_worker=1; on a busy machine more threads make every timing erratic)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help=f"output folder (default {RESULTS_DIR.relative_to(REPO_ROOT)})",
    )
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line and apply `--threads` to this process."""
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    return args


def machine() -> dict[str, Any]:
    """What the numbers ran on: CPU model, cores, memory, thread count, library versions and the load average."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    versions = {}
    for package in ("torch", "deepspeed", "ray", "mlflow", "webdataset"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": git_commit(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def interleaved(
    calls: Mapping[str, Callable[[int], Any]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of each call over `rounds` kept rounds, run round-robin so that load drift hits all alike.

    Every call gets the round index (warm-up rounds first), so contenders can share round r's input and
    be compared pairwise. The order rotates every round (A B C, B C A, ...); the first `warmup` rounds
    run but are not kept.
    """
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            calls[name](r)
            elapsed = time.perf_counter() - started
            if r >= warmup:
                times[name].append(elapsed)
    return times


def median(values: Sequence[float] | np.ndarray) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if len(values) else math.nan


def fmt(value: Any) -> str:
    """A table cell: floats to 3 significant digits (no exponent below 1e6), everything else as str."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "n/a"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


@dataclass
class Table:
    """A titled table; every row maps column name -> value (the first row's keys give the column order)."""

    title: str
    rows: list[dict[str, Any]]
    note: str = ""

    def markdown(self) -> str:
        if not self.rows:
            return f"**{self.title}**: no rows\n"
        columns = list(self.rows[0])
        lines = [f"**{self.title}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in self.rows]
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else [])) + "\n"


@dataclass
class Target:
    """A number the project must reach: `value` against `goal` (>= goal, or <= goal when `lower_is_better`)."""

    name: str
    value: float
    goal: float
    lower_is_better: bool = False
    note: str = ""

    @property
    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value <= self.goal if self.lower_is_better else self.value >= self.goal

    def row(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "measured": self.value,
            "goal": f"{'<=' if self.lower_is_better else '>='} {fmt(float(self.goal))}",
            "met": "yes" if self.met else "NO",
            "note": self.note,
        }


@dataclass
class Report:
    """Everything one benchmark run produced; `publish` turns it into the printed, JSON, PNG and MLflow outputs."""

    name: str
    quick: bool
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # flat numbers for MLflow
    data: dict[str, Any] = field(default_factory=dict)  # raw measurements, JSON only
    files: list[Path] = field(default_factory=list)  # extra artifacts (profiles)
    machine: dict[str, Any] = field(default_factory=machine)
    started: float = field(default_factory=time.perf_counter)

    def markdown(self) -> str:
        m = self.machine
        header = (
            f"### bench.{self.name}{' (--quick)' if self.quick else ''}\n\n"
            f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['versions']['torch']} "
            f"({m['torch_threads']} threads), load average at start {m['load_avg_1_5_15']}, "
            f"commit {m['git_commit'][:12]}\n"
        )
        parts = [header, *(t.markdown() for t in self.tables)]
        if self.targets:
            parts.append(Table("Targets", [t.row() for t in self.targets]).markdown())
        return "\n".join(parts)


def publish(report: Report, results: Path, plot: Callable[[Report], Figure]) -> dict[str, Path]:
    """Print the report, write `<name>.json` and `<name>.png` under `results`, log an MLflow run; returns the paths."""
    results.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - report.started
    report.machine["load_avg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(report.markdown())
    print(f"bench.{report.name}: {seconds:.0f} s")
    paths = {"json": results / f"{report.name}.json", "png": results / f"{report.name}.png"}
    body = {
        "name": report.name,
        "quick": report.quick,
        "seconds": seconds,
        "machine": report.machine,
        "tables": [asdict(t) for t in report.tables],
        "targets": [asdict(t) | {"met": t.met} for t in report.targets],
        "metrics": report.metrics,
        "data": report.data,
        "markdown": report.markdown(),
    }
    paths["json"].write_text(json.dumps(body, indent=2, default=_json_default))
    figure = plot(report)
    figure.tight_layout()
    figure.savefig(paths["png"], dpi=110)
    plt.close(figure)
    _log_mlflow(report, results, seconds, [paths["json"], paths["png"], *report.files])
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _metric_name(name: str) -> str:
    """A metric name MLflow accepts: `R1@0.5` -> `R1_IoU0.5`, other characters it refuses -> `_`."""
    return re.sub(r"[^\w\-. :/]", "_", mlflow_key(name))


def _log_mlflow(report: Report, results: Path, seconds: float, files: list[Path]) -> None:
    """One run per benchmark in experiment `EXPERIMENT`: machine as params, metrics, targets, the files."""
    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(str(results)))
    m = report.machine
    params = {
        "cpu": m["cpu"],
        "cores": m["cores"],
        "memory_gib": m["memory_gib"],
        "torch_threads": m["torch_threads"],
        "load_avg_start": m["load_avg_1_5_15"],
        "load_avg_end": m["load_avg_1_5_15_at_end"],
        **{f"version.{k}": v for k, v in m["versions"].items()},
    }
    tags = {
        "bench": report.name,
        "quick": str(report.quick),
        "targets_met": f"{sum(t.met for t in report.targets)}/{len(report.targets)}",
    }
    run_id = open_run(
        client,
        EXPERIMENT,
        tags=tags,
        params=params,
        run_name=report.name + ("-quick" if report.quick else ""),
        patience_s=PATIENCE_S,
    )
    metrics = {**report.metrics, "seconds": seconds}
    metrics |= {f"target/{t.name}/met": float(t.met) for t in report.targets}
    finite = {_metric_name(k): float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    log_metrics(client, run_id, finite, PATIENCE_S)
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
