"""Co-attention + BiGRU fusion (paper section "Multi-Modal Fusion"; Lu et al. 2019, VSLNet's context-query attention).

    S = V (Q W_S)^T / sqrt(d)        (Eq. 1, scaled for stable softmaxes; W_S shared with AVM)
    A = S_r (Q W_S),  B = S_r S_c^T V,   S_r / S_c = softmax of S over words / over clips (masked)
    F = BiGRU(W_f [V; A; V * A; V * B])

W_f (4d -> d) is VSLNet's `cqa_linear`, which projects the concatenation back to d before its
predictor. It splits as W_f [V; A; V*A; V*B] = W_V V + W_A A + W_VA (V*A) + W_VB (V*B): the first term
depends on the video alone and is computed once per video (`project_video`), the rest per query.
Design choice: the per-query sentence feature (CSM's output, or q_e) is concatenated to every clip of F
and projected back to d, as VSLNet's query-conditioned concatenation does; this is how the mined
cross-sentence knowledge reaches the grounding head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.layers import PaddedBiGRU, mask_logits


class CoAttentionFusion(nn.Module):
    """Query-guided clip features F (B_q, T, d), batched over all queries of the batch."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.d_model = d_model
        self.w_s = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(4 * d_model, d_model)  # W_f
        self.gru = PaddedBiGRU(d_model, d_model)
        self.condition = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * d_model, d_model))

    def project_query(self, words: Tensor) -> Tensor:
        """Q W_S: words (B_q, N_q, d) in the video space (used by Eq. 1 here and by AVM)."""
        return self.w_s(words)

    def project_video(self, clips: Tensor) -> Tensor:
        """Per-video work: W_V V + b_f (B_v, T, d), the video's share of W_f [V; A; V * A; V * B]."""
        return F.linear(clips, self.merge.weight[:, : self.d_model], self.merge.bias)

    def forward(
        self,
        clips: Tensor,
        clips_merged: Tensor,
        clip_mask: Tensor,
        words_ws: Tensor,
        word_mask: Tensor,
        sentence: Tensor,
    ) -> Tensor:
        """Each query's clips (B_q, T, d) and their `project_video` (B_q, T, d), words_ws = Q W_S (B_q, N_q, d),
        sentence (B_q, d)."""
        s = clips @ words_ws.transpose(1, 2) / math.sqrt(clips.shape[-1])  # (B_q, T, N_q)
        s_r = torch.softmax(mask_logits(s, word_mask[:, None, :]), dim=2)
        s_c = torch.softmax(mask_logits(s, clip_mask[:, :, None]), dim=1)
        a = s_r @ words_ws
        b = s_r @ (s_c.transpose(1, 2) @ clips)
        merged = clips_merged + F.linear(
            torch.cat([a, clips * a, clips * b], -1), self.merge.weight[:, self.d_model :]
        )
        fused = self.gru(merged, clip_mask)
        cond = torch.cat([fused, sentence[:, None].expand_as(fused)], dim=-1)
        return self.condition(cond) * clip_mask[..., None].to(fused.dtype)
