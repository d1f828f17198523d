"""Cross-worker negatives: all_gather the pair embeddings so AVM and RINCE see the global batch.

Workers hold different numbers of videos, queries, clips and words, so every tensor is padded to
the largest shape over workers (masks pad with False), gathered, and trimmed back to each worker's
own video/query count. The gather is an autograd function whose backward all-reduces the gradient
and keeps this worker's slice: every worker computes the same global loss, the gradient reaching
its local embeddings is the sum over workers, and the data-parallel gradient average then equals
the gradient of the global loss (gradient flows through each worker's local part only).
"""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mktn.pairs import PairEmbeddings


def world_size() -> int:
    """Number of workers in the default process group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGather(torch.autograd.Function):
    """Forward: all_gather equal-shaped tensors -> (world, *shape). Backward: all_reduce, keep this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def _pad_to(x: Tensor, shape: list[int]) -> Tensor:
    pads: list[int] = []
    for have, want in zip(reversed(x.shape), reversed(shape)):
        pads += [0, want - have]
    return F.pad(x, pads)


def _gather_plain(x: Tensor) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts)


def _gather_tensor(x: Tensor, shapes: Tensor) -> Tensor:
    """Concatenate every worker's `x` along dim 0; `shapes` (world, x.dim()) are the workers' shapes."""
    padded = _pad_to(x.to(torch.uint8) if x.dtype == torch.bool else x, shapes.amax(0).tolist())
    stacked = _AllGather.apply(padded) if padded.requires_grad else _gather_plain(padded)
    merged = torch.cat([stacked[r, : int(n)] for r, n in enumerate(shapes[:, 0])])
    return merged.bool() if x.dtype == torch.bool else merged


def gather_pairs(pairs: PairEmbeddings) -> PairEmbeddings:
    """The global batch: every worker's `PairEmbeddings`, workers in rank order, `query_video` re-indexed."""
    names = pairs.present()
    tensors = [getattr(pairs, n) for n in names]
    cols = list(accumulate((t.dim() for t in tensors), initial=0))
    local = torch.tensor(
        [s for t in tensors for s in t.shape], dtype=torch.long, device=pairs.clip_mask.device
    )
    table = _gather_plain(local)  # (world, total number of dims): every worker's shapes
    gathered = {n: _gather_tensor(x, table[:, c : c + x.dim()]) for n, x, c in zip(names, tensors, cols)}
    videos, queries = table[:, cols[names.index("clip_mask")]], table[:, cols[names.index("word_mask")]]
    offsets = torch.repeat_interleave(torch.cumsum(videos, 0) - videos, queries)
    query_video = _gather_tensor(pairs.query_video, queries[:, None]) + offsets
    return PairEmbeddings(query_video=query_video, **gathered)
