"""2D temporal proposal map head (2D-TAN-like backbone, Zhang et al. 2020b).

Cell (s, e) of the map holds the max-pooled fused clip features over clips s..e (2D-TAN's pooling
construction, built by one running max per diagonal offset). It is fused with the sentence by a
Hadamard product and L2-normalised, passed through 2D convolutions (cells outside the valid
upper triangle are zeroed after every layer so padding never leaks in), and scored by a 1x1 conv.
    L_2 = bce_scale * BCE(sigmoid(map), y),  y = clamp((IoU - min_iou) / (max_iou - min_iou), 0, 1)
(2D-TAN's scaled IoU), the BCE averaged over the valid cells, with IoU between the cell [s, e + 1) and the ground
truth in clip units. `bce_scale` (default 10) brings the mean over ~T^2/2 cells to the span CE's scale, so that
the weights of Eq. 11 mean the same for both backbones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.config import ProposalMapConfig
from mktn.heads.base import GroundingHead, HeadOutput, moment_mask
from mktn.layers import mask_logits

POSITIVE_PRIOR = (
    0.05  # the order of the mean target over valid cells (synthetic Charades-like: 0.028; 10% pass min_iou)
)


def span_max_pool(fused: Tensor) -> Tensor:
    """(B, T, d) -> (B, T, T, d): cell (s, e) = max of clips s..e for s <= e, zeros below the diagonal."""
    b, t, d = fused.shape
    idx = torch.arange(t, device=fused.device)
    cells = fused.new_zeros(b, t, t, d)
    running = fused
    cells[:, idx, idx] = fused
    for offset in range(1, t):  # one vectorised step per diagonal, not per moment
        running = torch.maximum(running[:, :-1], fused[:, offset:])
        cells[:, idx[: t - offset], idx[: t - offset] + offset] = running
    return cells


def moment_iou(clip_times: Tensor, t: int) -> Tensor:
    """(B, 2) ground truth in clip units -> (B, T, T) IoU of every cell [s, e + 1) with it (0 below the diagonal)."""
    idx = torch.arange(t, device=clip_times.device, dtype=clip_times.dtype)
    s, e = idx[None, :, None], idx[None, None, :] + 1
    gs, ge = clip_times[:, 0, None, None], clip_times[:, 1, None, None]
    inter = (torch.minimum(e, ge) - torch.maximum(s, gs)).clamp_min(0)
    union = torch.maximum(e, ge) - torch.minimum(s, gs)
    return torch.where(e > s, inter / union.clamp_min(1e-6), torch.zeros_like(inter))


class ProposalMapHead(GroundingHead):
    """Scores of every candidate moment from a 2D temporal map."""

    def __init__(self, cfg: ProposalMapConfig, d_model: int, max_len: int | None = None):
        super().__init__(max_len)
        self.cfg = cfg
        self.sentence = nn.Linear(d_model, d_model)
        self.convs = nn.ModuleList(
            nn.Conv2d(d_model, d_model, cfg.kernel_size, padding=cfg.kernel_size // 2)
            for _ in range(cfg.conv_layers)
        )
        self.score = nn.Conv2d(d_model, 1, 1)
        # Prior init (RetinaNet, Lin et al. 2017): every cell starts at P(positive) = POSITIVE_PRIOR, not 0.5, so the
        # first steps do not push all logits, and the ReLU maps under them, down to a constant (dead) map.
        nn.init.constant_(self.score.bias, math.log(POSITIVE_PRIOR / (1 - POSITIVE_PRIOR)))

    def forward(self, fused: Tensor, clip_mask: Tensor, sentence: Tensor) -> HeadOutput:
        valid = moment_mask(clip_mask, self.max_len)
        keep = valid[:, None].to(fused.dtype)
        cells = span_max_pool(fused) * self.sentence(sentence)[:, None, None]
        x = F.normalize(cells, dim=-1).permute(0, 3, 1, 2) * keep
        for conv in self.convs:
            x = F.relu(conv(x)) * keep
        logits = self.score(x)[:, 0]
        return HeadOutput(mask_logits(F.logsigmoid(logits), valid), logits)

    def loss(
        self, out: HeadOutput, clip_mask: Tensor, start_idx: Tensor, end_idx: Tensor, clip_times: Tensor
    ) -> Tensor:
        valid = moment_mask(clip_mask, self.max_len)
        iou = moment_iou(clip_times, clip_mask.shape[1])
        target = ((iou - self.cfg.min_iou) / (self.cfg.max_iou - self.cfg.min_iou)).clamp(0, 1)
        return self.cfg.bce_scale * F.binary_cross_entropy_with_logits(out.logits[valid], target[valid])
