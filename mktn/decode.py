"""Decoding: the best moments of every query, in seconds.

1. Candidates are the moments [s, e] with s <= e (and the optional max length) that the head scored:
   (t_s, t_e) = argmax_{s <= e} P_s(s) P_e(e) for the span head, the best map cell for the map head.
2. Top-k with temporal NMS (2D-TAN style): pick the best remaining moment, drop every moment whose
   IoU with it exceeds `nms_iou`, repeat k times. Vectorised over queries (one step per rank).
   Ties go to the first moment in (start, end) order: the earliest start, then the shortest.
3. Refinement (Eq. 10): (s + 1 - O_s(s), e + O_e(e)) in clip units; if the refined start passes the
   refined end, the coarse clip boundaries (s, e + 1) are kept, so start <= end always holds.
4. Seconds: clip units * duration / num_clips, clipped to [0, duration].
"""

from __future__ import annotations

import torch
from torch import Tensor

from mktn.heads import refine
from mktn.heads.proposal_map import moment_iou
from mktn.layers import is_masked, mask_logits

Moment = tuple[float, float, float]  # (start_s, end_s, score)


def top_moments(log_scores: Tensor, top_k: int, nms_iou: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k moments per query after NMS: starts, ends, log-scores (B_q, k) and a validity mask (B_q, k)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scores = log_scores.detach().float()
    b, t, _ = scores.shape
    rows = torch.arange(b, device=scores.device)
    picks: list[tuple[Tensor, Tensor, Tensor]] = []
    for _ in range(min(top_k, t * (t + 1) // 2)):
        value, flat = scores.flatten(1).max(dim=1)  # first maximum on ties
        start, end = flat // t, flat % t
        picks.append((start, end, value))
        chosen = torch.stack([start, end + 1], dim=1).to(scores.dtype)
        suppress = moment_iou(chosen, t) > nms_iou
        suppress[rows, start, end] = True
        scores = mask_logits(scores, ~suppress)
    starts, ends, values = (torch.stack(x, dim=1) for x in zip(*picks))
    return starts, ends, values, ~is_masked(values, log_scores.dtype)


def decode_moments(
    log_scores: Tensor,
    offsets: Tensor,
    num_clips: Tensor,
    durations: Tensor,
    top_k: int = 5,
    nms_iou: float = 0.5,
) -> list[list[Moment]]:
    """Ranked `(start_s, end_s, score)` lists, one per query; `score` = exp(log-score) (P_s P_e, or the map's sigmoid).

    `num_clips` and `durations` are per query (B_q,). A query has fewer than `top_k` moments only when
    fewer valid moments survive NMS.
    """
    starts, ends, values, valid = top_moments(log_scores, top_k, nms_iou)
    t_s, t_e = refine(offsets.detach(), starts, ends)
    flipped = t_s > t_e
    t_s = torch.where(flipped, starts.to(t_s.dtype), t_s)
    t_e = torch.where(flipped, (ends + 1).to(t_e.dtype), t_e)
    scale = (durations / num_clips.clamp_min(1))[:, None]
    dur = durations[:, None].expand_as(t_s)
    start_s = torch.minimum((t_s * scale).clamp_min(0), dur)
    end_s = torch.minimum((t_e * scale).clamp_min(0), dur)
    rows = zip(start_s.tolist(), end_s.tolist(), values.exp().tolist(), valid.tolist())
    return [[(s, e, p) for s, e, p, ok in zip(*row) if ok] for row in rows]
