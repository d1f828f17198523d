"""A deterministic synthetic TSG dataset with planted, learnable moments, with or without cross-pair structure.

`generate(..., structure=...)`: "none" plants every query's moment independently (`plain`); the others give
videos the cross-pair structure of a real dataset, each with a case only another pair disambiguates
(`structures`). All live in one `world` of objects, actions and scenes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from data_pipeline.synthetic.plain import plain_video
from data_pipeline.synthetic.structures import STRUCTURES, Structure, structured_video
from data_pipeline.synthetic.world import ACTIONS, MIXES, OBJECTS, MixProfile, World
from data_pipeline.types import VideoGroup

QueryMix = Literal["charades", "activitynet", "tacos"]

__all__ = ["ACTIONS", "MIXES", "OBJECTS", "STRUCTURES", "MixProfile", "QueryMix", "Structure", "generate"]


def generate(
    num_videos: int,
    seed: int,
    *,
    query_mix: QueryMix = "charades",
    structure: Structure = "none",
    mean_queries: float | None = None,
    num_clips: tuple[int, int] | None = None,
    feature_dim: int = 64,
    num_patches: int = 4,
    noise: float = 0.5,
    split: str = "train",
    world_seed: int = 0,
) -> list[VideoGroup]:
    """Generate `num_videos` video groups with planted moments, deterministically from `seed`.

    Video `i` depends only on `(seed, i)` and the world, so `generate(10, s)[:5] == generate(5, s)`.
    `mean_queries` and `num_clips` (inclusive range) override the mix's defaults; `noise` is the
    norm of the per-token Gaussian noise relative to a unit-norm evidence vector.
    """
    if query_mix not in MIXES:
        raise ValueError(f"unknown query mix {query_mix!r}; expected one of {sorted(MIXES)}")
    if structure not in STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; expected one of {list(STRUCTURES)}")
    if num_videos < 0 or feature_dim < 1 or num_patches < 0:
        raise ValueError("num_videos >= 0, feature_dim >= 1 and num_patches >= 0 are required")
    profile = MIXES[query_mix]
    mean_q = profile.mean_queries if mean_queries is None else mean_queries
    clips = profile.num_clips if num_clips is None else num_clips
    if mean_q < 1 or not 2 <= clips[0] <= clips[1]:
        raise ValueError(
            f"need mean_queries >= 1 and 2 <= num_clips[0] <= num_clips[1], got {mean_q}, {clips}"
        )
    world = World.make(world_seed, feature_dim)
    groups = []
    for i in range(num_videos):
        rng, video_id = np.random.default_rng([seed, i]), f"syn-{split}-s{seed}-{i:06d}"
        if structure == "none":
            groups.append(
                plain_video(
                    rng, video_id, profile, mean_q, clips, world, num_patches, noise, query_mix, split
                )
            )
            continue
        features, duration, queries, meta = structured_video(
            rng, video_id, structure, profile, mean_q, clips, world, num_patches, noise
        )
        groups.append(
            VideoGroup(
                video_id=video_id,
                duration=duration,
                features=features,
                queries=queries,
                dataset=f"synthetic-{query_mix}",
                split=split,
                meta={"generator": "mktn-synthetic-v2", **meta},
            )
        )
    return groups
