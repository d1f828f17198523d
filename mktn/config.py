"""Model config: every hyper-parameter and every ablation switch of paper Tables 3-7."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strict_config import StrictConfig


class CSMConfig(StrictConfig):
    """Cross-sentence semantic mining (paper Table 4 relations)."""

    enabled: bool = True
    temporal_position: bool = True  # positional embedding by annotation-order index
    contextual_attention: bool = True  # self-attention among a video's queries
    word_memory: bool = True  # decoder memory includes the words of the video's queries (cross-granularity)
    shared_words: bool = True  # each query's words read the words of the video's other queries
    cross_video: bool = False  # self-attention also across the videos of the batch
    num_layers: int = Field(1, ge=1)


class AVMConfig(StrictConfig):
    """Adaptive video-query matching (Eq. 1-4; Table 5 threshold schedules)."""

    enabled: bool = True
    schedule: Literal["cosine", "linear", "fixed"] = "cosine"
    phi_init: float = 0.1
    phi_final: float = 0.3
    negative_selection: bool = True  # drop likely false negatives above phi
    self_weighted: bool = True  # theta from Eq. 4; False -> theta = 0.5
    visual_contrast: bool = True  # Table 5 "visual feature": the negative-video term of Eq. 3
    textual_contrast: bool = True  # Table 5 "textual feature": the negative-query term of Eq. 3


class OPMConfig(StrictConfig):
    """Object-phrase prototype matching."""

    enabled: bool = True
    num_appearance: int = Field(4, ge=1)  # N_a prototypes per clip
    num_phrase: int = Field(4, ge=1)  # N_p prototypes per query
    window: int = Field(3, ge=1)  # clips aggregated per prototype when features have no patches (C = 0)
    appearance_prototypes: bool = True  # Table 6 CAP: sparse prototype aggregation (off: raw tokens/words)
    cross_modal_alignment: bool = True  # Table 6 OCA: max-max object-phrase matching (off: pooled cosine)


class APAConfig(StrictConfig):
    """Activity-sentence prototype alignment."""

    enabled: bool = True
    num_activities: int = Field(8, ge=1)  # K activity queries
    frame_mask: bool = True  # Eq. 5 block mask in the frame decoder
    motion_prototypes: bool = True  # Table 7 BMP: frame + activity decoders (off: one mean-pooled prototype)
    dynamic_alignment: bool = True  # Table 7 AA: s_es = max over activities (off: mean over activities)


class LossConfig(StrictConfig):
    """Weights of Eq. 11: L = cl_weight * L_CL + lambda_1 * L_1 + gamma * L_2 + mu * L_3 (cl_weight 1 in the paper)."""

    lambda_1: float = Field(0.1, ge=0)  # RINCE prototype losses (Eq. 8)
    gamma: float = Field(1.0, ge=0)  # the backbone loss L_2: span CE (Eq. 9) or proposal-map BCE
    mu: float = Field(1.0, ge=0)  # float regression + CSM auxiliary (Eq. 10)
    cl_weight: float = Field(1.0, ge=0)  # scale of L_CL (Eq. 11: 1)
    rince_scale: float = Field(10.0, gt=0)  # RINCE logits = rince_scale * cosine similarity (1 / temperature)
    rince_q: float = Field(0.5, gt=0, le=1)  # q (the paper's tau) of RINCE: -> 0 InfoNCE, 1 MAE-like (robust)


class ProposalMapConfig(StrictConfig):
    """The 2D temporal proposal map head (2D-TAN-like backbone)."""

    conv_layers: int = Field(2, ge=1)  # 2D convolutions over the moment map
    kernel_size: int = Field(3, ge=1)
    min_iou: float = Field(0.5, ge=0, lt=1)  # IoU scaled to 0 at min_iou and 1 at max_iou (2D-TAN targets)
    max_iou: float = Field(1.0, gt=0, le=1)
    # L_2 = bce_scale * mean BCE over the valid cells: the mean over ~T^2/2 mostly-negative cells is about a tenth
    # of the span CE, and at scale 1 the other losses drown it (R1@0.5 61.9 vs 81.6 after 16 synthetic epochs)
    bce_scale: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _iou_range(self) -> ProposalMapConfig:
        if self.min_iou >= self.max_iou:
            raise ValueError(f"min_iou ({self.min_iou}) must be below max_iou ({self.max_iou})")
        return self


class TextConfig(StrictConfig):
    """Word embeddings + sentence encoder behind one interface."""

    word_embeddings: Literal["learned", "glove"] = "learned"
    sentence_encoder: Literal["learned", "minilm"] = "learned"
    word_dim: int = Field(50, ge=1)  # GloVe 6B 50-d when word_embeddings == glove
    freeze_pretrained: bool = True  # GloVe rows stay fixed (unknown words learn); MiniLM is always frozen

    @model_validator(mode="after")
    def _glove_width(self) -> TextConfig:
        if self.word_embeddings == "glove" and self.word_dim != 50:
            raise ValueError(
                f"word_embeddings=glove gives 50-d vectors (GloVe 6B 50d); set word_dim=50, not {self.word_dim}"
            )
        return self


class ModelConfig(StrictConfig):
    """The whole MKTN model; `mode` picks multi-pair (the method) or single-pair (the baseline)."""

    backbone: Literal["span", "proposal_map"] = "span"
    mode: Literal["multi_pair", "single_pair"] = "multi_pair"
    d_model: int = Field(128, ge=8)
    num_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_span_clips: int | None = Field(None, ge=1)  # optional max decoded length, in clips
    nms_iou: float = Field(0.5, gt=0, le=1)
    proposal_map: ProposalMapConfig = ProposalMapConfig()
    text: TextConfig = TextConfig()
    csm: CSMConfig = CSMConfig()
    avm: AVMConfig = AVMConfig()
    opm: OPMConfig = OPMConfig()
    apa: APAConfig = APAConfig()
    loss: LossConfig = LossConfig()
    gather_negatives: bool = False  # all_gather embeddings across workers for AVM/RINCE negatives

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self

    @property
    def cross_pair(self) -> bool:
        """True in multi-pair mode: CSM/AVM/OPM/APA run; single-pair mode turns them all off."""
        return self.mode == "multi_pair"
