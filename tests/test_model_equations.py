"""Each paper equation pinned on hand-computed or brute-force cases: Eq. 1-5, RINCE (Eq. 6-8), the proposal-map L_2."""

from __future__ import annotations

import math

import pytest
import torch

from mktn.apa import APA, frame_block_mask
from mktn.avm import AVM, negative_videos, self_weight, threshold, video_query_scores
from mktn.config import APAConfig, AVMConfig, OPMConfig, ProposalMapConfig
from mktn.heads.base import HeadOutput
from mktn.heads.proposal_map import ProposalMapHead
from mktn.opm import OPM, window_tokens
from mktn.rince import RINCE, rince


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_threshold_endpoints_and_monotonic(schedule: str) -> None:
    cfg = AVMConfig(schedule=schedule, phi_init=0.1, phi_final=0.3)
    assert threshold(cfg, 0.0) == pytest.approx(0.1)
    assert threshold(cfg, 1.0) == pytest.approx(0.3)
    assert threshold(cfg, 0.5) == pytest.approx(0.2)  # cosine and linear meet half-way
    values = [threshold(cfg, r / 100) for r in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert threshold(cfg, -1.0) == pytest.approx(0.1) and threshold(cfg, 2.0) == pytest.approx(0.3)


def test_cosine_threshold_formula_and_fixed() -> None:
    cfg = AVMConfig(schedule="cosine", phi_init=0.2, phi_final=0.6)
    # MKTN.md: phi(r) = phi_final - (phi_final - phi_init) * (1 + cos(pi r)) / 2
    assert threshold(cfg, 0.25) == pytest.approx(0.6 - 0.4 * (1 + math.cos(math.pi / 4)) / 2)
    assert threshold(cfg, 0.25) < threshold(cfg.model_copy(update={"schedule": "linear"}), 0.25)  # slow start
    fixed = AVMConfig(schedule="fixed", phi_init=0.2, phi_final=0.6)
    assert {threshold(fixed, r) for r in (0.0, 0.3, 1.0)} == {0.2}


def test_theta_eq4_hand_case() -> None:
    # d- = 3, d+ = 1: rho = (3 - 1)^2 / (3 + 1)^2 = 0.25, theta = rho / (1 + rho) = 0.2
    theta = self_weight(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0]))
    assert theta.tolist() == pytest.approx([0.2, 0.0])
    assert (theta[0] / (1 - theta[0])).item() == pytest.approx(0.25)


def test_l_cl_eq3_hand_case() -> None:
    s60, c60 = math.sin(math.pi / 3), 0.5
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.0], [c60, s60]])
    scores = video @ query.T  # S(v_i, w_j), cosines of unit vectors
    query_video = torch.tensor([0, 1])
    negatives = negative_videos(scores, query_video, phi=0.6, select=False)
    assert negatives.tolist() == [[False, True], [True, False]]
    avm = AVM(AVMConfig(), d_model=8, num_heads=2, dropout=0.0)
    loss = avm.loss(scores, negatives, query_video, phi=0.6)
    # Only two triplets violate the margin (see the cosines: v0.w0=1, v0.w1=.5, v1.w0=0, v1.w1=sin60).
    textual = 0.5 * (0.6 - 1.0 + c60)  # (v0, w0, w1): d- = ||v0 - w1|| = 1, d+ = 0 -> theta = 1/2
    d_neg, d_pos = 1.0, math.sqrt(2 - 2 * s60)  # (w1, v1, v0)
    rho = (d_neg - d_pos) ** 2 / (d_neg + d_pos) ** 2
    visual = (1 - rho / (1 + rho)) * (0.6 - s60 + c60)
    # Each row has one negative, so the mean over negatives is that triplet; rows are averaged over queries.
    assert loss.item() == pytest.approx((textual + visual) / 2, rel=1e-5)
    no_self = AVM(AVMConfig(self_weighted=False), 8, 2, 0.0).loss(scores, negatives, query_video, 0.6)
    assert no_self.item() == pytest.approx((0.5 * (0.6 - 1.0 + c60) + 0.5 * (0.6 - s60 + c60)) / 2, rel=1e-5)
    only_text = AVM(AVMConfig(visual_contrast=False), 8, 2, 0.0).loss(scores, negatives, query_video, 0.6)
    assert only_text.item() == pytest.approx(textual / 2, rel=1e-5)


