"""Word embedding table: learned over the dataset vocabulary, or initialised from GloVe."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class WordEmbedding(nn.Module):
    """E(w) for word ids (B_q, N_q) -> (B_q, N_q, dim); id 0 (padding) embeds to zeros.

    `glove` = (rows, known) from `mktn.text.glove.glove_rows`. With `freeze`, the GloVe rows
    of known words are a fixed buffer (saved with the model) and only unknown words learn,
    as in VSLNet; without it the whole table is learned, starting from GloVe. `glove_shape_only`
    builds the same buffers empty, for loading a saved model without reading the GloVe files.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        glove: tuple[np.ndarray, np.ndarray] | None = None,
        freeze: bool = True,
        glove_shape_only: bool = False,
    ):
        super().__init__()
        self.table = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.1)
        with torch.no_grad():
            self.table.weight[0].zero_()
        self.frozen_rows = freeze and (glove is not None or glove_shape_only)
        if self.frozen_rows:
            self.register_buffer("glove", torch.zeros(vocab_size, dim))
            self.register_buffer("known", torch.zeros(vocab_size, dtype=torch.bool))
        if glove is not None:
            rows, known = torch.from_numpy(glove[0]), torch.from_numpy(glove[1])
            known[0] = False
            with torch.no_grad():
                if self.frozen_rows:
                    self.glove.copy_(rows)
                    self.known.copy_(known)
                else:
                    self.table.weight[known] = rows[known]

    def forward(self, word_ids: Tensor) -> Tensor:
        learned = self.table(word_ids)
        if not self.frozen_rows:
            return learned
        return torch.where(self.known[word_ids].unsqueeze(-1), self.glove[word_ids], learned)
