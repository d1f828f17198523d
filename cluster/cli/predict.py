"""`mktn predict`: ground the sentences of a JSONL query file in their videos with a trained model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import fsspec

from cluster.serve.predict_figure import video_figures
from cluster.serve.predictor import Budget, Predictor, PredictResult
from cluster.serve.queries import Limits, read_queries
from data_pipeline.features import open_features

QUERY_FORMAT = """query file: one JSON object per line (the `generic` format of `mktn prepare`):
  {"video_id": "v1", "sentence": "person opens the door", "duration": 30.5}
  optional: "query_id", and the true moment "start"/"end" in seconds (plotted, and scored when every row has it)
output (--out): one JSON object per input line, in line order: {"row": LINE, "query_id", "video_id", "sentence",
  "duration", "moments": [{"start", "end", "score"}, ...]} or {"row": LINE, "error": "..."}.
A bad line gets its error (printed as FILE:LINE: ...); every other line is still predicted. Exit status 1 when
any line failed, 0 otherwise."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mktn predict`."""
    p = subparsers.add_parser(
        "predict",
        help="ranked moments (seconds, scores) for sentence queries, each video encoded once",
        description="Ground every sentence of a JSONL query file in its video with a trained model: queries are "
        "grouped by video and batched under a query budget (multi-pair inference), so each video is encoded once.",
        epilog=QUERY_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a registered model (models:/mktn-charades@champion, models:/NAME/"
        "VERSION), a run folder (mktn train --output), a checkpoint, an exported model folder, or "
        "runs:/RUN_ID/model",
    )
    p.add_argument(
        "--features",
        required=True,
        metavar="DIR_OR_URL",
        help="directory of {video_id}.npy, or one .h5/.hdf5 file keyed by video id",
    )
    p.add_argument("--hdf5-key", metavar="NAME", help="dataset inside each video's HDF5 group")
    p.add_argument("--queries", required=True, metavar="FILE", help="JSONL query file (any fsspec URL)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="moments per query (default 5)")
    p.add_argument("--out", metavar="FILE", help="write the JSONL predictions here (default: print them)")
    p.add_argument("--visualize", metavar="DIR", help="write one PNG per video: predicted and true moments")
    p.add_argument(
        "--batch-queries",
        type=int,
        metavar="N",
        help="query budget of one batch (default: the training run's data.max_queries_per_batch)",
    )
    p.add_argument(
        "--batch-videos",
        type=int,
        metavar="N",
        help="video budget of one batch (default: the training run's data.max_videos_per_batch)",
    )
    p.add_argument(
        "--max-clips-per-video",
        type=int,
        default=Limits.max_clips_per_video,
        metavar="N",
        help=f"refuse longer videos (default {Limits.max_clips_per_video})",
    )
    p.add_argument(
        "--max-queries-per-video",
        type=int,
        default=Limits.max_queries_per_video,
        metavar="N",
        help=f"refuse videos with more queries (default {Limits.max_queries_per_video})",
    )
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    for name in ("top_k", "batch_queries", "batch_videos", "max_clips_per_video", "max_queries_per_video"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    limits = Limits(
        max_clips_per_video=args.max_clips_per_video, max_queries_per_video=args.max_queries_per_video
    )
    queries, errors = read_queries(args.queries, limits)
    store = open_features(args.features, args.hdf5_key)
    predictor = Predictor.load(args.model, limits, args.tracking_uri)
    predictor.budget = Budget(
        args.batch_queries or predictor.budget.max_queries, args.batch_videos or predictor.budget.max_videos
    )
    result = predictor.predict_queries(queries, store.load, args.top_k, errors)
    records = result.records()
    _write(records, args.out)
    for error in result.errors:
        print(f"{args.queries}:{error.row}: {error.message}", file=sys.stderr)
    print(
        f"{len(result.moments)} of {len(records)} rows predicted, {len(result.errors)} refused; "
        f"{result.stats.summary()}",
        file=sys.stderr,
    )
    _print_metrics(result)
    if args.visualize:
        paths = video_figures(records, args.visualize)
        print(f"wrote {len(paths)} figures to {args.visualize}", file=sys.stderr)
    return 1 if result.errors else 0


def _write(records: list[dict[str, Any]], out: str | None) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if out is None:
        sys.stdout.write(lines)
        return
    with fsspec.open(out, "w") as f:
        f.write(lines)
    print(f"wrote {len(records)} rows to {out}", file=sys.stderr)


def _print_metrics(result: PredictResult) -> None:
    """R@n IoU=m and mIoU when every predicted row came with its true moment."""
    metrics = result.metrics()
    if metrics is not None:
        print("metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()), file=sys.stderr)
