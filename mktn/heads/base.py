"""The interface every grounding backbone head implements, and the mask of valid moments."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class HeadOutput:
    """`log_scores` (B_q, T, T): log-score of the moment [clip s, clip e] (inclusive), masked (`mktn.layers.neg`) where invalid;
    `logits`: the head's raw outputs that its loss needs."""

    log_scores: Tensor
    logits: Tensor


def moment_mask(clip_mask: Tensor, max_len: int | None = None) -> Tensor:
    """(B_q, T, T) bool: moment [s, e] is valid when s <= e, clip e is real and e - s + 1 <= max_len."""
    t = clip_mask.shape[1]
    idx = torch.arange(t, device=clip_mask.device)
    length = idx[None, :] - idx[:, None] + 1  # (T, T): e - s + 1
    ok = (length >= 1) & (length <= (max_len or t))
    return ok[None] & clip_mask[:, None, :] & clip_mask[:, :, None]


class GroundingHead(nn.Module, ABC):
    """A backbone's grounding head: query-guided clip features -> scores of every candidate moment."""

    def __init__(self, max_len: int | None):
        super().__init__()
        self.max_len = max_len

    @abstractmethod
    def forward(self, fused: Tensor, clip_mask: Tensor, sentence: Tensor) -> HeadOutput:
        """fused (B_q, T, d) from the fusion, clip_mask (B_q, T), sentence feature (B_q, d)."""

    @abstractmethod
    def loss(
        self, out: HeadOutput, clip_mask: Tensor, start_idx: Tensor, end_idx: Tensor, clip_times: Tensor
    ) -> Tensor:
        """The backbone's grounding loss L_2 against the ground truth (clip indices and continuous clip units)."""
