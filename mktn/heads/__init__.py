"""Grounding backbones behind one interface: the span head (VSLNet-like) and the proposal map head (2D-TAN-like)."""

from mktn.config import ModelConfig
from mktn.heads.base import GroundingHead, HeadOutput, moment_mask
from mktn.heads.float_predictor import FloatPredictor, float_loss, refine
from mktn.heads.proposal_map import ProposalMapHead
from mktn.heads.span import SpanHead


def build_head(cfg: ModelConfig) -> GroundingHead:
    """The grounding head named by `cfg.backbone`."""
    if cfg.backbone == "span":
        return SpanHead(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.max_span_clips)
    return ProposalMapHead(cfg.proposal_map, cfg.d_model, cfg.max_span_clips)


__all__ = [
    "FloatPredictor",
    "GroundingHead",
    "HeadOutput",
    "ProposalMapHead",
    "SpanHead",
    "build_head",
    "float_loss",
    "moment_mask",
    "refine",
]
