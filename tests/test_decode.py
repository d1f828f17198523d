"""Decoding: s <= e always, top-k with temporal NMS, float refinement, seconds, ties, max length."""

from __future__ import annotations

import pytest
import torch

from mktn.decode import decode_moments, top_moments
from mktn.heads import moment_mask
from mktn.layers import mask_logits


def _map(t: int, cells: dict[tuple[int, int], float]) -> torch.Tensor:
    scores = torch.full((1, t, t), -50.0)
    for (s, e), v in cells.items():
        scores[0, s, e] = v
    return mask_logits(scores, moment_mask(torch.ones(1, t, dtype=torch.bool)))


def test_topk_nms_refinement_and_seconds_hand_case() -> None:
    t = 10
    log_scores = _map(t, {(2, 4): -0.1, (2, 5): -0.2, (7, 8): -0.3, (3, 4): -0.4})
    offsets = torch.full((1, t, 2), 0.5)
    offsets[0, 2, 0], offsets[0, 4, 1] = 0.25, 0.75  # O_s at clip 2, O_e at clip 4
    durations, num_clips = torch.tensor([20.0]), torch.tensor([t])
    [moments] = decode_moments(log_scores, offsets, num_clips, durations, top_k=3, nms_iou=0.5)
    # best [2, 4]: refined (2 + 1 - 0.25, 4 + 0.75) = (2.75, 4.75) clips -> x 2 s per clip
    assert moments[0][:2] == pytest.approx((5.5, 9.5))
    assert moments[0][2] == pytest.approx(torch.tensor(-0.1).exp().item())
    # [2, 5] (IoU 3/4 with [2, 4]) and [3, 4] (IoU 2/3) are suppressed; [7, 8] is next: (7.5, 8.5) clips
    assert moments[1][:2] == pytest.approx((15.0, 17.0))
    assert len(moments) == 3 and all(s <= e for s, e, _ in moments)


def test_nms_off_keeps_overlapping_moments_and_never_repeats() -> None:
    log_scores = _map(6, {(1, 3): -0.1, (1, 4): -0.2})
    starts, ends, _, valid = top_moments(log_scores, top_k=3, nms_iou=1.0)
    assert list(zip(starts[0].tolist(), ends[0].tolist()))[:2] == [(1, 3), (1, 4)]
    assert valid.all()


def test_ties_go_to_earliest_start_then_shortest() -> None:
    log_scores = _map(8, {(4, 6): -0.5, (2, 5): -0.5, (2, 3): -0.5})
    starts, ends, _, _ = top_moments(log_scores, top_k=1, nms_iou=0.5)
    assert (starts.item(), ends.item()) == (2, 3)


@pytest.mark.parametrize("seed", range(5))
def test_decoded_start_never_after_end(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    b, t = 6, 12
    clip_mask = torch.arange(t)[None] < torch.randint(1, t + 1, (b, 1), generator=gen)
    log_scores = mask_logits(-3 * torch.rand(b, t, t, generator=gen), moment_mask(clip_mask, max_len=5))
    offsets = torch.rand(b, t, 2, generator=gen)
    offsets[:3] = torch.tensor([0.0, 0.0])  # adversarial: refined start = s + 1 > refined end = e for s == e
    num_clips = clip_mask.sum(1)
    durations = torch.rand(b, generator=gen) * 100 + 1
    decoded = decode_moments(log_scores, offsets, num_clips, durations, top_k=5, nms_iou=0.5)
    for moments, n, dur in zip(decoded, num_clips.tolist(), durations.tolist()):
        assert 1 <= len(moments) <= 5
        for s, e, p in moments:
            assert 0 <= s <= e <= dur + 1e-4 and 0 < p <= 1
            assert (e - s) <= 5 * dur / n + 1e-4  # the max length holds after refinement


def test_fewer_valid_moments_than_k() -> None:
    clip_mask = torch.tensor([[True, True, False, False]])  # 2 real clips: 3 moments exist
    log_scores = mask_logits(torch.zeros(1, 4, 4), moment_mask(clip_mask))
    [moments] = decode_moments(
        log_scores, torch.full((1, 4, 2), 0.5), torch.tensor([2]), torch.tensor([4.0]), 5, 1.0
    )
    assert len(moments) == 3
    assert all(p == 1.0 for _, _, p in moments)  # log-score 0
    with pytest.raises(ValueError, match="top_k"):
        top_moments(log_scores, 0, 0.5)
