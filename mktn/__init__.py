"""MKTN (AAAI 2025) for multi-pair temporal sentence grounding: model, losses, decoding, metrics. Pure PyTorch.

`from mktn import Predictor` is the Python API of a trained model (load from a run folder, checkpoint,
exported folder or MLflow URI; predict ranked moments in seconds). It lives in `cluster.serve.predictor`,
because resolving `models:/` and `runs:/` URIs needs MLflow, and is re-exported here lazily on first use:
the one sanctioned import of `cluster` from `mktn` (tests/test_layering.py allows exactly this one), so
`import mktn` stays pure PyTorch and light.
"""

from typing import Any

from mktn.metrics import grounding_metrics
from mktn.model import MKTN, ModelOutput, build_model

__all__ = ["MKTN", "ModelOutput", "Predictor", "build_model", "grounding_metrics"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from cluster.serve.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'mktn' has no attribute {name!r}")
