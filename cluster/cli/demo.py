"""`mktn demo`: the README's main job on the embedded defaults, end to end on one machine.

synthetic data -> video-grouped shards -> `mktn train` on 2 Ray workers under ZeRO-2 -> `mktn eval` on the
held-out shards -> the metrics table, inference throughput and the `mlflow ui` command for the run
(`cluster.demo.pipeline`; a second run reuses the shards and the finished run).
"""

from __future__ import annotations

import argparse
import time

from cluster.cli.printing import metrics_table, mlflow_ui_line, print_training
from cluster.demo.pipeline import run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mktn demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="synthetic data -> shards -> 2-worker ZeRO-2 training -> eval, on the embedded defaults",
        description="Run the whole system on one machine with configs/synthetic.yaml: generate the synthetic "
        "dataset, shard it, train on 2 Ray workers under DeepSpeed ZeRO-2 with MLflow tracking, evaluate on "
        "the held-out shards and print the metrics and where the MLflow run is.",
    )
    parser.add_argument(
        "--output", default="runs/demo", metavar="DIR", help="demo folder (default runs/demo)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `mktn demo`."""
    started = time.perf_counter()
    outcome = run_demo(args.output)
    if outcome.trained is None:
        print(f"{outcome.run_dir}: training already finished; evaluated its model")
    else:
        print_training(outcome.trained)
    result = outcome.result
    print(f"\nheld-out evaluation ({result.queries} queries, {result.videos} videos):")
    print(metrics_table(result.metrics))
    print(
        f"inference: {result.qps:.1f} queries/s, {result.vps:.1f} videos/s; metrics in {outcome.metrics_file}"
    )
    print(
        f"demo finished in {time.perf_counter() - started:.0f} s. MLflow: {mlflow_ui_line(outcome.tracking_uri)}"
    )
    return 0
