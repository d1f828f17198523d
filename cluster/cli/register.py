"""`mktn register`: a trained model -> a new version in the MLflow model registry, with a movable alias."""

from __future__ import annotations

import argparse

from cluster.cli.printing import print_registered

EPILOG = """examples:
  mktn register runs/train --name mktn-charades                  # the run's exported model, alias champion
  mktn register runs/train/ray/train/checkpoint_epoch0004 --alias candidate
  MLFLOW_TRACKING_URI=sqlite:////abs/runs/train/mlflow.db mktn register runs:/RUN_ID/model

The version is logged into the model's training run and tagged with its validation metrics, config,
dataset, manifest hashes and git commit. Load it with mlflow.pyfunc.load_model("models:/NAME@ALIAS"),
`mktn predict models:/NAME@ALIAS ...`, or serve it:
  MLFLOW_TRACKING_URI=... mlflow models serve -m models:/NAME@ALIAS --env-manager local"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mktn register`."""
    parser = subparsers.add_parser(
        "register",
        help="register a trained model in the MLflow model registry (pyfunc, alias champion)",
        description="Register a trained model as an mlflow.pyfunc model version (safetensors + JSON, nothing "
        "pickled) with its metrics, config, dataset manifest hash and git commit as tags, and move an alias to it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT_OR_FOLDER",
        help="a run folder (mktn train --output), a checkpoint folder, an exported model folder, "
        "or runs:/RUN_ID/model",
    )
    parser.add_argument("--name", metavar="NAME", help="registered model name (default mktn-<dataset>)")
    parser.add_argument(
        "--alias", default="champion", help="alias moved to the new version (default champion)"
    )
    parser.add_argument("--no-alias", action="store_true", help="register without moving any alias")
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="registry for a model without a recorded run (default MLFLOW_TRACKING_URI)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `mktn register`."""
    from cluster.serve import registry  # MLflow's import is slow: not for `mktn --help`

    print_registered(
        registry.register(args.source, args.name, None if args.no_alias else args.alias, args.tracking_uri)
    )
    return 0
