"""The embeddings the cross-pair losses compare (AVM, OPM, APA), for one batch or for every worker's batch."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor


@dataclass
class PairEmbeddings:
    """Video-side tensors lead with B_v, query-side ones with B_q; `query_video` (B_q,) links them.

    Fields of modules that are switched off stay None.
    """

    query_video: Tensor
    clip_mask: Tensor  # (B_v, T)
    word_mask: Tensor  # (B_q, N_q)
    clips: Tensor | None = None  # (B_v, T, d) attended global tokens (AVM's Eq. 1 score)
    words_ws: Tensor | None = None  # (B_q, N_q, d) Q W_S (AVM's Eq. 1 score)
    video_embed: Tensor | None = None  # (B_v, d) Norm(zeta(F_v)) pooled (Eq. 3)
    query_embed: Tensor | None = None  # (B_q, d) Norm(zeta(F_w)) pooled (Eq. 3)
    appearance: Tensor | None = None  # (B_v, T, N_a, d) object prototypes P_a
    appearance_mask: Tensor | None = None  # (B_v, T, N_a)
    phrases: Tensor | None = None  # (B_q, N_p, d) phrase prototypes P_p
    phrase_mask: Tensor | None = None  # (B_q, N_p)
    activities: Tensor | None = None  # (B_v, K, d) activity prototypes P_e
    sentence: Tensor | None = None  # (B_q, d) sentence prototypes q_e

    def present(self) -> list[str]:
        """Names of the video/query tensors that are set, in a fixed order (the same on every worker)."""
        return [f.name for f in fields(self) if f.name != "query_video" and getattr(self, f.name) is not None]
