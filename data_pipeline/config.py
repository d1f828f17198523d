"""The data section of a job config: where the shards live and how video groups are batched and read."""

from __future__ import annotations

from pydantic import Field

from strict_config import StrictConfig


class DataConfig(StrictConfig):
    """Where shards live and how video groups are batched."""

    train: str | None = Field(None, description="shard directory/URL (holding manifest.parquet) for training")
    val: str | None = Field(None, description="shard directory/URL for validation")
    max_clips: int = Field(64, ge=1, description="clips per video after mean-pool resampling")
    max_words: int = Field(30, ge=1, description="words kept per sentence")
    max_queries_per_batch: int = Field(64, ge=1, description="query budget of one batch (whole video groups)")
    max_videos_per_batch: int = Field(16, ge=1, description="video budget of one batch")
    shuffle_buffer: int = Field(256, ge=0, description="video groups in the shuffle buffer (0 = no shuffle)")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    prefetch_batches: int = Field(
        2,
        ge=0,
        description="batches a background thread decodes ahead of the training loop (0 = in the loop)",
    )
    max_corrupt_samples: int = Field(
        10, ge=0, description="corrupt samples skipped (and logged) before a run stops"
    )
    verify_checksums: bool = Field(
        True, description="check each shard's sha256 against the manifest before reading"
    )
    max_sample_mb: float = Field(
        1024, gt=0, description="a shard member declaring more is a corrupt sample, never read (memory bound)"
    )
