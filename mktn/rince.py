"""RINCE, robust InfoNCE (Chuang et al. 2022), for the prototype alignments: Eq. 6-8 (MKTN.md, "RINCE").

Chuang et al. write, for a row with positive logit s+ and candidate logits s_j (the positive included),

    L = -exp(q * s+) / q + (lambda * sum_j exp(s_j))^q / q.

For q > 0 this is not shift-invariant: with every logit at c it equals e^{qc} ((lambda N)^q - 1) / q, so
once lambda * N > 1 the loss falls by pushing *every* similarity down, and with two separately encoded
modalities it can: S_es collapsed to -0.97 for every pair and lambda drifted down. We apply the formula to
the row's log-probabilities s_j - logsumexp_k(s_k), the shift InfoNCE (q -> 0) is already invariant to.
Then exp(q * s+) = p+^q and lambda * sum_j exp(.) = lambda, so

    L = (lambda^q - p+^q) / q  =  (1 - p+^q) / q + const,       p+ = softmax(s)_+,

the generalised cross-entropy of Zhang & Sabuncu (2018): InfoNCE as q -> 0, MAE-like at q = 1. Its
gradient is p+^q times InfoNCE's, so positives the model finds implausible (noisy pairs) weigh less,
which is RINCE's robustness, and no common shift of the similarities changes it. lambda only adds a
constant, and a learnable exponent can only lower the loss by changing the loss (dL/dq < 0 whenever
p+ < 1), so q (the paper's tau) is a fixed hyper-parameter, as in Chuang et al.

Logits are `scale * cosine`. Eq. 6 (query -> video) has one row per query over the queries, its positive
and every query of another video (a video's other queries also match it, so they are not candidates).
Eq. 7 (video -> query) has one row per query over all videos. Each direction is the mean over its rows;
Eq. 8 sums both directions for S_es and S_op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mktn.layers import mask_logits


def rince(logits: Tensor, positive: Tensor, candidates: Tensor, q: float) -> Tensor:
    """Mean (1 - p+^q) / q over rows: logits (R, N), `positive` (R,) column of each row, `candidates` (R, N)."""
    log_p = torch.log_softmax(mask_logits(logits, candidates), dim=1).gather(1, positive[:, None])[:, 0]
    return ((1 - torch.exp(q * log_p)) / q).mean()


class RINCE(nn.Module):
    """Both directions of Eq. 6-7 on a (B_v, B_q) similarity matrix; `q` in (0, 1], `scale` the inverse temperature."""

    def __init__(self, q: float, scale: float):
        super().__init__()
        if not 0 < q <= 1 or scale <= 0:
            raise ValueError(f"RINCE needs 0 < q <= 1 and scale > 0, got q={q}, scale={scale}")
        self.q, self.scale = q, scale

    def forward(self, sim: Tensor, query_video: Tensor) -> Tensor:
        """L_{q->v}(S) + L_{v->q}(S) for cosine similarities `sim` (B_v, B_q); query j's positive is video(j)."""
        logits = self.scale * sim
        queries = torch.arange(len(query_video), device=sim.device)
        same_video = query_video[None, :] == query_video[:, None]  # (B_q, B_q)
        # Eq. 6: row j over queries: itself and the queries of other videos, scored against video(j).
        q_to_v = rince(
            logits[query_video],
            queries,
            ~same_video | torch.eye(len(queries), dtype=torch.bool, device=sim.device),
            self.q,
        )
        # Eq. 7: row j over all videos.
        v_to_q = rince(logits.T, query_video, torch.ones_like(logits.T, dtype=torch.bool), self.q)
        return q_to_v + v_to_q
