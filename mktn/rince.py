"""RINCE, robust InfoNCE (Chuang et al. 2022) for the prototype alignments: Eq. 6-8.

Written as in Chuang et al. with q = tau and lambda = alpha (MKTN.md), for a row with positive
logit s+ and candidate logits s_j (the positive included):

    L = -exp(q * s+) / q + (alpha * sum_j exp(s_j))^q / q,        tau = q, alpha in (0, 1], learnable.

The second term is computed as exp(q * (log alpha + logsumexp(s))) for stability. Logits are
`scale * cosine`. Eq. 6 (query -> video) has one row per positive (video, query) pair over the
queries: the positive and every query of another video (a video's other queries are also
positives, so they are not candidates). Eq. 7 (video -> query) has one row per query over all
videos. Each direction is the mean over its rows; Eq. 8 sums both directions for S_es and S_op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mktn.layers import mask_logits


def rince(logits: Tensor, positive: Tensor, candidates: Tensor, q: Tensor, alpha: Tensor) -> Tensor:
    """Mean RINCE over rows: logits (R, N), `positive` (R,) column of each row, `candidates` (R, N) bool."""
    pos = logits.gather(1, positive[:, None])[:, 0]
    lse = torch.logsumexp(mask_logits(logits, candidates), dim=1)
    return (-torch.exp(q * pos) / q + torch.exp(q * (torch.log(alpha) + lse)) / q).mean()


class RINCE(nn.Module):
    """Both directions of Eq. 6-7 on a (B_v, B_q) similarity matrix, with learnable tau and alpha clamped to (0, 1]."""

    def __init__(self, tau_init: float, alpha_init: float, scale: float):
        super().__init__()
        # Shape (1,), not 0-dim: DeepSpeed's initial parameter broadcast views each one as bytes, which fails on 0-dim.
        self.raw_tau = nn.Parameter(torch.tensor([float(tau_init)]))
        self.raw_alpha = nn.Parameter(torch.tensor([float(alpha_init)]))
        self.scale = scale

    @property
    def tau(self) -> Tensor:
        return self.raw_tau.clamp(1e-3, 1.0)

    @property
    def alpha(self) -> Tensor:
        return self.raw_alpha.clamp(1e-3, 1.0)

    def forward(self, sim: Tensor, query_video: Tensor) -> Tensor:
        """L_{q->v}(S) + L_{v->q}(S) for cosine similarities `sim` (B_v, B_q); query j's positive is video(j)."""
        logits = self.scale * sim
        same_video = query_video[None, :] == query_video[:, None]  # (B_q, B_q): k is a positive of j's video
        q = torch.arange(len(query_video), device=sim.device)
        # Eq. 6: row = positive pair (video(j), j) over queries; candidates j and queries of other videos.
        q_to_v = rince(
            logits[query_video],
            q,
            ~same_video | torch.eye(len(q), dtype=torch.bool, device=sim.device),
            self.tau,
            self.alpha,
        )
        # Eq. 7: row = query j over all videos.
        v_to_q = rince(
            logits.T, query_video, torch.ones_like(logits.T, dtype=torch.bool), self.tau, self.alpha
        )
        return q_to_v + v_to_q
