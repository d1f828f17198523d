"""Shared test fixtures: the real annotation files under ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real TSG annotations directory (`shared/data/annotations`), or skip the test."""
    annotations = SHARED_DATA / "annotations"
    if not annotations.is_dir():
        pytest.skip(f"real annotations not found at {annotations}")
    return annotations
