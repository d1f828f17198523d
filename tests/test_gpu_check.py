"""scripts/gpu_check.py: skipped cleanly without a GPU; its step + checkpoint round trip works (on CPU here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_gpu_check_without_gpu_skips_with_exit_0():
    out = _run()
    assert out.returncode == 0, out.stderr[-3000:]
    if not torch.cuda.is_available():
        assert out.stdout.startswith("skipped: no GPU")
    else:
        assert out.stdout.rstrip().endswith("ok")


def test_gpu_check_step_and_checkpoint_on_cpu(tmp_path):
    out = _run("--cpu", "--out", str(tmp_path / "ckpt"), "model.d_model=32", "model.num_heads=2")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[-1] == "ok"
    assert any(line.startswith("step: loss ") for line in lines)
    assert any("loaded back (global step 1)" in line for line in lines)
    assert (tmp_path / "ckpt" / "mktn_state.json").is_file()
    assert (tmp_path / "ckpt" / "ds" / "mp_rank_00_model_states.pt").is_file()
