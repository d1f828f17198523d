"""CSM, cross-sentence semantic mining: T = MLP(tau(F_q, F_mem)) (paper section "Cross-Sentence Semantic Mining").

F_q = {q_e^j} are the sentence features of all queries of the batch. Each one gets a positional
embedding (a learned linear map of the sinusoidal code) of its index in its video's annotation order
(never its ground-truth time, which would leak labels at test time), then the transformer decoder tau
lets queries attend to each other (contextual relation; only queries of the same video unless
`cross_video`) and cross-attend to the multi-modal memory F_mem^j = [F_v^j; F_w^j] of the query's own
video clips and, for the cross-granularity relation, the words of every query of that video (the paper:
"some sentences might share the same particular words"). At word level (`shared_words`), each query's
words also read the words of the video's other queries before the co-attention, so that a sentence that
names only an object or only an action takes the rest from a sentence sharing that word. Design choices: F_v^j are the
video's attended global clip tokens (T per video), which already summarise the patches, plus a learned
map of the sinusoidal code of each clip's relative position i / N_v, so that the regression can read
where in the video the attended clips are (as DETR-style decoders add positions to keys). A parallel
regression MLP outputs normalised (t_s, t_e) per query (auxiliary loss in L_3, training only); the
decoded per-query feature replaces q_e downstream.

The clip half of the memory depends on the video alone: its positions and every layer's key/value
projections are computed once per video (`CSM.memory`) and gathered per query; only the word half and
the queries themselves are projected per query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.config import CSMConfig
from mktn.layers import mlp, neg, sinusoidal

POSITION_RESOLUTION = 100.0  # relative clip positions in [0, 1) are encoded at 1/100 of the video per unit


class MemoryAttention(nn.Module):
    """Multi-head attention over a memory whose keys and values are projected ahead (once per video)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = num_heads, dropout
        self.query, self.key, self.value, self.out = (nn.Linear(d_model, d_model) for _ in range(4))

    def project(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of `memory` (..., M, d)."""
        return self.key(memory), self.value(memory)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, d) attends over keys/values (B, M, d) where `mask` (B, M) is True -> (B, N, d)."""
        b, n, d = x.shape
        h = self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, -1, h, d // h).transpose(1, 2)

        bias = torch.zeros(b, 1, 1, keys.shape[1], dtype=x.dtype, device=x.device).masked_fill(
            ~mask[:, None, None], neg(x.dtype)
        )
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            split(self.query(x)), split(keys), split(values), bias, dropout_p=drop
        )
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class CSMLayer(nn.Module):
    """One pre-norm decoder block: query self-attention (optional), cross-attention to memory, FFN."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, contextual: bool):
        super().__init__()
        self.self_attn = (
            nn.MultiheadAttention(d_model, num_heads, dropout, batch_first=True) if contextual else None
        )
        self.cross_attn = MemoryAttention(d_model, num_heads, dropout)
        self.ffn = mlp(d_model, 2 * d_model, d_model, dropout=dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, related: Tensor, keys: Tensor, values: Tensor, memory_mask: Tensor
    ) -> Tensor:
        """x (B_q, d); related (B_q, B_q) True where query j may attend to query k; keys/values (B_q, M, d)."""
        if self.self_attn is not None:
            h = self.norms[0](x)[None]
            x = x + self.dropout(self.self_attn(h, h, h, attn_mask=~related, need_weights=False)[0][0])
        x = x + self.dropout(self.cross_attn(self.norms[1](x)[:, None], keys, values, memory_mask)[:, 0])
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
        self.word_context = MemoryAttention(d_model, num_heads, dropout) if cfg.shared_words else None
        self.word_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def shared_words(self, words: Tensor, word_mask: Tensor, query_video: Tensor, n_videos: int) -> Tensor:
        """Word-level relation: each query's words (B_q, N_q, d) also read the words of every query of its video.

        A query that names only the object ("person is using the door") or only the action ("person cuts it")
        finds the other sentence of its video sharing that word and takes what it says about the rest.
        Keys and values are projected once per query and laid out per video.
        """
        rank = _rank_in_video(query_video)
        keys, values = (
            _per_video(t, query_video, rank, n_videos)[query_video] for t in self.word_context.project(words)
        )
        mask = _per_video(word_mask, query_video, rank, n_videos)[query_video]
        read = self.word_context(self.word_norm(words), keys, values, mask)
        return (words + self.dropout(read)) * word_mask[..., None].to(words.dtype)

    def memory(self, clips: Tensor, clip_mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-video work: each layer's keys and values (B_v, T, d) of the clip memory F_v with positions."""
        relative = torch.arange(clips.shape[1], device=clips.device) / clip_mask.sum(
            1, keepdim=True
        ).clamp_min(1)
        code = sinusoidal(relative * POSITION_RESOLUTION, clips.shape[-1]).to(clips.dtype)
        memory = clips + self.memory_position(code)
        return [layer.cross_attn.project(memory) for layer in self.layers]

    def forward(
        self,
        sentence: Tensor,
        query_index: Tensor,
        query_video: Tensor,
        memory: list[tuple[Tensor, Tensor]],
        clip_mask: Tensor,
        words: Tensor,
        word_mask: Tensor,
    ) -> Tensor:
        """sentence (B_q, d); `memory` from `CSM.memory` (per video), `clip_mask` (B_v, T); words (B_q, N_q, d).

        Returns the per-query features (B_q, d).
        """
        x = sentence
        if self.position is not None:
            x = x + self.position(sinusoidal(query_index, x.shape[-1]).to(x.dtype))
        related = torch.ones(len(x), len(x), dtype=torch.bool, device=x.device)
        if not self.cfg.cross_video:
            related = query_video[:, None] == query_video[None, :]
        memory_mask = clip_mask[query_video]
        if self.cfg.word_memory:
            rank, n_videos = _rank_in_video(query_video), clip_mask.shape[0]
            memory_mask = torch.cat(
                [memory_mask, _per_video(word_mask, query_video, rank, n_videos)[query_video]], 1
            )
        for layer, (keys, values) in zip(self.layers, memory):
            keys, values = keys[query_video], values[query_video]
            if self.cfg.word_memory:  # every word of every query of the video, projected once per query
                word_keys, word_values = (
                    _per_video(t, query_video, rank, n_videos)[query_video]
                    for t in layer.cross_attn.project(words)
                )
                keys, values = torch.cat([keys, word_keys], 1), torch.cat([values, word_values], 1)
            x = layer(x, related, keys, values, memory_mask)
        return self.norm(x)

    def moments(self, features: Tensor) -> Tensor:
        """The regression head: normalised moments (B_q, 2) with t_s <= t_e in [0, 1] from CSM's features."""
        center, width = torch.sigmoid(self.regress(features)).unbind(-1)
        return torch.stack([(center - width / 2).clamp(0, 1), (center + width / 2).clamp(0, 1)], -1)