def test_l_cl_averages_over_negatives_not_sums() -> None:
    """Design choice (MKTN.md): a query's hinge terms are averaged over its selected negatives, so L_CL keeps its
    scale whatever the batch size; duplicating every negative video leaves it unchanged."""
    scores = torch.tensor([[0.9, 0.2], [0.5, 0.8]])
    query_video = torch.tensor([0, 1])
    cfg = AVMConfig(self_weighted=False, textual_contrast=False)
    one = AVM(cfg, 8, 2, 0.0).loss(scores, negative_videos(scores, query_video, 0.6, False), query_video, 0.6)
    doubled = torch.cat([scores, scores[[1, 0]]])  # video 2 scores like video 1, video 3 like video 0
    doubled_qv = torch.tensor([0, 1])
    negatives = (
        negative_videos(doubled, doubled_qv, 0.6, False)
        & ~torch.tensor([[0, 0], [0, 0], [0, 1], [1, 0]]).bool()
    )
    two = AVM(cfg, 8, 2, 0.0).loss(doubled, negatives, doubled_qv, 0.6)
    assert two.item() == pytest.approx(one.item(), rel=1e-6) and one.item() > 0


def test_eq1_score_and_negative_selection() -> None:
    unit = torch.nn.functional.normalize
    clips = unit(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]]), dim=-1)  # video 0; clip 2 is padding
    clip_mask = torch.tensor([[True, True, False]])
    words = unit(torch.tensor([[[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]]]), dim=-1)  # query 0; word 2 is padding
    word_mask = torch.tensor([[True, True, False]])
    # word 0: max cos over real clips = 1; word 1: max = cos 45 -> mean = (1 + 0.7071) / 2
    score = video_query_scores(clips, clip_mask, words, word_mask)
    assert score.item() == pytest.approx((1 + math.sqrt(0.5)) / 2, rel=1e-6)
    # (B_v=3, B_q=2); query 0 belongs to video 0, query 1 to video 1.
    scores = torch.tensor([[0.9, 0.1], [0.9, 0.8], [0.0, 0.1]])
    query_video = torch.tensor([0, 1])
    # Query 0: batch mean 0.6; video 1 stands 0.3 above it (>= phi): a likely false negative, dropped.
    assert negative_videos(scores, query_video, phi=0.3, select=True).tolist() == [
        [False, True],
        [False, False],
        [True, True],
    ]
    assert negative_videos(scores, query_video, phi=0.3, select=False).tolist() == [
        [False, True],
        [True, False],
        [True, True],
    ]
    # A common shift of every score changes nothing: the threshold reads the score relative to the batch.
    assert negative_videos(scores + 5.0, query_video, 0.3, True).equal(
        negative_videos(scores, query_video, 0.3, True)
    )


def test_eq5_block_mask() -> None:
    expected = [
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    assert frame_block_mask(3, 2).int().tolist() == expected


def test_frame_decoder_per_clip_form_is_the_eq5_masked_attention() -> None:
    """The frame decoder runs as T attentions over N_a keys; that equals one attention under Eq. 5's mask."""
    from mktn.layers import masked_attention

    torch.manual_seed(0)
    apa = APA(APAConfig(), d_model=8, max_clips=4)
    objects, clips = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 8)
    mask, object_mask = torch.ones(2, 4, dtype=torch.bool), torch.rand(2, 4, 3) > 0.2
    object_mask[..., 0] = True
    q_f = apa.frame_queries[:4].expand(2, 4, 8)
    flat = objects.reshape(2, 12, 8)
    allowed = object_mask.reshape(2, 1, 12) & frame_block_mask(4, 3)
    reference = (q_f + masked_attention(q_f, apa.frame_key(flat), apa.frame_value(flat), allowed) + clips) / 2
    torch.testing.assert_close(apa.frames(objects, object_mask, clips, mask), reference)


