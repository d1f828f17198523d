"""AVM, adaptive video-query matching: Eq. 1 (score), Eq. 2 (dynamic threshold), Eq. 3 (L_CL), Eq. 4 (theta).

- Transferred features (Eq. 3): F'_v = Norm(zeta(F_v)) per clip, F'_w = Norm(zeta(F_w W_S)) per word, zeta shared
  by both modalities (W_S, Eq. 1's projection, puts words in the video space). Design choice: zeta is a
  projection head, LayerNorm(Linear(x)) (as CLIP's), not another transformer layer: its inputs already come
  out of the video and text encoders' attention layers, and the extra layer cost 8% of a training step.
- Score (Eq. 1's scalar form, MKTN.md): s(V_i, Q_j) = mean over words of max over clips of cos(F'_v, F'_w),
  masked. Design choice: the score is computed on the transferred features that L_CL trains, so that the
  score the threshold reads is one that learns to rank videos; on the co-attention features nothing trains
  it to (measured: own video 0.048 vs other videos 0.051 after training).
- Eq. 2 (typo fixed, MKTN.md): phi(r) = phi_final - (phi_final - phi_init) * (1 + cos(pi r)) / 2.
- Negatives of query j: videos i != video(j) whose score stands less than phi above the batch's mean score
  for j, s(V_i, Q_j) - mean_k s(V_k, Q_j) < phi. Videos standing out by phi or more likely show the query's
  event too (false negatives) and are dropped; as phi rises, harder negatives enter (easy ones first).
  Centring on the batch mean makes phi mean the same from the first step, when every raw score is alike.
- Eq. 3: L_CL = mean over positive pairs (v+, w+) of
  theta * mean_{w-} [phi - S(v+, w+) + S(v+, w-)]_+ + (1 - theta) * mean_{v-} [phi - S(w+, v+) + S(w+, v-)]_+
  with S the score above. Design choices: means over the selected negatives and over positives (the paper's
  sums), so the weight of Eq. 11 means the same at any batch size; theta per triplet (Eq. 4), detached.
- Eq. 4: rho = (d- - d+)^2 / (d- + d+)^2, theta = rho / (1 + rho), d = sqrt(2 - 2 S), the distance of unit
  vectors at cosine S.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.config import AVMConfig


def threshold(cfg: AVMConfig, progress: float) -> float:
    """phi at training progress r in [0, 1] (Eq. 2, corrected): cosine, linear, or fixed (= phi_init)."""
    r = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "fixed":
        return cfg.phi_init
    ramp = r if cfg.schedule == "linear" else (1 - math.cos(math.pi * r)) / 2
    return cfg.phi_final - (cfg.phi_final - cfg.phi_init) * (1 - ramp)


def video_query_scores(clips: Tensor, clip_mask: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
    """s(V_i, Q_j) for every video i and query j: unit (B_v, T, d) and (B_q, N_q, d) features -> (B_v, B_q)."""
    cos = torch.einsum("vtd,qld->vqtl", clips, words)
    best_clip = cos.masked_fill(~clip_mask[:, None, :, None], -2.0).amax(dim=2)  # (B_v, B_q, N_q)
    weights = word_mask[None].to(cos.dtype)
    return (best_clip * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)


def negative_videos(scores: Tensor, query_video: Tensor, phi: float, select: bool) -> Tensor:
    """(B_v, B_q) bool: video i is a negative of query j (i != video(j); when `select`, its score stands less
    than `phi` above the batch's mean score for j)."""
    other = torch.arange(scores.shape[0], device=scores.device)[:, None] != query_video[None, :]
    if not select:
        return other
    scores = scores.detach()
    return other & (scores - scores.mean(dim=0, keepdim=True) < phi)


def self_weight(d_neg: Tensor, d_pos: Tensor) -> Tensor:
    """theta of Eq. 4: theta / (1 - theta) = (d- - d+)^2 / (d- + d+)^2, so theta = rho / (1 + rho) in [0, 1/2]."""
    rho = (d_neg - d_pos) ** 2 / (d_neg + d_pos).clamp_min(1e-12) ** 2
    return rho / (1 + rho)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the last axis where `mask`, per row; 0 for rows without any."""
    weights = mask.to(values.dtype)
    return (values * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)


class AVM(nn.Module):
    """The shared transfer layer zeta and the self-weighted cross-modal contrast L_CL (Eq. 3-4)."""

    def __init__(self, cfg: AVMConfig, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.cfg = cfg
        self.zeta = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))

    def transfer(self, x: Tensor, mask: Tensor) -> Tensor:
        """F' = Norm(zeta(F)): (B, N, d) clips (or words in the video space, Q W_S) -> unit vectors (B, N, d)."""
        return F.normalize(self.zeta(x), dim=-1) * mask[..., None].to(x.dtype)

    def loss(self, scores: Tensor, negatives: Tensor, query_video: Tensor, phi: float) -> Tensor:
        """L_CL (Eq. 3) from the score matrix S (B_v, B_q) and the negative mask (B_v, B_q)."""
        dist = (2 - 2 * scores.detach()).clamp_min(0).sqrt()
        q = torch.arange(len(query_video), device=scores.device)
        pos, pos_dist = scores[query_video, q], dist[query_video, q]  # (B_q,)
        total = scores.new_zeros(())
        if self.cfg.textual_contrast:  # triplets (v+, w+, w-): queries k for which video(j) is a negative
            neg = negatives[query_video]  # (B_q, B_q)
            hinge = (phi - pos[:, None] + scores[query_video]).clamp_min(0)
            theta = self._theta(dist[query_video], pos_dist[:, None])
            total = total + _masked_mean(theta * hinge, neg).mean()
        if self.cfg.visual_contrast:  # triplets (w+, v+, v-): the negative videos of query j
            neg = negatives.T  # (B_q, B_v)
            hinge = (phi - pos[:, None] + scores.T).clamp_min(0)
            theta = self._theta(dist.T, pos_dist[:, None])
            total = total + _masked_mean((1 - theta) * hinge, neg).mean()
        return total

    def _theta(self, d_neg: Tensor, d_pos: Tensor) -> Tensor:
        return self_weight(d_neg, d_pos) if self.cfg.self_weighted else torch.full_like(d_neg, 0.5)
