"""`mktn prepare`: turn a TSG dataset (or the synthetic generator) into video-grouped WebDataset shards."""

from __future__ import annotations

import argparse
from typing import Any

from cluster.job.storage import check_reachable
from data_pipeline.build import BuildOptions
from data_pipeline.features import MAX_FEATURE_BYTES
from data_pipeline.prepare import prepare_annotations, prepare_synthetic
from data_pipeline.readers import FORMATS
from data_pipeline.synthetic import MIXES

LAYOUT = """output layout (any fsspec URL: a path, file://, s3://, memory://):
  shards/shard-NNNNNN.tar  one sample per video group (<key>.npy features + <key>.json queries)
  manifest.parquet         one row per video;  shards.parquet: sha256 per shard
  vocab.json, dataset.json (written last: a dataset without it is incomplete)
Re-running into an existing dataset is refused unless --overwrite; a prepare running into the same
output is refused (OUT/.mktn.lock names it)."""

HELP = {
    "charades-sta": "Charades-STA txt (`VID START END##sentence`); durations from --durations or --feature-fps",
    "activitynet": "ActivityNet Captions json (train.json, val_1.json, val_2.json)",
    "tacos": "TACoS json: frame timestamps + fps (2D-TAN form) or seconds (--tacos-unit seconds)",
    "moment-detr": "Moment-DETR / Lighthouse JSONL ({qid, query, duration, vid, relevant_windows})",
    "generic": 'generic JSONL, one query per line: {"video_id","duration","start","end","sentence"[,"query_id"]}',
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mktn prepare` with one sub-command per dataset format plus `synthetic`."""
    parser = subparsers.add_parser(
        "prepare",
        help="annotations + features -> WebDataset shards grouped by video",
        description="Validate a TSG dataset and write it as WebDataset shards, one sample per video group.",
        epilog=LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for fmt in FORMATS:
        _add_dataset(kinds, fmt)
    _add_synthetic(kinds)


def _add_dataset(kinds: argparse._SubParsersAction, fmt: str) -> None:
    p = kinds.add_parser(
        fmt,
        help=HELP[fmt],
        description=HELP[fmt],
        epilog=LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--annotations", required=True, metavar="FILE", help="annotation file (any fsspec URL)")
    p.add_argument(
        "--features",
        required=True,
        metavar="DIR_OR_URL",
        help="directory of {video_id}.npy, or one .h5/.hdf5 file keyed by video id",
    )
    p.add_argument("--out", required=True, metavar="URL", help="output dataset URL")
    p.add_argument("--split", default="train", help="split name stored in the manifest (default: train)")
    p.add_argument(
        "--hdf5-key", metavar="NAME", help="dataset inside each video's HDF5 group (e.g. c3d_features)"
    )
    p.add_argument(
        "--feature-dim", type=int, metavar="D", help="expected feature dim (default: the first video's)"
    )
    p.add_argument(
        "--feature-fps",
        type=float,
        metavar="FPS",
        help="feature clips per second, for the duration when the annotations have none",
    )
    p.add_argument(
        "--end-tolerance",
        type=float,
        default=2.0,
        metavar="S",
        help="an end past the duration by at most S seconds is clamped and counted; "
        "more is an error (default 2.0: Charades-STA overshoots by up to 1.54 s)",
    )
    p.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="keep rows repeating a video's (start, end, sentence); TACoS ships ~800",
    )
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="raise: stop at the first bad item (default); skip: drop it, count and report it",
    )
    p.add_argument(
        "--vocab", metavar="URL", help="reuse this vocab.json (the training split's, for val/test)"
    )
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="read feature files that are links leading out of the --features directory (default: refused)",
    )
    p.add_argument(
        "--max-feature-mb",
        type=int,
        default=MAX_FEATURE_BYTES >> 20,
        metavar="MB",
        help=f"refuse one video's features over this size (default {MAX_FEATURE_BYTES >> 20})",
    )
    if fmt == "charades-sta":
        p.add_argument(
            "--durations",
            action="append",
            default=[],
            metavar="FILE",
            help="charades.json or Charades_v1_*.csv with video lengths (repeatable)",
        )
    if fmt == "tacos":
        p.add_argument(
            "--tacos-unit",
            choices=("frames", "seconds"),
            default="frames",
            help="frames: timestamps in frames with fps/num_frames (2D-TAN form); seconds: with duration",
        )
        p.add_argument(
            "--keep-video-ext", action="store_true", help="keep '.avi' in video ids (default: strip)"
        )
    _add_output_options(p)
    p.set_defaults(func=_run_dataset)


def _add_synthetic(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser(
        "synthetic",
        help="deterministic synthetic videos with planted moments (train/ and val/)",
        description="Generate the synthetic dataset: OUT/train and OUT/val sharing one vocabulary.",
        epilog=LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", required=True, metavar="URL", help="output URL; train/ and val/ are written under it"
    )
    p.add_argument("--videos", type=int, default=300, help="training videos (default 300)")
    p.add_argument("--val-videos", type=int, default=100, help="validation videos (default 100)")
    p.add_argument("--mix", choices=sorted(MIXES), default="charades", help="queries-per-video style")
    p.add_argument("--mean-queries", type=float, help="override the mix's mean queries per video")
    p.add_argument("--seed", type=int, default=0, help="train uses SEED, val SEED+1 (default 0)")
    p.add_argument("--feature-dim", type=int, default=64, help="feature dim (default 64)")
    p.add_argument("--patches", type=int, default=4, help="patch tokens per clip C (tokens = C+1; 0 = none)")
    _add_output_options(p, shard_size_mb=2.0)
    p.set_defaults(func=_run_synthetic)


def _add_output_options(p: argparse.ArgumentParser, shard_size_mb: float = 64.0) -> None:
    """Shared output flags; synthetic defaults to small shards so several training workers each get some."""
    p.add_argument(
        "--shard-size-mb",
        type=float,
        default=shard_size_mb,
        help=f"target shard size in MB (default {shard_size_mb:g})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at the output")
    p.add_argument(
        "--break-lock", action="store_true", help="take over the output's lock left by a crashed prepare"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_dataset(args: argparse.Namespace) -> int:
    check_reachable(args.out, "--out")
    options = BuildOptions(
        dataset=args.dataset,
        split=args.split,
        end_tolerance_s=args.end_tolerance,
        allow_duplicates=args.allow_duplicates,
        feature_dim=args.feature_dim,
        feature_fps=args.feature_fps,
    )
    info = prepare_annotations(
        args.dataset,
        args.annotations,
        args.features,
        args.out,
        options=options,
        on_error=args.on_error,
        durations=getattr(args, "durations", ()),
        tacos_unit=getattr(args, "tacos_unit", "frames"),
        keep_extension=getattr(args, "keep_video_ext", False),
        hdf5_key=args.hdf5_key,
        vocab=args.vocab,
        shard_size_mb=args.shard_size_mb,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        follow_links=args.follow_links,
        max_feature_bytes=args.max_feature_mb << 20,
        break_lock=args.break_lock,
    )
    _summary(args.out, info)
    return 0


def _run_synthetic(args: argparse.Namespace) -> int:
    check_reachable(args.out, "--out")
    infos = prepare_synthetic(
        args.out,
        videos=args.videos,
        val_videos=args.val_videos,
        mix=args.mix,
        seed=args.seed,
        mean_queries=args.mean_queries,
        feature_dim=args.feature_dim,
        num_patches=args.patches,
        shard_size_mb=args.shard_size_mb,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        break_lock=args.break_lock,
    )
    for split, info in infos.items():
        _summary(f"{args.out.rstrip('/')}/{split}", info)
    return 0


def _summary(url: str, info: dict[str, Any]) -> None:
    counts, checks = info["counts"], info["validation"]
    print(
        f"{url}: {counts['videos']} videos, {counts['queries']} queries, {counts['shards']} shards, "
        f"{counts['bytes'] / 1e6:.1f} MB, vocab {counts['vocab']}, features {info['tokens_per_clip']}x"
        f"{info['feature_dim']} per clip; skipped {len(checks['skipped'])} items "
        f"({checks['skipped_queries']} queries), clamped {checks['clamped_ends']} ends"
    )
    for message in checks["skipped"][:10]:
        print(f"  skipped: {message}")
    if len(checks["skipped"]) > 10:
        print(f"  ... and {len(checks['skipped']) - 10} more (all listed in dataset.json)")
