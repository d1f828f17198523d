"""OPM, object-phrase prototype matching (paper section "Object-Phrase Prototype Matching").

- Appearance prototypes of clip i: W_a^i = Norm_tokens(ReLU(FC(ReLU(FC(ReLU(FC(F_v^i))))))) in R^{(C+1) x N_a}
  (three FC layers with ReLU give sparse weights, normalised over the token axis), P_a^i = W_a^i^T F_v^i.
- Phrase prototypes of query j: W_p^j in R^{N_q x N_p} from the same structure over words,
  P_p^j = W_p^j^T F_w^j (the paper's W_p^T F_v^i is a typo, MKTN.md).
- Score: s_op = (1/N_a) sum_l max_i max_j <P_p^j, P_a^{i,l}> on unit prototypes, for every (video, query) pair.

Without patches (C = 0) the "tokens" of clip i are the global tokens of a sliding temporal window of
`window` clips centred on i (clips outside the video or on padding are masked), so prototypes
aggregate objects over neighbouring clips instead of over patches.
Ablations (Table 6): without CAP the tokens/words themselves are the prototypes; without OCA the
score is the cosine between the mean appearance prototype and the mean phrase prototype.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mktn.config import OPMConfig
from mktn.layers import masked_mean


class SparseAggregator(nn.Module):
    """P = W^T X with W = ReLU(3 FC layers with ReLU)(X), normalised over the token axis (sparse weights).

    The last layer's bias starts at 1, so every prototype starts alive (all its weights positive, a mean of
    the tokens) and sparsifies as it learns; with a zero bias a slot whose ReLU is negative on every token
    from initialisation never receives a gradient (measured: phrase slot 0 dead in every query).
    """

    def __init__(self, d_model: int, num_prototypes: int):
        super().__init__()
        last = nn.Linear(d_model, num_prototypes)
        nn.init.ones_(last.bias)
        self.weights = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model), nn.ReLU(), last, nn.ReLU()
        )

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (..., N, d) with mask (..., N) -> prototypes (..., num_prototypes, d) and their mask.

        A prototype whose weights are all zero (every ReLU inactive on the real tokens) is the zero vector: its
        mask is False, so it never enters a score (a zero prototype would floor the max-max score at 0).
        """
        w = self.weights(tokens) * mask.unsqueeze(-1).to(tokens.dtype)
        total = w.sum(dim=-2, keepdim=True)
        alive = total[..., 0, :] > 0
        return (w / total.clamp_min(1e-6)).transpose(-1, -2) @ tokens, alive


def window_tokens(clips: Tensor, mask: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Sliding windows of `window` clips centred on each clip: (B, T, d) -> (B, T, window, d) and mask (B, T, window)."""
    left = (window - 1) // 2
    padded = F.pad(clips, (0, 0, left, window - 1 - left))
    padded_mask = F.pad(mask, (left, window - 1 - left))
    tokens = padded.unfold(1, window, 1).transpose(-1, -2)  # (B, T, window, d)
    token_mask = padded_mask.unfold(1, window, 1) & mask[..., None]
    return tokens, token_mask


def clip_units(tokens: Tensor, mask: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """The units a clip's prototypes aggregate: its C+1 tokens, or (C = 0) a temporal window of clips."""
    if tokens.shape[2] > 1:
        return tokens, mask[..., None].expand(tokens.shape[:-1])
    return window_tokens(tokens[:, :, 0], mask, window)


class OPM(nn.Module):
    """Appearance prototypes per clip, phrase prototypes per query, and the matrix S_op."""

    def __init__(self, cfg: OPMConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        self.appearance_net = (
            SparseAggregator(d_model, cfg.num_appearance) if cfg.appearance_prototypes else None
        )
        self.phrase_net = SparseAggregator(d_model, cfg.num_phrase) if cfg.appearance_prototypes else None

    def appearance(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """P_a per clip from video tokens (B_v, T, C+1, d): (B_v, T, N_a, d) and its mask (B_v, T, N_a)."""
        units, unit_mask = clip_units(tokens, mask, self.cfg.window)
        if self.appearance_net is None:
            return units, unit_mask
        protos, alive = self.appearance_net(units, unit_mask)
        return protos, alive & mask[..., None]

    def phrases(self, words: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor]:
        """P_p per query from words (B_q, N_q, d): (B_q, N_p, d) and its mask (B_q, N_p)."""
        if self.phrase_net is None:
            return words, word_mask
        return self.phrase_net(words, word_mask)

    def scores(
        self, appearance: Tensor, appearance_mask: Tensor, phrases: Tensor, phrase_mask: Tensor
    ) -> Tensor:
        """S_op (B_v, B_q): s_op of every video against every query."""
        a, p = F.normalize(appearance, dim=-1), F.normalize(phrases, dim=-1)
        if not self.cfg.cross_modal_alignment:
            pooled_a = masked_mean(a.flatten(1, 2), appearance_mask.flatten(1, 2), dim=1)
            pooled_p = masked_mean(p, phrase_mask, dim=1)
            return F.normalize(pooled_a, dim=-1) @ F.normalize(pooled_p, dim=-1).T
        # One matmul over every (clip slot, phrase) pair; masked entries get -2, below any cosine.
        b_v, t, n_a, d = a.shape
        sim = (a.reshape(-1, d) @ p.reshape(-1, d).T).view(
            b_v, t, n_a, *p.shape[:2]
        )  # (B_v, T, N_a, B_q, N_p)
        sim = sim.masked_fill(~phrase_mask[None, None, None], -2.0).amax(
            dim=4
        )  # best phrase: (B_v, T, N_a, B_q)
        best = sim.masked_fill(~appearance_mask[..., None], -2.0).amax(dim=1)  # best clip: (B_v, N_a, B_q)
        slots = (best > -2.0).transpose(
            1, 2
        )  # (B_v, B_q, N_a): slot alive in some clip, the query has a phrase
        return (best.transpose(1, 2) * slots).sum(-1) / slots.sum(-1).clamp_min(1)