@pytest.mark.parametrize("masked", [True, False])
def test_frame_decoder_sees_only_its_clip(masked: bool) -> None:
    torch.manual_seed(0)
    apa = APA(APAConfig(frame_mask=masked), d_model=8, max_clips=4)
    objects, clips = torch.randn(1, 4, 3, 8), torch.randn(1, 4, 8)
    mask, object_mask = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4, 3, dtype=torch.bool)
    before = apa.frames(objects, object_mask, clips, mask)
    changed = objects.clone()
    changed[0, 3] += 10.0  # only clip 3's prototypes move
    after = apa.frames(changed, object_mask, clips, mask)
    assert torch.allclose(before[0, :3], after[0, :3]) is masked
    assert not torch.allclose(before[0, 3], after[0, 3])


def test_rince_matches_direct_formula() -> None:
    """L = (1 - p+^q) / q per row, p+ the softmax of the row's candidates at the positive (MKTN.md, RINCE)."""
    torch.manual_seed(1)
    sim = torch.rand(3, 5) * 2 - 1  # (B_v, B_q) cosines
    query_video = torch.tensor([0, 0, 1, 2, 2])
    q, scale = 0.4, 2.0
    loss = RINCE(q, scale)(sim, query_video)
    s = (scale * sim).tolist()

    def term(pos: float, row: list[float]) -> float:
        p = math.exp(pos) / sum(math.exp(x) for x in row)
        return (1 - p**q) / q

    v_to_q = [term(s[query_video[j]][j], [s[i][j] for i in range(3)]) for j in range(5)]
    q_to_v = [
        term(
            s[query_video[j]][j],
            [s[query_video[j]][k] for k in range(5) if k == j or query_video[k] != query_video[j]],
        )
        for j in range(5)
    ]
    assert loss.item() == pytest.approx(sum(v_to_q) / 5 + sum(q_to_v) / 5, rel=1e-5)


def test_rince_cannot_lower_itself_by_shifting_every_similarity() -> None:
    """The collapse of issue 13: with Chuang et al.'s raw form, every similarity fell together (S_es -> -0.97)."""
    query_video = torch.tensor([0, 1, 1, 2])
    rince = RINCE(0.5, 10.0)
    for c in (-0.9, 0.0, 0.7):
        sim = torch.full((3, 4), c, requires_grad=True)
        rince(sim, query_video).backward()
        assert abs(sim.grad.sum().item()) < 1e-6  # no net push up or down
        assert (sim.grad[query_video, torch.arange(4)] < 0).all()  # each positive is pulled up
    torch.manual_seed(0)
    sim = torch.rand(3, 4) * 2 - 1
    assert rince(sim + 0.3, query_video).item() == pytest.approx(rince(sim, query_video).item(), rel=1e-6)


def test_rince_tends_to_infonce_and_checks_q() -> None:
    torch.manual_seed(0)
    logits, positive = torch.randn(4, 6), torch.tensor([0, 2, 5, 1])
    candidates = torch.ones(4, 6, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(logits, positive)
    assert rince(logits, positive, candidates, 1e-4).item() == pytest.approx(ce.item(), rel=1e-3)
    with pytest.raises(ValueError, match="0 < q <= 1"):
        RINCE(0.0, 10.0)
    with pytest.raises(ValueError, match="0 < q <= 1"):
        RINCE(1.5, 10.0)


def test_opm_score_matches_brute_force() -> None:
    torch.manual_seed(2)
    opm = OPM(OPMConfig(), d_model=4)
    appearance, phrases = torch.randn(2, 3, 2, 4), torch.randn(3, 2, 4)  # (B_v, T, N_a, d), (B_q, N_p, d)
    a_mask = torch.ones(2, 3, 2, dtype=torch.bool)
    a_mask[1, 2] = False  # video 1 has 2 real clips
    s_op = opm.scores(appearance, a_mask, phrases, torch.ones(3, 2, dtype=torch.bool))
    a, p = torch.nn.functional.normalize(appearance, dim=-1), torch.nn.functional.normalize(phrases, dim=-1)
    for v in range(2):
        clips = 3 if v == 0 else 2
        for j in range(3):
            # s_op = 1/N_a sum_l max_i max_j <P_p^j, P_a^{i,l}>
            expected = (
                sum(
                    max(float(a[v, i, slot] @ p[j, k]) for i in range(clips) for k in range(2))
                    for slot in range(2)
                )
                / 2
            )
            assert s_op[v, j].item() == pytest.approx(expected, rel=1e-5)


def test_window_tokens_without_patches() -> None:
    clips = torch.arange(4, dtype=torch.float32)[None, :, None]  # (1, T=4, d=1), clip value = index
    mask = torch.tensor([[True, True, True, False]])
    tokens, token_mask = window_tokens(clips, mask, window=3)
    assert tokens[0, :, :, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 0]]
    assert token_mask[0].tolist() == [
        [False, True, True],
        [True, True, True],
        [True, True, False],
        [False] * 3,
    ]


