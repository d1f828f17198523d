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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The tiny prepared synthetic dataset (48 training, 16 validation videos in ~20 shards) the training
    tests share: (train URL, val URL). Read only."""
    from tests.train_jobs import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def trained_run(tiny_data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The one real multi-worker training run of the default suite, shared by every test that needs a trained
    run: `mktn train` on 2 Ray workers under DeepSpeed ZeRO-3, tracked in MLflow (SQLite), through a corrupt
    sample, a killed worker, a killed driver and `--resume` (`tests.train_jobs.train_through_faults`). Tests
    read it; those that add to it (an eval logged into its MLflow run) add only their own keys."""
    from tests.train_jobs import train_through_faults

    return train_through_faults(tmp_path_factory.mktemp("trained-run"), tiny_data)
