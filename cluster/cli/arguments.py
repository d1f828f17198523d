"""Arguments several commands share."""

from __future__ import annotations

import argparse


def add_job_arguments(
    parser: argparse.ArgumentParser, folder: str, default_output: str, metavar: str, resume_help: str
) -> None:
    """`--output`, `--address` and `--resume`, which `mktn train` and `mktn tune` share: where the job's `folder`
    lives, which Ray cluster runs it, and whether to continue the one already there."""
    parser.add_argument(
        "--output", default=default_output, metavar=metavar, help=f"{folder} (default {default_output})"
    )
    parser.add_argument(
        "--address", metavar="RAY_ADDRESS", help="join this Ray cluster (default: RAY_ADDRESS, else local)"
    )
    parser.add_argument("--resume", action="store_true", help=resume_help)
