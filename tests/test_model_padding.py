"""Padding never changes outputs: extra padded clips/words, or extra video groups in the batch."""

from __future__ import annotations

import pytest
import torch

from mktn.layers import is_masked
from tests.model_support import batch_of, model_for, pad_batch, small_config, tiny_groups

CASES = [("span", 3), ("span", 0), ("proposal_map", 3), ("proposal_map", 0)]


@pytest.mark.parametrize(("backbone", "patches"), CASES)
def test_extra_padded_clips_and_words_change_nothing(backbone: str, patches: int) -> None:
    groups = tiny_groups(4, patches=patches)
    model = model_for(groups, small_config(backbone=backbone)).eval()
    batch = batch_of(groups, model)
    t = batch.video_feats.shape[1]
    with torch.no_grad():
        plain = model(batch, progress=0.7)
        padded = model(pad_batch(batch, extra_clips=16 - t, extra_words=5), progress=0.7)
    torch.testing.assert_close(padded.log_scores[:, :t, :t], plain.log_scores, atol=1e-4, rtol=1e-4)
    assert is_masked(padded.log_scores[:, t:], torch.float32).all()
    assert is_masked(padded.log_scores[:, :, t:], torch.float32).all()
    torch.testing.assert_close(padded.offsets[:, :t], plain.offsets, atol=1e-5, rtol=1e-5)
    for key, value in plain.losses.items():
        torch.testing.assert_close(padded.losses[key], value, atol=1e-4, rtol=1e-4, msg=key)
    assert plain.losses["L_1"] > 0 and plain.losses["L_2"] > 0
    flat = [[x for q in model.decode(o, batch) for m in q for x in m] for o in (padded, plain)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-3)


@pytest.mark.parametrize("backbone", ["span", "proposal_map"])
def test_other_video_groups_do_not_change_a_videos_predictions(backbone: str) -> None:
    groups = tiny_groups(3)
    model = model_for(groups, small_config(backbone=backbone)).eval()  # CSM attends within a video only
    alone, together = batch_of(groups[:1], model), batch_of(groups, model)
    n, t = alone.num_queries, alone.video_feats.shape[1]
    with torch.no_grad():
        a = model(alone, compute_loss=False)
        b = model(together, compute_loss=False)
    torch.testing.assert_close(b.log_scores[:n, :t, :t], a.log_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.offsets[:n, :t], a.offsets, atol=1e-5, rtol=1e-5)
    assert a.losses == {}
