"""Ground raw sentences in one video with a (built or loaded) model: the serving path, no training data needed."""

from __future__ import annotations

import numpy as np
import torch

from data_pipeline.batch import collate
from data_pipeline.types import QueryAnnotation, VideoGroup
from mktn.decode import Moment
from mktn.model import MKTN


@torch.no_grad()
def predict(
    model: MKTN,
    features: np.ndarray,
    duration: float,
    sentences: list[str],
    top_k: int = 5,
    max_words: int = 30,
) -> list[list[Moment]]:
    """Ranked (start_s, end_s, score) moments for each sentence, all queries of the video batched together.

    `features` are the video's clip features, (N, D) or (N, C+1, D) as at training time. The sentences are
    tokenised with the model's own vocabulary, so only the saved model folder is needed.
    """
    if duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    empty = [i for i, s in enumerate(sentences) if not s.strip()]
    if not sentences or empty:
        raise ValueError(
            f"need non-empty sentences; empty at positions {empty}" if empty else "no sentences given"
        )
    features = np.asarray(features, dtype=np.float32)
    if features.ndim not in (2, 3) or features.shape[0] < 1:
        raise ValueError(f"features must be (clips, dim) or (clips, tokens, dim), got shape {features.shape}")
    # The annotation times are placeholders: collate needs them, grounding never reads them.
    queries = [QueryAnnotation(f"q{i}", s, 0.0, duration, i) for i, s in enumerate(sentences)]
    batch = collate(
        [VideoGroup("input", duration, features, queries)], model.vocab, model.max_clips, max_words
    )
    device = next(model.parameters()).device
    batch = batch.to(device)
    model.eval()
    return model.decode(model(batch, compute_loss=False), batch, top_k)
