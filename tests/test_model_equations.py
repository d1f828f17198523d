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
from mktn.rince import RINCE


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
    query_video = torch.tensor([0, 1])
    negatives = negative_videos(torch.zeros(2, 2), query_video, phi=0.6, select=False)
    assert negatives.tolist() == [[False, True], [True, False]]
    avm = AVM(AVMConfig(), d_model=8, num_heads=2, dropout=0.0)
    loss = avm.loss(video, query, negatives, query_video, phi=0.6)
    # Only two triplets violate the margin (see the cosines: v0.w0=1, v0.w1=.5, v1.w0=0, v1.w1=sin60).
    textual = 0.5 * (0.6 - 1.0 + c60)  # (v0, w0, w1): d- = ||v0 - w1|| = 1, d+ = 0 -> theta = 1/2
    d_neg, d_pos = 1.0, math.sqrt(2 - 2 * s60)  # (w1, v1, v0)
    rho = (d_neg - d_pos) ** 2 / (d_neg + d_pos) ** 2
    visual = (1 - rho / (1 + rho)) * (0.6 - s60 + c60)
    assert loss.item() == pytest.approx((textual + visual) / 2, rel=1e-5)
    no_self = AVM(AVMConfig(self_weighted=False), 8, 2, 0.0).loss(video, query, negatives, query_video, 0.6)
    assert no_self.item() == pytest.approx((0.5 * (0.6 - 1.0 + c60) + 0.5 * (0.6 - s60 + c60)) / 2, rel=1e-5)
    only_text = AVM(AVMConfig(visual_contrast=False), 8, 2, 0.0).loss(
        video, query, negatives, query_video, 0.6
    )
    assert only_text.item() == pytest.approx(textual / 2, rel=1e-5)


def test_eq1_score_and_negative_selection() -> None:
    clips = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # video 0; clip 2 is padding
    clip_mask = torch.tensor([[True, True, False]])
    words = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]]])  # query 0; word 2 is padding
    word_mask = torch.tensor([[True, True, False]])
    # word 0: max cos over real clips = 1; word 1: max = cos 45 -> mean = (1 + 0.7071) / 2
    score = video_query_scores(clips, clip_mask, words, word_mask)
    assert score.item() == pytest.approx((1 + math.sqrt(0.5)) / 2, rel=1e-6)
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.05]])  # (B_v=2, B_q=3)
    query_video = torch.tensor([0, 1, 1])
    assert negative_videos(scores, query_video, phi=0.3, select=True).tolist() == [
        [False, True, False],  # video 0 for query 2 scores 0.5 >= phi: a likely false negative, dropped
        [True, False, False],
    ]
    assert negative_videos(scores, query_video, phi=0.3, select=False).tolist() == [
        [False, True, True],
        [True, False, False],
    ]


def test_eq5_block_mask() -> None:
    expected = [
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    assert frame_block_mask(3, 2).int().tolist() == expected


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
    torch.manual_seed(1)
    sim = torch.rand(3, 5) * 2 - 1  # (B_v, B_q) cosines
    query_video = torch.tensor([0, 0, 1, 2, 2])
    q, alpha, scale = 0.4, 0.3, 2.0
    loss = RINCE(q, alpha, scale)(sim, query_video)
    s = (scale * sim).tolist()

    def term(pos: float, row: list[float]) -> float:
        return -math.exp(q * pos) / q + (alpha * sum(math.exp(x) for x in row)) ** q / q

    v_to_q = [term(s[query_video[j]][j], [s[i][j] for i in range(3)]) for j in range(5)]
    q_to_v = [
        term(
            s[query_video[j]][j],
            [s[query_video[j]][k] for k in range(5) if k == j or query_video[k] != query_video[j]],
        )
        for j in range(5)
    ]
    assert loss.item() == pytest.approx(sum(v_to_q) / 5 + sum(q_to_v) / 5, rel=1e-5)


def test_rince_parameters_clamped_to_unit_interval() -> None:
    r = RINCE(0.5, 0.5, 1.0)
    with torch.no_grad():
        r.raw_tau.fill_(3.0)
        r.raw_alpha.fill_(-1.0)
    assert r.tau.item() == 1.0 and r.alpha.item() == pytest.approx(1e-3)


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
