"""The embeddings the cross-pair modules compare (AVM, OPM, APA), for one batch or for every worker's batch."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor


@dataclass
class PairEmbeddings:
    """Video-side tensors lead with B_v, query-side ones with B_q; `query_video` (B_q,) links them.

    Fields of modules that are switched off stay None. Video-side fields come from `MKTN.encode_videos`
    (once per video), query-side ones from `MKTN.ground`.
    """

    clip_mask: Tensor  # (B_v, T)
    query_video: Tensor | None = None  # (B_q,) index of each query's video
    word_mask: Tensor | None = None  # (B_q, N_q)
    clips_t: Tensor | None = None  # (B_v, T, d) AVM's transferred clips F'_v (unit vectors)
    words_t: Tensor | None = None  # (B_q, N_q, d) AVM's transferred words F'_w (unit vectors)
    appearance: Tensor | None = None  # (B_v, T, N_a, d) object prototypes P_a
    appearance_mask: Tensor | None = None  # (B_v, T, N_a) alive prototypes of real clips
    phrases: Tensor | None = None  # (B_q, N_p, d) phrase prototypes P_p
    phrase_mask: Tensor | None = None  # (B_q, N_p) alive phrase prototypes
    activities: Tensor | None = None  # (B_v, K, d) activity prototypes P_e
    sentence: Tensor | None = None  # (B_q, d) sentence prototypes q_e

    def present(self) -> list[str]:
        """Names of the video/query tensors that are set, in a fixed order (the same on every worker)."""
        return [f.name for f in fields(self) if f.name != "query_video" and getattr(self, f.name) is not None]
