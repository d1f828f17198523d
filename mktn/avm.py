"""AVM, adaptive video-query matching: Eq. 1 (similarity), Eq. 2 (dynamic threshold), Eq. 3 (L_CL), Eq. 4 (theta).

- Eq. 1: S_ij = V_i (Q_j W_S)^T; the scalar video-query score is
  s(V_i, Q_j) = mean over words of max over clips of cos(V_i, Q_j W_S) (masked).
- Eq. 2 (typo fixed, MKTN.md): phi(r) = phi_final - (phi_final - phi_init) * (1 + cos(pi r)) / 2.
- Negatives of query j: videos i != video(j) with s(V_i, Q_j) < phi (likely false negatives above phi dropped).
- Eq. 3: L_CL = sum over positive pairs (v+, w+) of
  theta * sum_{w-} [phi - S(v+, w+) + S(v+, w-)]_+ + (1 - theta) * sum_{v-} [phi - S(w+, v+) + S(w+, v-)]_+
  on F' = Norm(zeta(F)) (zeta: a transformer encoder layer shared by both modalities), pooled over
  clips/words to one unit vector per video/query so that S is a cosine. Design choices: the sum over
  positive pairs is divided by their number (a mean), and theta is computed per triplet from the
  triplet's own distances (Eq. 4), detached.
- Eq. 4: rho = (d- - d+)^2 / (d- + d+)^2, theta = rho / (1 + rho), d the L2 distances of the triplet.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mktn.config import AVMConfig
from mktn.layers import encoder_layer, masked_mean


def threshold(cfg: AVMConfig, progress: float) -> float:
    """phi at training progress r in [0, 1] (Eq. 2, corrected): cosine, linear, or fixed (= phi_init)."""
    r = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "fixed":
        return cfg.phi_init
    ramp = r if cfg.schedule == "linear" else (1 - math.cos(math.pi * r)) / 2
    return cfg.phi_final - (cfg.phi_final - cfg.phi_init) * (1 - ramp)


def video_query_scores(clips: Tensor, clip_mask: Tensor, words_ws: Tensor, word_mask: Tensor) -> Tensor:
    """s(V_i, Q_j) for every video i and query j (Eq. 1): (B_v, T, d), (B_q, N_q, d) -> (B_v, B_q)."""
    cos = torch.einsum(
        "vtd,qld->vqtl", nn.functional.normalize(clips, dim=-1), nn.functional.normalize(words_ws, dim=-1)
    )
    best_clip = cos.masked_fill(~clip_mask[:, None, :, None], -2.0).amax(dim=2)  # (B_v, B_q, N_q)
    weights = word_mask[None].to(cos.dtype)
    return (best_clip * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)


def negative_videos(scores: Tensor, query_video: Tensor, phi: float, select: bool) -> Tensor:
    """(B_v, B_q) bool: video i is a negative of query j (i != video(j), and s(V_i, Q_j) < phi when `select`)."""
    other = torch.arange(scores.shape[0], device=scores.device)[:, None] != query_video[None, :]
    return other & (scores.detach() < phi) if select else other


def self_weight(d_neg: Tensor, d_pos: Tensor) -> Tensor:
    """theta of Eq. 4: theta / (1 - theta) = (d- - d+)^2 / (d- + d+)^2, so theta = rho / (1 + rho) in [0, 1/2]."""
    rho = (d_neg - d_pos) ** 2 / (d_neg + d_pos).clamp_min(1e-12) ** 2
    return rho / (1 + rho)


class AVM(nn.Module):
    """The shared transfer layer zeta and the self-weighted cross-modal contrast L_CL (Eq. 3-4)."""

    def __init__(self, cfg: AVMConfig, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.cfg = cfg
        self.zeta = encoder_layer(d_model, num_heads, dropout)

    def embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """F' = Norm(zeta(F)) pooled over the real clips/words: (B, N, d) -> unit vectors (B, d)."""
        return nn.functional.normalize(
            masked_mean(self.zeta(x, src_key_padding_mask=~mask), mask, dim=1), dim=-1
        )

    def loss(
        self, video: Tensor, query: Tensor, negatives: Tensor, query_video: Tensor, phi: float
    ) -> Tensor:
        """L_CL (Eq. 3) from unit embeddings video (B_v, d), query (B_q, d) and the negative mask (B_v, B_q)."""
        sim = video @ query.T  # S(v_i, w_j), a cosine
        dist = (2 - 2 * sim.detach()).clamp_min(0).sqrt()  # ||v_i - w_j|| for unit vectors
        q = torch.arange(len(query_video), device=sim.device)
        pos_sim, pos_dist = sim[query_video, q], dist[query_video, q]  # (B_q,)
        total = sim.new_zeros(())
        if self.cfg.textual_contrast:  # triplets (v+, w+, w-): negative queries k of the positive video
            neg = negatives[query_video].float()  # (B_q, B_q): video(j) is a negative video of query k
            hinge = (phi - pos_sim[:, None] + sim[query_video]).clamp_min(0)
            theta = self._theta(dist[query_video], pos_dist[:, None])
            total = total + (theta * hinge * neg).sum()
        if self.cfg.visual_contrast:  # triplets (w+, v+, v-): negative videos i of the positive query
            neg = negatives.T.float()  # (B_q, B_v)
            hinge = (phi - pos_sim[:, None] + sim.T).clamp_min(0)
            theta = self._theta(dist.T, pos_dist[:, None])
            total = total + ((1 - theta) * hinge * neg).sum()
        return total / max(len(query_video), 1)

    def _theta(self, d_neg: Tensor, d_pos: Tensor) -> Tensor:
        return self_weight(d_neg, d_pos) if self.cfg.self_weighted else torch.full_like(d_neg, 0.5)
