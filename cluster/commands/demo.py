"""`mktn demo`: the README's main job on the embedded defaults, end to end on one machine.

synthetic data -> video-grouped shards -> `mktn train` on 2 Ray workers under ZeRO-2 -> `mktn eval` on the
held-out shards -> the metrics table, inference throughput and the `mlflow ui` command for the run.
Running it again reuses what is already there: the shards, and the run once it finished (an interrupted
run is resumed from its last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cluster.commands.eval import log_eval
from cluster.commands.train import print_outcome
from cluster.config import load_config
from cluster.evaluate import evaluate
from cluster.launcher import train
from cluster.model_source import open_model
from cluster.run_folder import RUN_FILE, RunFolder
from cluster.storage import write_bytes_atomic
from cluster.summary import metrics_table, mlflow_ui_line
from data_pipeline.prepare import prepare_synthetic

DEFAULTS = Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml"
SHARD_SIZE_MB = 1.0  # ~14 training shards: enough whole shards to balance over the workers


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
    out = Path(args.output).resolve()
    data, run_dir = out / "data", out / "train"
    if not all((data / split / "dataset.json").exists() for split in ("train", "val")):
        prepare_synthetic(str(data), shard_size_mb=SHARD_SIZE_MB, overwrite=True)
    job = load_config(str(DEFAULTS), [f"data.train={data / 'train'}", f"data.val={data / 'val'}"])
    finished = (run_dir / RUN_FILE).exists() and RunFolder.read(run_dir).status == "finished"
    if finished:
        print(f"{run_dir}: training already finished; evaluating its model")
    else:
        print_outcome(train(job, str(run_dir), resume=(run_dir / RUN_FILE).exists()))
    torch.set_num_threads(1)  # as `mktn eval`: one thread per process
    source = open_model(str(run_dir))
    result = evaluate(source.model, str(data / "val"), source.data_cfg)
    write_bytes_atomic(str(out / "metrics.json"), json.dumps(result.to_json(), indent=2).encode())
    log_eval(source, result, str(data / "val"), str(run_dir))
    print(f"\nheld-out evaluation ({result.queries} queries, {result.videos} videos):")
    print(metrics_table(result.metrics))
    print(
        f"inference: {result.qps:.1f} queries/s, {result.vps:.1f} videos/s; metrics in {out / 'metrics.json'}"
    )
    print(
        f"demo finished in {time.perf_counter() - started:.0f} s. MLflow: {mlflow_ui_line(source.tracking_uri or '')}"
    )
    return 0
