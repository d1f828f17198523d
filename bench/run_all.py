"""Run every benchmark (`make bench`; `make bench-quick` passes --quick) and gather one summary.

Each benchmark runs in its own process (`python -m bench.<name>`, so Ray, DeepSpeed and memory never
leak from one into the next), in order, with the same --quick and --results. A failed benchmark is
reported and the others still run; the exit status is 1 if any failed. `<results>/SUMMARY.md` holds
the machine, each benchmark's wall time, every target, and every report's tables (from the JSONs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO_ROOT, Table, fmt, machine, parse, parser

BENCHMARKS = ("mp_vs_sp", "pipeline", "zero", "scaling", "mfu")
TIMEOUT_S = 3600.0


def run(name: str, quick: bool, threads: int, results: Path) -> tuple[bool, float]:
    """Run one benchmark to completion in a subprocess (its output passes through); (succeeded, seconds)."""
    args = [
        sys.executable,
        "-m",
        f"bench.{name}",
        "--results",
        str(results),
        "--threads",
        str(threads),
        *(["--quick"] if quick else []),
    ]
    started = time.perf_counter()
    print(f"\n=== bench.{name}{' --quick' if quick else ''} ===", flush=True)
    try:
        code = subprocess.run(
            args, cwd=REPO_ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"}, timeout=TIMEOUT_S
        ).returncode
    except subprocess.TimeoutExpired:
        print(f"bench.{name}: timed out after {TIMEOUT_S:.0f} s", file=sys.stderr)
        code = -1
    return code == 0, time.perf_counter() - started


def summary(
    names: list[str], outcomes: dict[str, tuple[bool, float]], results: Path, quick: bool, host: dict
) -> str:
    """SUMMARY.md: machine, wall times, all targets, then every report's markdown."""
    total = sum(seconds for _, seconds in outcomes.values())
    command = "make bench-quick" if quick else "make bench"
    lines = [
        f"# MKTN benchmarks{' (--quick)' if quick else ''}",
        "",
        f"Regenerate: `{command}` (= `python -m bench.run_all{' --quick' if quick else ''}`), "
        f"{total / 60:.1f} min in all.",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, GPU: {host['gpu']}; "
        f"torch {host['versions']['torch']}, deepspeed {host['versions']['deepspeed']}, ray {host['versions']['ray']}, "
        f"mlflow {host['versions']['mlflow']}; commit {host['git_commit']}; load average (1/5/15 min) at start "
        f"{host['load_avg_1_5_15']}.",
        "",
    ]
    runs, targets, reports = [], [], []
    for name in names:
        ok, seconds = outcomes[name]
        path = results / f"{name}.json"
        body = json.loads(path.read_text()) if ok and path.exists() else None
        load = body["machine"]["load_avg_1_5_15"] if body else "n/a"
        runs.append(
            {
                "benchmark": name,
                "status": "ok" if body else "FAILED",
                "seconds": seconds,
                "load at start": load,
            }
        )
        if body:
            targets += [
                {
                    "benchmark": name,
                    "target": t["name"],
                    "measured": t["value"],
                    "goal": f"{'<=' if t['lower_is_better'] else '>='} {fmt(float(t['goal']))}",
                    "met": "yes" if t["met"] else "NO",
                }
                for t in body["targets"]
            ]
            reports.append(body["markdown"])
    lines += [Table("Runs", runs).markdown(), Table("Targets", targets).markdown(), *reports]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, write SUMMARY.md, print the targets."""
    p = parser("run_all", __doc__.split("\n\n")[0])
    p.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)})",
    )
    args = parse(p, argv)
    names = list(args.only or BENCHMARKS)
    args.results.mkdir(parents=True, exist_ok=True)
    host = machine()
    outcomes = {name: run(name, args.quick, args.threads, args.results) for name in names}
    text = summary(names, outcomes, args.results, args.quick, host)
    (args.results / "SUMMARY.md").write_text(text)
    failed = [name for name, (ok, _) in outcomes.items() if not ok]
    print(
        f"\nwrote {args.results / 'SUMMARY.md'}; "
        + (f"FAILED: {', '.join(failed)}" if failed else "all benchmarks ran")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
