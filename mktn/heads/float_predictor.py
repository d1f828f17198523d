"""Float predictor (paper Eq. 10): fine-grained boundaries inside the coarse start/end clips.

Feed-forward layers predict, for every clip, O_s and O_e in [0, 1]: the fraction of the clip that
is query-relevant when it is the start (resp. end) clip. With t_s_hat the start clip and t_e_hat
the exclusive end (end clip + 1), the refined boundaries in clip units are
    (t_s_hat + 1 - O_s, t_e_hat - 1 + O_e) = (start + 1 - O_s, end + O_e)
    L_3 = smoothL1(t_e', t_e) + smoothL1(t_s', t_s)     (Eq. 10, at the ground-truth clips during training)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.layers import mlp


class FloatPredictor(nn.Module):
    """Per-clip boundary offsets (B_q, T, 2) = (O_s, O_e) from the fused features."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.net = mlp(d_model, d_model, 2, dropout=dropout)

    def forward(self, fused: Tensor) -> Tensor:
        return torch.sigmoid(self.net(fused))


def refine(offsets: Tensor, start: Tensor, end: Tensor) -> tuple[Tensor, Tensor]:
    """Refined (t_s', t_e') in clip units for integer start/end clips (same shape, indexing the batch rows)."""
    rows = torch.arange(offsets.shape[0], device=offsets.device).view(-1, *([1] * (start.dim() - 1)))
    return start + 1 - offsets[rows, start, 0], end + offsets[rows, end, 1]


def float_loss(offsets: Tensor, start_idx: Tensor, end_idx: Tensor, clip_times: Tensor) -> Tensor:
    """L_3 of Eq. 10 at the ground-truth start/end clips against the continuous ground truth (clip units)."""
    t_s, t_e = refine(offsets, start_idx, end_idx)
    return F.smooth_l1_loss(t_s, clip_times[:, 0]) + F.smooth_l1_loss(t_e, clip_times[:, 1])
