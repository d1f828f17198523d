"""Video encoder (paper "Preparation"): projection + positional encoding + multi-head self-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mktn.layers import encoder_layer


@dataclass
class VideoEncoding:
    """Per-video tensors, computed once per video whatever its number of queries.

    `clips` (B_v, T, d) are the attended global tokens v_g^i; `tokens` (B_v, T, C+1, d) hold the
    same global token at index 0 followed by the projected patch tokens; `mask` (B_v, T) marks real clips.
    """

    clips: Tensor
    tokens: Tensor
    mask: Tensor

    def per_query(self, query_video: Tensor) -> tuple[Tensor, Tensor]:
        """Each query's clips (B_q, T, d) and clip mask (B_q, T): a gather, no recomputation.

        Patch tokens stay per video: only the per-video prototypes (OPM, APA) read them.
        """
        return self.clips[query_video], self.mask[query_video]


class VideoEncoder(nn.Module):
    """V = SelfAttn(LN(W_in x) + PE): clip features (B_v, T, C+1, d_in) -> `VideoEncoding`.

    Every token (global and patch) is projected by the same linear layer (+ LayerNorm, so that raw
    features of any scale meet the positional embeddings at unit scale) and gets its clip's
    learned positional embedding; self-attention (Vaswani et al. 2017) then runs over the
    global tokens, masked by `mask`, to capture long-range temporal dependencies. Patch tokens
    stay projected (not attended): OPM aggregates them into object prototypes.
    """

    def __init__(self, feature_dim: int, d_model: int, num_heads: int, max_clips: int, dropout: float):
        super().__init__()
        self.project = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(feature_dim, d_model), nn.LayerNorm(d_model)
        )
        self.position = nn.Embedding(max_clips, d_model)
        nn.init.normal_(self.position.weight, std=0.02)
        self.attention = encoder_layer(d_model, num_heads, dropout)

    def forward(self, feats: Tensor, mask: Tensor) -> VideoEncoding:
        """Encode `feats` (B_v, T, C+1, d_in) with clip mask (B_v, T); T must not exceed `max_clips`."""
        t = feats.shape[1]
        if t > self.position.num_embeddings:
            raise ValueError(
                f"batch has {t} clips per video but the model was built for max_clips="
                f"{self.position.num_embeddings}; resample clips with data_pipeline.batch.collate"
            )
        x = self.project(feats) + self.position.weight[:t][None, :, None]
        keep = mask[..., None].to(x.dtype)
        clips = self.attention(x[:, :, 0], src_key_padding_mask=~mask) * keep
        tokens = torch.cat([clips[:, :, None], x[:, :, 1:]], dim=2) * keep[..., None]
        return VideoEncoding(clips=clips, tokens=tokens, mask=mask)
