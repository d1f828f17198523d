"""The `mktn` console command. Each subcommand is one module here, `cluster/cli/<name>.py`, exposing
`register(subparsers)`, which adds its parser and sets `func(args) -> int` as the handler. Commands parse
arguments, call the room that does the work and print its outcome; they import no other command
(`arguments` and `printing` hold what several share)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommands in the order `mktn --help` lists them.
COMMANDS = ("prepare", "train", "eval", "demo", "tune", "register", "predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mktn",
        description="Multi-pair temporal sentence grounding (MKTN): prepare shards, train with Ray + DeepSpeed, "
        "track with MLflow, tune, register and predict.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"cluster.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mktn` command; user errors print one clear line and exit 2."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        if os.environ.get("MKTN_DEBUG"):
            raise
        print(f"mktn {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
