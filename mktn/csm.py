"""CSM, cross-sentence semantic mining: T = MLP(tau(F_q, F_mem)) (paper section "Cross-Sentence Semantic Mining").

F_q = {q_e^j} are the sentence features of all queries of the batch. Each one gets a positional
embedding (a learned linear map of the sinusoidal code) of its index in its video's annotation order (never its ground-truth time, which
would leak labels at test time), then the transformer decoder tau lets queries attend to each
other (contextual relation; only queries of the same video unless `cross_video`) and
cross-attend to the multi-modal memory F_mem^j = [F_v^j; F_w^j] of the query's own video clips
and, for the cross-granularity relation, its own words. Design choices: F_v^j are the video's
attended global clip tokens (T per video), which already summarise the patches, plus a learned
map of the sinusoidal code of each clip's relative position i / N_v, so that the regression can
read where in the video the attended clips are (as DETR-style decoders add positions to keys). A parallel
regression MLP outputs normalised (t_s, t_e) per query (auxiliary loss in L_3); the decoded
per-query feature replaces q_e downstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.config import CSMConfig
from mktn.layers import mlp, sinusoidal

POSITION_RESOLUTION = 100.0  # relative clip positions in [0, 1) are encoded at 1/100 of the video per unit


class CSMLayer(nn.Module):
    """One pre-norm decoder block: query self-attention (optional), cross-attention to memory, FFN."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, contextual: bool):
        super().__init__()
        self.self_attn = (
            nn.MultiheadAttention(d_model, num_heads, dropout, batch_first=True) if contextual else None
        )
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout, batch_first=True)
        self.ffn = mlp(d_model, 2 * d_model, d_model, dropout=dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, related: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """x (B_q, d); related (B_q, B_q) True where query j may attend to query k; memory (B_q, M, d)."""
        if self.self_attn is not None:
            h = self.norms[0](x)[None]
            x = x + self.dropout(self.self_attn(h, h, h, attn_mask=~related, need_weights=False)[0][0])
        h = self.norms[1](x)[:, None]
        x = x + self.dropout(
            self.cross_attn(h, memory, memory, key_padding_mask=~memory_mask, need_weights=False)[0][:, 0]
        )
        return x + self.dropout(self.ffn(self.norms[2](x)))


class CSM(nn.Module):
    """Per-query features mined across sentences, plus the regressed normalised moments T."""

    def __init__(self, cfg: CSMConfig, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(
            CSMLayer(d_model, num_heads, dropout, cfg.contextual_attention) for _ in range(cfg.num_layers)
        )
        self.position = nn.Linear(d_model, d_model) if cfg.temporal_position else None
        self.memory_position = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.regress = mlp(d_model, d_model, 2, dropout=dropout)

    def forward(
        self,
        sentence: Tensor,
        query_index: Tensor,
        query_video: Tensor,
        clips: Tensor,
        clip_mask: Tensor,
        words: Tensor,
        word_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """sentence (B_q, d), clips/clip_mask gathered per query (B_q, T, d)/(B_q, T), words (B_q, N_q, d).

        Returns the per-query features (B_q, d) and normalised moments (B_q, 2) with t_s <= t_e in [0, 1].
        """
        x = sentence
        if self.position is not None:
            x = x + self.position(sinusoidal(query_index, x.shape[-1]).to(x.dtype))
        related = torch.ones(len(x), len(x), dtype=torch.bool, device=x.device)
        if not self.cfg.cross_video:
            related = query_video[:, None] == query_video[None, :]
        relative = torch.arange(clips.shape[1], device=x.device) / clip_mask.sum(1, keepdim=True).clamp_min(1)
        clips = clips + self.memory_position(
            sinusoidal(relative * POSITION_RESOLUTION, x.shape[-1]).to(x.dtype)
        )
        memory, memory_mask = clips, clip_mask
        if self.cfg.word_memory:
            memory, memory_mask = torch.cat([clips, words], 1), torch.cat([clip_mask, word_mask], 1)
        for layer in self.layers:
            x = layer(x, related, memory, memory_mask)
        x = self.norm(x)
        center, width = torch.sigmoid(self.regress(x)).unbind(-1)
        moments = torch.stack([(center - width / 2).clamp(0, 1), (center + width / 2).clamp(0, 1)], -1)
        return x, moments


def moment_loss(pred: Tensor, target: Tensor) -> Tensor:
    """CSM auxiliary term of L_3: smooth-L1 + (1 - IoU) between normalised (t_s, t_e) moments (B_q, 2)."""
    inter = (torch.minimum(pred[:, 1], target[:, 1]) - torch.maximum(pred[:, 0], target[:, 0])).clamp_min(0)
    union = torch.maximum(pred[:, 1], target[:, 1]) - torch.minimum(pred[:, 0], target[:, 0])
    iou = inter / union.clamp_min(1e-6)
    return F.smooth_l1_loss(pred, target) + (1 - iou).mean()
