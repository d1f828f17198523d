"""The unit of work of the whole system: a video group (one video with all its queries)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class QueryAnnotation:
    """One sentence query of a video with its ground-truth moment in seconds.

    `index` is the query's position in the video's annotation order; CSM uses it as the
    positional signal (never the ground-truth time, which would leak labels at test time).
    """

    query_id: str
    sentence: str
    start: float
    end: float
    index: int = 0


@dataclass
class VideoGroup:
    """A video's clip features and *all* of its queries: one WebDataset sample, one batch entry.

    `features` is float32 `(N_clips, D)` (no patches) or `(N_clips, C+1, D)` where token 0 is
    the clip's global token and tokens 1..C are its patch tokens.
    """

    video_id: str
    duration: float
    features: np.ndarray
    queries: list[QueryAnnotation]
    dataset: str = "unknown"
    split: str = "train"
    meta: dict = field(default_factory=dict)

    @property
    def num_clips(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_queries(self) -> int:
        return len(self.queries)
