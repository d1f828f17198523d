"""The padded, masked batch of video groups that every model consumes, and the rule that forms batches.

`budget_batches` packs whole video groups under a query and a video budget (a video's queries are never
split); `collate` pads them into one `Batch`.

A batch holds `B_v` video groups and all `B_q` of their queries. Videos are encoded once;
`query_video[j]` says which video query `j` belongs to. Token 0 of a clip is its global
token; tokens 1..C are patch tokens (C = 0 for features without patches, so P = C+1 = 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from data_pipeline.errors import DataError
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup


@dataclass
class Batch:
    """Tensors of one batch; shapes use B_v videos, B_q queries, T clips, P tokens/clip, L words."""

    video_feats: torch.Tensor  # (B_v, T, P, D) float32
    video_mask: torch.Tensor  # (B_v, T) bool, True on real clips
    durations: torch.Tensor  # (B_v,) float32 seconds
    num_clips: torch.Tensor  # (B_v,) long, real clips after resampling
    query_video: torch.Tensor  # (B_q,) long, index of the query's video in this batch
    query_index: torch.Tensor  # (B_q,) long, position in its video's annotation order
    word_ids: torch.Tensor  # (B_q, L) long, 0 = padding
    word_mask: torch.Tensor  # (B_q, L) bool
    times: torch.Tensor  # (B_q, 2) float32 ground truth (start, end) in seconds
    clip_times: torch.Tensor  # (B_q, 2) float32 ground truth in continuous clip units
    start_idx: torch.Tensor  # (B_q,) long, clip holding the start
    end_idx: torch.Tensor  # (B_q,) long, clip holding the end (>= start_idx)
    video_ids: list[str]
    query_ids: list[str]
    sentences: list[str]

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor moved to `device` (lists are shared)."""
        moved = {
            f.name: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)


def resample_clips(features: np.ndarray, max_clips: int) -> np.ndarray:
    """Mean-pool a video's clips down to at most `max_clips` (VSLNet's `visual_feature_sampling`).

    Videos with fewer clips are returned unchanged (and padded + masked by `collate`).
    """
    n = features.shape[0]
    if n <= max_clips:
        return features
    edges = np.linspace(0, n, max_clips + 1).astype(np.int64)
    return np.stack([features[a : max(b, a + 1)].mean(axis=0) for a, b in zip(edges[:-1], edges[1:])])


def moment_to_clips(start: float, end: float, duration: float, n_clips: int) -> tuple[float, float, int, int]:
    """Seconds -> (continuous start, continuous end, start clip, end clip) for `n_clips` equal clips.

    Clip `i` covers `[i, i+1) * duration / n_clips`. The end clip is the one holding `end`
    (clamped so that start clip <= end clip < n_clips).
    """
    cs, ce = start / duration * n_clips, end / duration * n_clips
    s_idx = min(max(int(np.floor(cs)), 0), n_clips - 1)
    e_idx = min(max(int(np.ceil(ce)) - 1, s_idx), n_clips - 1)
    return cs, ce, s_idx, e_idx


def budget_batches(
    groups: Iterable[VideoGroup], max_queries: int, max_videos: int, oversized: str = "refuse"
) -> Iterator[list[VideoGroup]]:
    """Cut a stream of video groups into lists of at most `max_queries` queries and `max_videos` videos.

    A video group is never split. One with more queries than the budget is an error naming it
    (`oversized="refuse"`, training: the budget bounds memory) or a batch of its own (`oversized="alone"`,
    inference: every query must get an answer).
    """
    if oversized not in ("refuse", "alone"):
        raise ValueError(f"oversized={oversized!r}: expected 'refuse' or 'alone'")
    batch: list[VideoGroup] = []
    queries = 0
    for group in groups:
        if group.num_queries > max_queries and oversized == "refuse":
            raise DataError(
                f"video {group.video_id!r} has {group.num_queries} queries, more than "
                f"max_queries_per_batch={max_queries}; a video group is never split, so raise the budget"
            )
        if batch and (queries + group.num_queries > max_queries or len(batch) >= max_videos):
            yield batch
            batch, queries = [], 0
        batch.append(group)
        queries += group.num_queries
    if batch:
        yield batch


def collate(groups: Sequence[VideoGroup], vocab: Vocab, max_clips: int, max_words: int = 30) -> Batch:
    """Pad and mask whole video groups into one `Batch`; no video's queries are ever split.

    Clips beyond `max_clips` are mean-pooled (`resample_clips`); shorter videos are padded
    with zeros and masked. Sentences are tokenised with `vocab` and truncated to `max_words`.
    """
    if not groups:
        raise ValueError("collate needs at least one video group")
    feats = [g.features if g.features.ndim == 3 else g.features[:, None, :] for g in groups]
    tokens, dims = {f.shape[1] for f in feats}, {f.shape[2] for f in feats}
    if len(tokens) != 1 or len(dims) != 1:
        raise ValueError(f"video groups disagree on feature shape: tokens/clip {tokens}, dims {dims}")
    feats = [resample_clips(f.astype(np.float32, copy=False), max_clips) for f in feats]
    t_max = max(f.shape[0] for f in feats)
    video = np.zeros((len(groups), t_max, tokens.pop(), dims.pop()), dtype=np.float32)
    video_mask = np.zeros((len(groups), t_max), dtype=bool)
    for i, f in enumerate(feats):
        video[i, : f.shape[0]] = f
        video_mask[i, : f.shape[0]] = True

    q_video, q_index, times, clip_times, s_idx, e_idx, ids, q_ids, sentences = ([] for _ in range(9))
    for vi, (g, f) in enumerate(zip(groups, feats)):
        for q in g.queries:
            cs, ce, si, ei = moment_to_clips(q.start, q.end, g.duration, f.shape[0])
            q_video.append(vi)
            q_index.append(q.index)
            times.append((q.start, q.end))
            clip_times.append((cs, ce))
            s_idx.append(si)
            e_idx.append(ei)
            ids.append(vocab.encode(q.sentence, max_words) or [1])
            q_ids.append(q.query_id)
            sentences.append(q.sentence)
    l_max = max(len(x) for x in ids)
    word_ids = np.zeros((len(ids), l_max), dtype=np.int64)
    for j, x in enumerate(ids):
        word_ids[j, : len(x)] = x

    return Batch(
        video_feats=torch.from_numpy(video),
        video_mask=torch.from_numpy(video_mask),
        durations=torch.tensor([g.duration for g in groups], dtype=torch.float32),
        num_clips=torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
        query_video=torch.tensor(q_video, dtype=torch.long),
        query_index=torch.tensor(q_index, dtype=torch.long),
        word_ids=torch.from_numpy(word_ids),
        word_mask=torch.from_numpy(word_ids != 0),
        times=torch.tensor(times, dtype=torch.float32),
        clip_times=torch.tensor(clip_times, dtype=torch.float32),
        start_idx=torch.tensor(s_idx, dtype=torch.long),
        end_idx=torch.tensor(e_idx, dtype=torch.long),
        video_ids=[g.video_id for g in groups],
        query_ids=q_ids,
        sentences=sentences,
    )
