"""`mktn eval`: a trained model on prepared shards -> the metrics table, inference QPS/VPS, JSON and MLflow."""

from __future__ import annotations

import argparse
import json
import os

import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cluster import tracking
from cluster.evaluate import EvalResult, evaluate
from cluster.model_source import ModelSource, open_model
from cluster.storage import write_bytes_atomic
from cluster.summary import metrics_table
from data_pipeline.shards import read_dataset_info

EVAL_EXPERIMENT = "mktn-eval"
PATIENCE_S = 300.0


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
    source = open_model(args.model)
    result = evaluate(source.model, args.data, source.data_cfg)
    print(metrics_table(result.metrics))
    print(
        f"{result.queries} queries, {result.videos} videos; inference {result.qps:.1f} queries/s, "
        f"{result.vps:.1f} videos/s"
    )
    if args.json:
        write_bytes_atomic(args.json, json.dumps(result.to_json(), indent=2).encode())
    run_id = log_eval(source, result, args.data, args.model)
    print(f"logged to MLflow run {run_id}")
    return 0


def log_eval(source: ModelSource, result: EvalResult, data_url: str, model_ref: str) -> str:
    """Log `eval/<dataset>/<split>/<metric>` (and inference QPS/VPS) to the model's run, or to a new eval run."""
    tracking.use_short_http_retries()
    uri = source.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(".")
    client = MlflowClient(uri)
    run_id = source.run_id
    if run_id is None:
        experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EVAL_EXPERIMENT)
        run_id = client.create_run(experiment_id, tags={"model": model_ref, "data": data_url}).info.run_id
    info = read_dataset_info(data_url)
    prefix = f"eval/{info['dataset']}/{info['split']}"
    values = result.metrics | {"inference_qps": result.qps, "inference_vps": result.vps}
    metrics = [
        Metric(tracking.mlflow_key(f"{prefix}/{k}"), float(v), tracking.now_ms(), 0)
        for k, v in values.items()
    ]
    tracking.retrying(
        client.log_batch, run_id, metrics=metrics, what="logging eval metrics", patience_s=PATIENCE_S
    )
    if source.run_id is None:
        tracking.retrying(client.set_terminated, run_id, what="closing the eval run", patience_s=PATIENCE_S)
    return run_id
