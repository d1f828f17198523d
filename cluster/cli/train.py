"""`mktn train`: a distributed training job (Ray Train + DeepSpeed ZeRO), tracked in MLflow."""

from __future__ import annotations

import argparse

from cluster.cli.arguments import add_job_arguments
from cluster.cli.printing import print_registered, print_training
from cluster.job.config import JobConfig, load_config, override_config
from cluster.job.run_folder import RUN_FILE, RunFolder
from cluster.serve.registry import register_trained
from cluster.train.launcher import train

EPILOG = """examples:
  mktn train configs/synthetic.yaml data.train=runs/data/train data.val=runs/data/val \\
      cluster.num_workers=2 deepspeed.zero_stage=2 --output runs/train
  mktn train --output runs/train --resume          # continue after a crash, same MLflow run
  mktn train --output runs/train --resume train.epochs=20   # ... and train longer
  mktn train configs/synthetic.yaml ... --address 10.0.0.1:6379   # join a running Ray cluster

The run folder (--output) holds run.json, the MLflow store (mlflow.db + mlartifacts/, unless
MLFLOW_TRACKING_URI or mlflow.tracking_uri names a server), Ray's checkpoints (ray/train/, unless
cluster.storage_path names shared storage), the exported model (model/) and figures (plots/).
--output may be any fsspec URL (s3://bucket/runs/r1: set the AWS variables, and MLFLOW_TRACKING_URI to a
tracking server, since the SQLite store cannot live on an object store)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mktn train`."""
    parser = subparsers.add_parser(
        "train",
        help="train with Ray Train + DeepSpeed ZeRO, tracked in MLflow",
        description="Train MKTN on N Ray workers under DeepSpeed ZeRO (stage from the config); local Ray by "
        "default, an existing cluster with --address or RAY_ADDRESS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="job YAML (any fsspec URL); optional with --resume (the saved config is reused)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.lr=3e-4 cluster.num_workers=2",
    )
    add_job_arguments(
        parser,
        "run folder",
        "runs/train",
        "DIR_OR_URL",
        "continue the run in --output from its last checkpoint",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the model as NAME, alias champion "
        "(default: the config's mlflow.register_as; see `mktn register`)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `mktn train`."""
    outcome = train(job_config(args), args.output, address=args.address, resume=args.resume)
    print_training(outcome)
    registered = register_trained(outcome.folder, args.register)
    if registered is not None:
        print_registered(registered)
    return 0


def job_config(args: argparse.Namespace) -> JobConfig | None:
    """CONFIG + overrides; with `--resume` and no CONFIG, the overrides apply to the run's saved config."""
    config, overrides = args.config, args.overrides
    if config is not None and "=" in config:  # `--resume KEY=VALUE ...`: the first override, not a file
        config, overrides = None, [config, *overrides]
    if config is not None:
        return load_config(config, overrides)
    if not args.resume:
        raise ValueError("CONFIG is required unless --resume continues the run in --output")
    if not overrides:
        return None
    return override_config(
        RunFolder.read(args.output).job, overrides, f"{args.output.rstrip('/')}/{RUN_FILE}"
    )
