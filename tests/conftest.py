"""Shared test fixtures: the real annotation files under ../shared/data (skipped when absent), fake features."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real TSG annotations directory (`shared/data/annotations`), or skip the test."""
    annotations = SHARED_DATA / "annotations"
    if not annotations.is_dir():
        pytest.skip(f"real annotations not found at {annotations}")
    return annotations


def write_npy_features(
    directory: Path, video_ids: Iterable[str], dim: int = 8, tokens: int = 0, seed: int = 0
) -> None:
    """Random float32 features `{video_id}.npy` (8-24 clips; `(N, D)` or `(N, tokens, D)`) standing in
    for real ones, which no public repository ships (see shared/data/annotations/SOURCES.md)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for vid in video_ids:
        shape = (int(rng.integers(8, 25)), tokens, dim) if tokens else (int(rng.integers(8, 25)), dim)
        np.save(directory / f"{vid}.npy", rng.standard_normal(shape).astype(np.float32))
