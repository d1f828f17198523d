"""Text encoder (paper "Preparation"): word features Q_j (B_q, N_q, d) and sentence feature q_e (B_q, d)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mktn.config import TextConfig
from mktn.layers import encoder_layer, sinusoidal
from mktn.text.glove import glove_identity, glove_rows
from mktn.text.sentence import LearnedSentenceEncoder, MiniLMSentenceEncoder
from mktn.text.words import WordEmbedding


@dataclass
class TextEncoding:
    """Per-query tensors: contextual word features, their mask, and the sentence feature q_e."""

    words: Tensor
    mask: Tensor
    sentence: Tensor


class TextEncoder(nn.Module):
    """Q_j = SelfAttn(LN(W_w E(w)) + PE) and q_e = SentenceEncoder(E(w), sentence), PE sinusoidal.

    `vocab_words` (the vocabulary's `itos`) picks the GloVe rows when `cfg.word_embeddings ==
    "glove"`. `saved_identity` is the `identity()` of a saved model: then nothing pretrained is
    read (the weights come from its state dict) and the installed sentence encoder must be the
    one the model was saved with.
    """

    def __init__(
        self,
        cfg: TextConfig,
        vocab_words: list[str],
        d_model: int,
        num_heads: int,
        dropout: float,
        saved_identity: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        use_glove = cfg.word_embeddings == "glove"
        self.embed = WordEmbedding(
            len(vocab_words),
            cfg.word_dim,
            glove=glove_rows(vocab_words) if use_glove and saved_identity is None else None,
            freeze=cfg.freeze_pretrained,
            glove_shape_only=use_glove and saved_identity is not None,
        )
        self.project = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(cfg.word_dim, d_model), nn.LayerNorm(d_model)
        )
        self.attention = encoder_layer(d_model, num_heads, dropout)
        self.sentence_encoder: LearnedSentenceEncoder | MiniLMSentenceEncoder = (
            MiniLMSentenceEncoder(d_model)
            if cfg.sentence_encoder == "minilm"
            else LearnedSentenceEncoder(cfg.word_dim, d_model)
        )
        words: dict[str, Any] = {"name": cfg.word_embeddings, "dim": cfg.word_dim}
        if use_glove:
            words |= {"frozen": cfg.freeze_pretrained} | (
                glove_identity() if saved_identity is None else saved_identity["word_embeddings"]
            )
        self._identity = {"word_embeddings": words, "sentence_encoder": self.sentence_encoder.identity()}
        if (
            saved_identity is not None
            and saved_identity.get("sentence_encoder") != self._identity["sentence_encoder"]
        ):
            raise ValueError(
                f"the model was saved with sentence encoder {saved_identity.get('sentence_encoder')} but this "
                f"installation provides {self._identity['sentence_encoder']}: install that package version"
            )

    def identity(self) -> dict[str, Any]:
        """Which word table and sentence encoder this is (package name and version for pretrained ones)."""
        return self._identity

    def forward(self, word_ids: Tensor, word_mask: Tensor, sentences: list[str]) -> TextEncoding:
        """Encode (B_q, N_q) word ids with mask (B_q, N_q); `sentences` are the raw texts (for MiniLM)."""
        if word_ids.shape[0] != len(sentences):
            raise ValueError(f"{word_ids.shape[0]} word-id rows but {len(sentences)} sentences")
        embedded = self.embed(word_ids)
        x = self.project(embedded)
        x = x + sinusoidal(torch.arange(word_ids.shape[1], device=x.device), x.shape[-1]).to(x.dtype)
        words = self.attention(x, src_key_padding_mask=~word_mask) * word_mask.unsqueeze(-1).to(x.dtype)
        return TextEncoding(words, word_mask, self.sentence_encoder(embedded, word_mask, sentences))
