"""Small building blocks shared by the MKTN modules: masking, pooling, positions, attention, a padded BiGRU.

Every function takes explicit boolean masks (True = a real clip/word/token) so that padding
never changes a result: masked logits get `neg(dtype)` (finite, so fully masked rows stay finite),
masked means divide by the real count, and the BiGRU packs its sequences.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

NEG = -1e9  # logit given to masked positions: exp(NEG - max) is exactly 0 in float32 and bfloat16


def neg(dtype: torch.dtype) -> float:
    """The masked-logit value for `dtype`: `NEG`, or a quarter of float16's range (sums of two stay finite)."""
    return max(NEG, torch.finfo(dtype).min / 4)


def is_masked(logits: Tensor, dtype: torch.dtype) -> Tensor:
    """True where `logits` (computed in `dtype`) hold a masked value."""
    return logits <= neg(dtype) / 2


def mask_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """`logits` with `neg(dtype)` wherever `mask` is False (broadcast)."""
    return logits.masked_fill(~mask, neg(logits.dtype))


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of `x` over `dim` counting only positions where `mask` (shaped like `x` without its last axis) is True."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim) / weights.sum(dim).clamp_min(1.0)


def sinusoidal(positions: Tensor, dim: int) -> Tensor:
    """Transformer sine/cosine encoding (Vaswani et al. 2017) of integer `positions` -> `(*positions.shape, dim)`."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / max(half, 1))
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(enc, (0, dim - 2 * half))


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """`layers` linear layers with ReLU (and dropout) between them."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    blocks: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            blocks += [nn.ReLU(), nn.Dropout(dropout)]
        blocks.append(nn.Linear(a, b))
    return nn.Sequential(*blocks)


def encoder_layer(d_model: int, num_heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    """The pre-norm transformer encoder block used everywhere (batch first, FFN width 2d)."""
    return nn.TransformerEncoderLayer(
        d_model, num_heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True
    )


def masked_attention(query: Tensor, key: Tensor, value: Tensor, allowed: Tensor) -> Tensor:
    """Single-head scaled dot-product attention `softmax(Q K^T / sqrt(d) + mask) V`.

    `allowed` (broadcastable to `(..., N_query, N_key)`) is True where a query may attend to a key.
    Rows with no allowed key get a uniform (finite) average that callers mask out.
    """
    logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    return torch.softmax(mask_logits(logits, allowed), dim=-1) @ value


class PaddedBiGRU(nn.Module):
    """A one-layer bidirectional GRU over packed sequences, so padded steps never reach real ones."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"BiGRU output width must be even, got {out_dim}")
        self.gru = nn.GRU(in_dim, out_dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """`(B, T, in_dim)` with mask `(B, T)` (a prefix of each row) -> `(B, T, out_dim)`, zeros on padding."""
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out * mask.unsqueeze(-1).to(out.dtype)