def _rank_in_video(query_video: Tensor) -> Tensor:
    """Each query's position among the queries of its video in the batch (B_q,)."""
    same = query_video[:, None] == query_video[None, :]
    return torch.tril(same, diagonal=-1).sum(1)


def _per_video(x: Tensor, query_video: Tensor, rank: Tensor, n_videos: int) -> Tensor:
    """Per-query (B_q, L, ...) -> per-video (B_v, Q * L, ...): the video's queries side by side, zero-padded."""
    slots, length = int(rank.max()) + 1, x.shape[1]
    out = x.new_zeros(n_videos, slots, *x.shape[1:])
    out[query_video, rank] = x
    return out.reshape(n_videos, slots * length, *x.shape[2:])


def moment_loss(pred: Tensor, target: Tensor) -> Tensor:
    """CSM auxiliary term of L_3: smooth-L1 + (1 - IoU) between normalised (t_s, t_e) moments (B_q, 2)."""
    inter = (torch.minimum(pred[:, 1], target[:, 1]) - torch.maximum(pred[:, 0], target[:, 0])).clamp_min(0)
    union = torch.maximum(pred[:, 1], target[:, 1]) - torch.minimum(pred[:, 0], target[:, 0])
    iou = inter / union.clamp_min(1e-6)
    return F.smooth_l1_loss(pred, target) + (1 - iou).mean()
