"""Span predictor (VSLNet-like backbone, Zhang et al. 2020a) and its loss L_2 (Eq. 9).

Two stacked transformer blocks and two feed-forward heads: start logits from [h_1; F], end logits
from [h_2; F] (VSLNet's conditioned predictor), a softmax over the real clips giving P_s, P_e.
    L_2 = CE(P_s, Y_s) + CE(P_e, Y_e)       (Eq. 9, Y the one-hot rounded ground-truth clips)
The moment score is P_s(s) P_e(e), kept for s <= e only (log-scores log P_s(s) + log P_e(e)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.heads.base import GroundingHead, HeadOutput, moment_mask
from mktn.layers import encoder_layer, mask_logits, mlp


class SpanHead(GroundingHead):
    """Start/end distributions over clips -> log-scores of every (s, e) moment."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, max_len: int | None = None):
        super().__init__(max_len)
        self.blocks = nn.ModuleList(encoder_layer(d_model, num_heads, dropout) for _ in range(2))
        self.start = mlp(2 * d_model, d_model, 1, dropout=dropout)
        self.end = mlp(2 * d_model, d_model, 1, dropout=dropout)

    def forward(self, fused: Tensor, clip_mask: Tensor, sentence: Tensor) -> HeadOutput:
        h1 = self.blocks[0](fused, src_key_padding_mask=~clip_mask)
        h2 = self.blocks[1](h1, src_key_padding_mask=~clip_mask)
        start = mask_logits(self.start(torch.cat([h1, fused], -1))[..., 0], clip_mask)
        end = mask_logits(self.end(torch.cat([h2, fused], -1))[..., 0], clip_mask)
        log_scores = F.log_softmax(start, -1)[:, :, None] + F.log_softmax(end, -1)[:, None, :]
        return HeadOutput(
            mask_logits(log_scores, moment_mask(clip_mask, self.max_len)), torch.stack([start, end], 1)
        )

    def loss(
        self, out: HeadOutput, clip_mask: Tensor, start_idx: Tensor, end_idx: Tensor, clip_times: Tensor
    ) -> Tensor:
        return F.cross_entropy(out.logits[:, 0], start_idx) + F.cross_entropy(out.logits[:, 1], end_idx)
