"""Small builders shared by the model tests: tiny synthetic batches, a small config, extra padding."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from data_pipeline.batch import Batch, collate
from data_pipeline.synthetic import generate
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup
from mktn.config import ModelConfig
from mktn.model import MKTN, build_model

FEATURE_DIM = 16


def tiny_groups(num_videos: int, patches: int = 3, seed: int = 0) -> list[VideoGroup]:
    """A few synthetic video groups with short videos (6-12 clips) and small features."""
    return generate(num_videos, seed=seed, feature_dim=FEATURE_DIM, num_patches=patches, num_clips=(6, 12))


def small_config(**overrides: Any) -> ModelConfig:
    """A narrow model without dropout (so train-mode outputs are deterministic)."""
    return ModelConfig.model_validate({"d_model": 16, "num_heads": 2, "dropout": 0.0} | overrides)


def vocab_of(groups: list[VideoGroup]) -> Vocab:
    return Vocab.build(q.sentence for g in groups for q in g.queries)


def model_for(groups: list[VideoGroup], cfg: ModelConfig, max_clips: int = 16, seed: int = 0) -> MKTN:
    """A model built for the feature shape of `groups`, seeded."""
    torch.manual_seed(seed)
    tokens = groups[0].features.shape[1] if groups[0].features.ndim == 3 else 1
    return build_model(cfg, vocab_of(groups), FEATURE_DIM, tokens, max_clips)


def batch_of(groups: list[VideoGroup], model: MKTN) -> Batch:
    return collate(groups, model.vocab, model.max_clips)


def pad_batch(batch: Batch, extra_clips: int, extra_words: int) -> Batch:
    """The same batch with `extra_clips` more padded clips per video and `extra_words` more padded words."""
    return dataclasses.replace(
        batch,
        video_feats=F.pad(batch.video_feats, (0, 0, 0, 0, 0, extra_clips), value=7.0),  # junk, but masked
        video_mask=F.pad(batch.video_mask, (0, extra_clips)),
        word_ids=F.pad(batch.word_ids, (0, extra_words)),
        word_mask=F.pad(batch.word_mask, (0, extra_words)),
    )
