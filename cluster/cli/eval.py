"""`mktn eval`: a trained model on prepared shards -> the metrics table, inference QPS/VPS, JSON and MLflow."""

from __future__ import annotations

import argparse
import json

import torch

from cluster.cli.printing import metrics_table
from cluster.job.storage import write_bytes_atomic
from cluster.serve.evaluate import EVAL_EXPERIMENT, evaluate, log_eval
from cluster.serve.predictor import Predictor


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mktn eval`."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained model on prepared shards (R@n IoU=m, mIoU, inference QPS/VPS)",
        description="Evaluate a model on a prepared dataset: prints the metrics table and inference throughput, "
        "writes them as JSON (--json) and logs them to MLflow: into the model's training run when it is "
        f"known, else into a new run of experiment {EVAL_EXPERIMENT!r}.",
        epilog="MODEL is a run folder (mktn train --output), a checkpoint folder (…/ray/train/checkpoint_*), an "
        "exported model folder, or an MLflow URI (runs:/RUN_ID/model, models:/NAME@ALIAS; MLFLOW_TRACKING_URI).",
    )
    parser.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT_OR_MODEL_URI")
    parser.add_argument(
        "--data", required=True, metavar="SHARDS", help="prepared dataset URL (mktn prepare --out)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the metrics (percent) and throughput here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default 1, as each training worker: on a shared machine more "
        "threads contend and inference slows down)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `mktn eval`."""
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model)
    result = evaluate(predictor, args.data)
    print(metrics_table(result.metrics))
    print(
        f"{result.queries} queries, {result.videos} videos; inference {result.qps:.1f} queries/s, "
        f"{result.vps:.1f} videos/s"
    )
    if args.json:
        write_bytes_atomic(args.json, json.dumps(result.to_json(), indent=2).encode())
    run_id = log_eval(predictor, result, args.data, args.model)
    print(f"logged to MLflow run {run_id}")
    return 0
