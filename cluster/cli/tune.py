"""`mktn tune`: a Ray Tune search over the job config, each trial a full `mktn train` job, tracked in MLflow."""

from __future__ import annotations

import argparse
import sys

from cluster.cli.arguments import add_job_arguments
from cluster.cli.printing import print_search
from cluster.job.config import load_config

EPILOG = """examples:
  mktn tune configs/synthetic.yaml data.train=runs/data/train data.val=runs/data/val \\
      --search configs/tune/synthetic.yaml --num-samples 8 --output runs/tune --register mktn-synthetic
  mktn tune --output runs/tune --resume             # continue an interrupted search (Tuner.restore)

The search folder (--output) holds search.json, the MLflow store (unless MLFLOW_TRACKING_URI or
mlflow.tracking_uri names a server), Ray Tune's state (ray/search/), one `mktn train` run folder per trial
(trials/<trial id>/), results.csv / results.parquet and plots/search.png (also in the parent MLflow run)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mktn tune`."""
    parser = subparsers.add_parser(
        "tune",
        help="hyper-parameter search with Ray Tune (ASHA), every trial a Ray Train + DeepSpeed job",
        description="Search the job config with Ray Tune: the space is a YAML of choice/uniform/loguniform over "
        "dotted config keys, validated before Ray starts; ASHA stops weak trials on the validation metric; trials "
        "queue so the cluster is never oversubscribed; each trial is an MLflow child run of the search's run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="base job YAML (optional with --resume)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the base job")
    parser.add_argument("--search", metavar="YAML", help="search space, e.g. configs/tune/synthetic.yaml")
    parser.add_argument("--num-samples", type=int, metavar="N", help="trials (default: the search file's)")
    add_job_arguments(
        parser, "search folder", "runs/tune", "DIR", "continue the search in --output (Tuner.restore)"
    )
    parser.add_argument("--register", metavar="NAME", help="register the best finished trial's model as NAME")
    parser.add_argument("--alias", default="champion", help="alias moved to that version (default champion)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `mktn tune`."""
    from cluster.tune.search import tune_search  # Ray Tune's import is slow: not for `mktn --help`

    if not args.resume and (args.config is None or args.search is None):
        raise ValueError("CONFIG and --search are required unless --resume continues the search in --output")
    job = load_config(args.config, args.overrides) if args.config else None
    outcome = tune_search(
        job,
        args.search,
        args.output,
        num_samples=args.num_samples,
        address=args.address,
        resume=args.resume,
        register_as=args.register,
        alias=args.alias,
    )
    print_search(outcome)
    name = args.register or outcome.folder.job.mlflow.register_as
    if name and outcome.registered is None:
        print(f"nothing registered as {name}: no trial finished training", file=sys.stderr)
        return 1
    return 0
