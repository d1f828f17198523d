"""MKTN: the multi-thread knowledge transfer network wrapped around a grounding backbone (paper Fig. 2).

The batch is split by what each piece of work depends on. Per video (`encode_videos`, once per video
whatever its number of queries): the video encoder, the video's share of the fusion's W_f, CSM's clip
memory, and in training the video side of the cross-pair modules (AVM's transferred clips, OPM's
appearance prototypes, APA's activity prototypes). Per query (`ground`): text, CSM, the co-attention,
BiGRU and head over each query's gathered clips, and the losses. In single-pair mode (the baseline)
every query gets its own copy of its video, encoded per pair, and the cross-pair modules (CSM, AVM,
OPM, APA) are not built. At inference only what prediction needs runs: no cross-pair prototypes, no
CSM regression.

    L = cl_weight * L_CL + lambda * L_1 + gamma * L_2 + mu * L_3        (Eq. 11; cl_weight = 1 in the paper)

L_CL is AVM's contrast (Eq. 3), L_1 the RINCE prototype alignments (Eq. 8), L_2 the backbone's
grounding loss (Eq. 9 for the span head), L_3 the float predictor (Eq. 10) plus CSM's auxiliary
moment regression.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from data_pipeline.batch import Batch
from data_pipeline.text import Vocab
from mktn.apa import APA
from mktn.avm import AVM, negative_videos, threshold, video_query_scores
from mktn.config import ModelConfig
from mktn.csm import CSM, moment_loss
from mktn.decode import Moment, decode_moments
from mktn.distributed import gather_pairs, world_size
from mktn.fusion import CoAttentionFusion
from mktn.heads import FloatPredictor, HeadOutput, build_head, float_loss
from mktn.opm import OPM, clip_units
from mktn.pairs import PairEmbeddings
from mktn.rince import RINCE
from mktn.text import TextEncoder, TextEncoding
from mktn.video_encoder import VideoEncoder

LOSS_KEYS = ("total", "L_CL", "L_1", "L_2", "L_3")


@dataclass
class ModelOutput:
    """What one forward pass returns.

    `losses` has `LOSS_KEYS` (0-tensors for disabled parts) when the loss was computed, else is empty.
    `log_scores` (B_q, T, T) scores every moment [clip s, clip e]; `offsets` (B_q, T, 2) are the float
    predictor's (O_s, O_e); `phi` is AVM's threshold at this progress (0.0 when AVM is off); `pairs` the
    cross-pair embeddings the losses compared (training only).
    """

    log_scores: Tensor
    offsets: Tensor
    clip_mask: Tensor
    phi: float
    losses: dict[str, Tensor] = field(default_factory=dict)
    csm_moments: Tensor | None = None
    pairs: PairEmbeddings | None = None


@dataclass
class EncodedVideos:
    """The per-video work of a batch: attended clips v_g (B_v, T, d), their mask, the fusion's video share
    W_V V + b_f (B_v, T, d), CSM's per-layer clip keys/values, and (training) the video side of the pairs."""

    clips: Tensor
    mask: Tensor
    merged: Tensor
    memory: list[tuple[Tensor, Tensor]]
    pairs: PairEmbeddings | None = None

    def outputs(self) -> list[Tensor]:
        """Every float tensor computed per video (what a backward pass through the video side starts from)."""
        pairs = [getattr(self.pairs, n) for n in self.pairs.present()] if self.pairs is not None else []
        found = [self.clips, self.merged, *(t for kv in self.memory for t in kv), *pairs]
        return [t for t in found if t.is_floating_point()]

    def detached(self) -> EncodedVideos:
        """A copy whose float tensors are new leaves (benchmarks time the per-query half on its own)."""
        leaf = {id(t): t.detach().requires_grad_() for t in self.outputs()}

        def swap(t: Tensor | None) -> Tensor | None:
            return leaf.get(id(t), t) if t is not None else None

        pairs = None
        if self.pairs is not None:
            pairs = PairEmbeddings(
                **{f: swap(getattr(self.pairs, f)) for f in self.pairs.__dataclass_fields__}
            )
        memory = [(swap(k), swap(v)) for k, v in self.memory]
        return EncodedVideos(swap(self.clips), self.mask, swap(self.merged), memory, pairs)


