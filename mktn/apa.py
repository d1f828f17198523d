"""APA, activity-sentence prototype alignment (paper section "Activity-Sentence Prototype Alignment").

- Frame decoder: P_f = Q_f + softmax(Q_f C_a^T / sqrt(d) + W_f) V_a, with N_v learnable frame queries Q_f,
  C_a / V_a linear maps of the object prototypes P_a in R^{(N_v N_a) x d}, and the block mask of Eq. 5:
  W_f(i, j) = 0 if N_a i <= j < N_a (i + 1) else -inf (frame query i sees only the prototypes of clip i).
  Then p_f^i = (p_f^i + v_g^i) / 2 with the clip's global feature.
- Activity decoder: P_e = Q_e + softmax(Q_e K_f^T / sqrt(d)) V_f with K learnable activity queries
  (MKTN.md: K from config) over the real frame prototypes.
- s_es = max_k cos(q_e, P_e^k) for every (video, query) pair -> S_es.

Ablations (Table 7): without BMP the single activity prototype is the mean of the clips' global
features (the "naive" video-level feature of the paper); without AA, s_es averages over the
activity prototypes instead of taking the closest one. `frame_mask=False` drops Eq. 5 (every frame
query sees every real prototype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mktn.config import APAConfig
from mktn.layers import masked_attention, masked_mean


def frame_block_mask(num_clips: int, per_clip: int, device: torch.device | None = None) -> Tensor:
    """Eq. 5 as a bool matrix (N_v, N_v * N_a): True where N_a * i <= j < N_a * (i + 1)."""
    owner = torch.arange(num_clips * per_clip, device=device) // per_clip
    return owner[None, :] == torch.arange(num_clips, device=device)[:, None]


class APA(nn.Module):
    """Activity prototypes per video (frame decoder + activity decoder) and the matrix S_es."""

    def __init__(self, cfg: APAConfig, d_model: int, max_clips: int):
        super().__init__()
        self.cfg = cfg
        if cfg.motion_prototypes:
            self.frame_queries = nn.Parameter(torch.randn(max_clips, d_model) * 0.02)
            self.frame_key = nn.Linear(d_model, d_model)  # C_a
            self.frame_value = nn.Linear(d_model, d_model)  # V_a
            self.activity_queries = nn.Parameter(torch.randn(cfg.num_activities, d_model) * 0.02)
            self.activity_key = nn.Linear(d_model, d_model)  # K_f
            self.activity_value = nn.Linear(d_model, d_model)  # V_f

    def frames(self, objects: Tensor, object_mask: Tensor, clips: Tensor, clip_mask: Tensor) -> Tensor:
        """Frame prototypes p_f = (p_f + v_g) / 2 (B_v, T, d) from the frame decoder with the Eq. 5 mask.

        Under Eq. 5 frame query i attends to the N_a prototypes of clip i alone, so the decoder runs as T
        attentions over N_a keys each (O(T N_a)), not as one masked T x (T N_a) attention; without the mask
        every frame query sees every real prototype of the video.
        """
        b, t, n_a, d = objects.shape
        q_f = self.frame_queries[:t].expand(b, t, d)
        keys, values = self.frame_key(objects), self.frame_value(objects)  # C_a, V_a: (B_v, T, N_a, d)
        if self.cfg.frame_mask:
            attended = masked_attention(q_f[:, :, None], keys, values, object_mask[:, :, None])[:, :, 0]
        else:
            flat = (b, t * n_a, d)
            attended = masked_attention(
                q_f, keys.reshape(flat), values.reshape(flat), object_mask.reshape(b, 1, t * n_a)
            )
        return (q_f + attended + clips) / 2 * clip_mask[..., None].to(clips.dtype)

    def prototypes(self, objects: Tensor, object_mask: Tensor, clips: Tensor, clip_mask: Tensor) -> Tensor:
        """Activity prototypes P_e (B_v, K, d) from object prototypes (B_v, T, N_a, d) and global clips (B_v, T, d)."""
        if not self.cfg.motion_prototypes:
            return masked_mean(clips, clip_mask, dim=1)[:, None]
        frames = self.frames(objects, object_mask, clips, clip_mask)
        q_e = self.activity_queries.expand(len(frames), -1, -1)
        return q_e + masked_attention(
            q_e, self.activity_key(frames), self.activity_value(frames), clip_mask[:, None, :]
        )

    def scores(self, activities: Tensor, sentence: Tensor) -> Tensor:
        """S_es (B_v, B_q) from P_e (B_v, K, d) and sentence prototypes q_e (B_q, d)."""
        cos = torch.einsum("vkd,qd->vqk", F.normalize(activities, dim=-1), F.normalize(sentence, dim=-1))
        return cos.amax(-1) if self.cfg.dynamic_alignment else cos.mean(-1)