@pytest.mark.parametrize("bce_scale", [1.0, 10.0])
def test_proposal_map_loss_is_scaled_bce_on_2d_tan_targets(bce_scale: float) -> None:
    """L_2 = bce_scale * mean over valid cells [s, e] of BCE(logit, clamp((IoU - 0.5) / 0.5, 0, 1))."""
    head = ProposalMapHead(ProposalMapConfig(min_iou=0.5, max_iou=1.0, bce_scale=bce_scale), d_model=8)
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 4)
    clip_mask = torch.tensor([[True, True, True, False]])  # 3 real clips: 6 valid cells
    truth = (0.5, 2.0)  # clip units
    expected, cells = 0.0, 0
    for s in range(3):
        for e in range(s, 3):
            inter = max(0.0, min(e + 1, truth[1]) - max(s, truth[0]))
            iou = inter / (max(e + 1, truth[1]) - min(s, truth[0]))
            y = min(max((iou - 0.5) / 0.5, 0.0), 1.0)
            p = torch.sigmoid(logits[0, s, e]).item()
            expected -= y * math.log(p) + (1 - y) * math.log(1 - p)
            cells += 1
    loss = head.loss(
        HeadOutput(logits, logits), clip_mask, torch.tensor([0]), torch.tensor([1]), torch.tensor([truth])
    )
    assert cells == 6 and loss.item() == pytest.approx(bce_scale * expected / cells, rel=1e-5)


def test_opm_dead_prototypes_never_floor_the_score() -> None:
    """A prototype whose ReLU weights are all zero is the zero vector; inside the mask it floored max-max at 0."""
    torch.manual_seed(3)
    opm = OPM(OPMConfig(num_appearance=2, num_phrase=2), d_model=4)
    with torch.no_grad():
        opm.phrase_net.weights[4].bias[0] = -100.0  # phrase slot 0 dead on every input
    words, word_mask = torch.randn(3, 5, 4), torch.ones(3, 5, dtype=torch.bool)
    phrases, phrase_mask = opm.phrases(words, word_mask)
    assert not phrase_mask[:, 0].any() and phrase_mask[:, 1].all()
    assert phrases[:, 0].abs().max().item() == 0.0
    # Every appearance prototype points away from every live phrase prototype: the score must go negative.
    appearance = -phrases[0, 1].expand(2, 3, 2, 4).clone()  # (B_v, T, N_a, d) against query 0
    s_op = opm.scores(appearance, torch.ones(2, 3, 2, dtype=torch.bool), phrases[:1], phrase_mask[:1])
    assert s_op.flatten().tolist() == pytest.approx([-1.0, -1.0], abs=1e-5)


def test_opm_prototypes_start_alive() -> None:
    torch.manual_seed(0)
    opm = OPM(OPMConfig(), d_model=16)
    _, alive = opm.appearance(torch.randn(4, 8, 5, 16), torch.ones(4, 8, dtype=torch.bool))
    _, phrase_alive = opm.phrases(torch.randn(6, 7, 16), torch.ones(6, 7, dtype=torch.bool))
    assert alive.all() and phrase_alive.all()