@dataclass
class PairScores:
    """The cross-pair similarity matrices (B_v, B_q) of a batch: AVM's score (Eq. 1 on F'), S_op, S_es."""

    avm: Tensor | None = None
    opm: Tensor | None = None
    apa: Tensor | None = None


class MKTN(nn.Module):
    """The whole model; build it with `build_model` (or `mktn.export.load_model` for a saved one)."""

    def __init__(
        self,
        cfg: ModelConfig,
        vocab: Vocab,
        feature_dim: int,
        tokens_per_clip: int,
        max_clips: int,
        saved_text: dict[str, Any] | None = None,
    ):
        super().__init__()
        if feature_dim < 1 or tokens_per_clip < 1 or max_clips < 1:
            raise ValueError(
                f"feature_dim, tokens_per_clip and max_clips must be >= 1, got "
                f"{feature_dim}, {tokens_per_clip}, {max_clips}"
            )
        self.cfg, self.vocab = cfg, vocab
        self.feature_dim, self.tokens_per_clip, self.max_clips = feature_dim, tokens_per_clip, max_clips
        d, heads, drop = cfg.d_model, cfg.num_heads, cfg.dropout
        self.video_encoder = VideoEncoder(feature_dim, d, heads, max_clips, drop)
        self.text_encoder = TextEncoder(cfg.text, vocab.itos, d, heads, drop, saved_identity=saved_text)
        cross = cfg.cross_pair
        self.csm = CSM(cfg.csm, d, heads, drop) if cross and cfg.csm.enabled else None
        self.avm = AVM(cfg.avm, d, heads, drop) if cross and cfg.avm.enabled else None
        self.opm = OPM(cfg.opm, d) if cross and cfg.opm.enabled else None
        self.apa = APA(cfg.apa, d, max_clips) if cross and cfg.apa.enabled else None
        loss = cfg.loss
        has_rince = self.opm is not None or self.apa is not None
        self.rince = RINCE(loss.rince_q, loss.rince_scale) if has_rince else None
        self.fusion = CoAttentionFusion(d, drop)
        self.head = build_head(cfg)
        self.float_predictor = FloatPredictor(d, drop)

    # ---- the two halves: per-video and per-query work --------------------------------------------

    def encode_videos(self, feats: Tensor, mask: Tensor, with_pairs: bool = False) -> EncodedVideos:
        """Per-video work: features (B_v, T, C+1, d_in) and clip mask (B_v, T) -> `EncodedVideos`.

        `with_pairs` adds the video side of the cross-pair modules (what their losses need).
        """
        video = self.video_encoder(feats, mask)
        memory = self.csm.memory(video.clips, mask) if self.csm is not None else []
        encoded = EncodedVideos(video.clips, mask, self.fusion.project_video(video.clips), memory)
        if with_pairs and self.cfg.cross_pair:
            pairs = PairEmbeddings(clip_mask=mask)
            if self.avm is not None:
                pairs.clips_t = self.avm.transfer(video.clips, mask)
            objects = None
            if self.opm is not None:
                pairs.appearance, pairs.appearance_mask = objects = self.opm.appearance(video.tokens, mask)
            if self.apa is not None:
                objects = objects or clip_units(video.tokens, mask, self.cfg.opm.window)
                pairs.activities = self.apa.prototypes(*objects, video.clips, mask)
            encoded.pairs = pairs
        return encoded

    def encode_text(self, batch: Batch) -> TextEncoding:
        """Per-query text work: word features and sentence features of every query of `batch`."""
        return self.text_encoder(batch.word_ids, batch.word_mask, batch.sentences)

    def forward(self, batch: Batch, progress: float = 1.0, compute_loss: bool = True) -> ModelOutput:
        """Ground every query of `batch`; `progress` in [0, 1] drives AVM's threshold (Eq. 2)."""
        self._check(batch)
        feats = batch.video_feats.to(self.video_encoder.position.weight.dtype)  # e.g. a bf16 DeepSpeed engine
        mask, query_video = batch.video_mask, batch.query_video
        if not self.cfg.cross_pair:  # single-pair baseline: one copy of the video per query
            feats, mask = feats[query_video], mask[query_video]
            query_video = torch.arange(batch.num_queries, device=feats.device)
        videos = self.encode_videos(feats, mask, with_pairs=compute_loss)
        return self.ground(batch, videos, query_video, progress, compute_loss)

    def ground(
        self,
        batch: Batch,
        videos: EncodedVideos,
        query_video: Tensor,
        progress: float = 1.0,
        compute_loss: bool = True,
    ) -> ModelOutput:
        """Per-query work over already encoded `videos`; `query_video` (B_q,) indexes them."""
        text = self.encode_text(batch)
        sentence, words = text.sentence, text.words
        if self.csm is not None and self.csm.word_context is not None:
            words = self.csm.shared_words(text.words, text.mask, query_video, videos.mask.shape[0])
        if self.csm is not None:
            sentence = self.csm(
                text.sentence,
                batch.query_index,
                query_video,
                videos.memory,
                videos.mask,
                text.words,
                text.mask,
            )
        clips, clip_mask = videos.clips[query_video], videos.mask[query_video]
        # The sentence feature (CSM's, or q_e) joins the words as a token of the co-attention.
        tokens = self.fusion.project_query(torch.cat([sentence[:, None], words], 1))
        token_mask = torch.cat([text.mask.new_ones(len(text.mask), 1), text.mask], 1)
        fused = self.fusion(clips, videos.merged[query_video], clip_mask, tokens, token_mask, sentence)
        head_out = self.head(fused, clip_mask, sentence)
        offsets = self.float_predictor(fused)
        phi = threshold(self.cfg.avm, progress) if self.avm is not None else 0.0
        out = ModelOutput(head_out.log_scores, offsets, clip_mask, phi)
        if compute_loss:
            if self.csm is not None:
                out.csm_moments = self.csm.moments(sentence)
            out.pairs = self.query_pairs(videos.pairs, text, query_video)
            out.losses = self._losses(batch, out, head_out)
        return out

    def query_pairs(
        self, pairs: PairEmbeddings | None, text: TextEncoding, query_video: Tensor
    ) -> PairEmbeddings | None:
        """`pairs` (the video side) completed with the query side of the cross-pair modules.

        Design choice: the alignments use the text encoder's q_e and words, not CSM's feature, which has
        already attended to its own video and would make the positive pair trivially identifiable.
        """
        if pairs is None:
            return None
        pairs.query_video, pairs.word_mask = query_video, text.mask
        if self.avm is not None:
            pairs.words_t = self.avm.transfer(self.fusion.project_query(text.words), text.mask)  # F_w W_S
        if self.opm is not None:
            pairs.phrases, pairs.phrase_mask = self.opm.phrases(text.words, text.mask)
        pairs.sentence = text.sentence  # APA's sentence prototype; always kept for transfer/sentence_cosine
        return pairs

    def pair_scores(self, pairs: PairEmbeddings) -> PairScores:
        """AVM's, OPM's and APA's (B_v, B_q) similarity matrices of the (possibly gathered) batch."""
        scores = PairScores()
        if pairs.clips_t is not None:
            scores.avm = video_query_scores(pairs.clips_t, pairs.clip_mask, pairs.words_t, pairs.word_mask)
        if pairs.appearance is not None:
            scores.opm = self.opm.scores(
                pairs.appearance, pairs.appearance_mask, pairs.phrases, pairs.phrase_mask
            )
        if pairs.activities is not None and pairs.sentence is not None:
            scores.apa = self.apa.scores(pairs.activities, pairs.sentence)
        return scores

    # ---- losses ---------------------------------------------------------------------------------

    def _losses(self, batch: Batch, out: ModelOutput, head_out: HeadOutput) -> dict[str, Tensor]:
        zero = out.offsets.new_zeros(())
        l2 = self.head.loss(head_out, out.clip_mask, batch.start_idx, batch.end_idx, batch.clip_times)
        l3 = float_loss(out.offsets, batch.start_idx, batch.end_idx, batch.clip_times)
        if out.csm_moments is not None:
            l3 = l3 + moment_loss(out.csm_moments, batch.times / batch.durations[batch.query_video, None])
        l_cl, l1 = zero, zero
        if out.pairs is not None:
            pairs = out.pairs
            if self.cfg.gather_negatives and world_size() > 1:
                pairs = gather_pairs(pairs)
            l_cl, l1 = self._cross_pair_losses(pairs, out.phi)
        w = self.cfg.loss
        total = w.cl_weight * l_cl + w.lambda_1 * l1 + w.gamma * l2 + w.mu * l3
        return dict(zip(LOSS_KEYS, (total, l_cl, l1, l2, l3)))

    def _cross_pair_losses(self, pairs: PairEmbeddings, phi: float) -> tuple[Tensor, Tensor]:
        """L_CL (Eq. 3) and L_1 (Eq. 8) over the (possibly gathered) batch."""
        l_cl = l1 = pairs.clip_mask.new_zeros((), dtype=torch.float32)
        scores = self.pair_scores(pairs)
        if scores.avm is not None:
            negatives = negative_videos(scores.avm, pairs.query_video, phi, self.cfg.avm.negative_selection)
            l_cl = self.avm.loss(scores.avm, negatives, pairs.query_video, phi)
        for sim in (scores.opm, scores.apa):
            if sim is not None:
                l1 = l1 + self.rince(sim, pairs.query_video)
        return l_cl, l1

    # ---- decoding and identity ------------------------------------------------------------------

    def decode(self, output: ModelOutput, batch: Batch, top_k: int = 5) -> list[list[Moment]]:
        """Ranked (start_s, end_s, score) moments per query: best spans with s <= e, temporal NMS, float refinement."""
        qv = batch.query_video
        return decode_moments(
            output.log_scores,
            output.offsets,
            batch.num_clips[qv],
            batch.durations[qv],
            top_k,
            self.cfg.nms_iou,
        )

    def text_state(self) -> dict[str, Any]:
        """Vocabulary + text encoder identity: with the weights, enough to predict from raw sentences."""
        return {
            "format": "mktn-text-v1",
            "vocab": json.loads(self.vocab.to_json()),
            **self.text_encoder.identity(),
        }

    def _check(self, batch: Batch) -> None:
        """Clear errors for batches that do not fit this model (instead of a shape error deep inside)."""
        _, t, p, d = batch.video_feats.shape
        if d != self.feature_dim or p != self.tokens_per_clip:
            raise ValueError(
                f"batch features have {p} tokens/clip of dim {d}; the model was built for "
                f"{self.tokens_per_clip} tokens/clip of dim {self.feature_dim}"
            )
        if batch.word_ids.numel() and int(batch.word_ids.max()) >= len(self.vocab):
            raise ValueError(
                f"word id {int(batch.word_ids.max())} is outside the model's vocabulary of "
                f"{len(self.vocab)} words: encode sentences with the model's vocab"
            )


def build_model(
    cfg: ModelConfig, vocab: Vocab, feature_dim: int, tokens_per_clip: int, max_clips: int
) -> MKTN:
    """A freshly initialised MKTN for features of `feature_dim` with `tokens_per_clip` = C+1 tokens per clip."""
    return MKTN(cfg, vocab, feature_dim, tokens_per_clip, max_clips)
