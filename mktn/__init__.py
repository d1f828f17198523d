"""MKTN (AAAI 2025) for multi-pair temporal sentence grounding: model, losses, decoding, metrics. Pure PyTorch."""

from mktn.metrics import grounding_metrics
from mktn.model import MKTN, ModelOutput, build_model

__all__ = ["MKTN", "ModelOutput", "build_model", "grounding_metrics"]
