"""README examples run verbatim: the Python API's five lines, against a real trained run folder laid where
the README expects it (`runs/demo/train`, what `make demo` leaves)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.train_jobs import REPO, FaultedRun


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section whose heading is `section`."""
    text = (REPO / "README.md").read_text()
    body = re.search(rf"^{re.escape(section)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert body, f"README.md has no section {section!r}"
    return re.findall(r"^```python\n(.*?)^```", body.group(1), re.S | re.M)


def test_the_python_api_example_runs_verbatim(
    trained_run: FaultedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (code,) = python_blocks("## Python API")
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "train").symlink_to(trained_run.output)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    ranked = ast.literal_eval(capsys.readouterr().out.strip())
    from data_pipeline.synthetic import generate

    video = generate(1, seed=7)[0]
    assert len(ranked) == len(video.queries)
    for moments in ranked:
        assert len(moments) == 5
        assert all(0 <= start <= end <= video.duration + 1e-4 for start, end, _ in moments)
        assert [score for *_, score in moments] == sorted((score for *_, score in moments), reverse=True)
