"""Multi-pair vs single-pair modes, the API contract, every ablation switch of Tables 3-7, bad inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

from mktn.model import LOSS_KEYS
from tests.model_support import batch_of, model_for, small_config, tiny_groups

NO_CROSS_PAIR = {name: {"enabled": False} for name in ("csm", "avm", "opm", "apa")}


@pytest.mark.parametrize("backbone", ["span", "proposal_map"])
def test_single_and_multi_pair_identical_without_cross_pair_modules(backbone: str) -> None:
    groups = tiny_groups(4)
    multi = model_for(groups, small_config(backbone=backbone, **NO_CROSS_PAIR))
    single = model_for(groups, small_config(backbone=backbone, mode="single_pair"))
    assert single.state_dict().keys() == multi.state_dict().keys()
    single.load_state_dict(multi.state_dict())
    batch = batch_of(groups, multi)
    assert batch.num_queries > batch.num_videos  # some video has several queries
    encoded: dict[str, int] = {}
    for name, model in (("multi", multi), ("single", single)):
        model.video_encoder.register_forward_hook(
            lambda m, args, out, name=name: encoded.update({name: len(args[0])})
        )
    a, b = multi(batch), single(batch)
    assert encoded == {"multi": batch.num_videos, "single": batch.num_queries}  # encode once vs once per pair
    torch.testing.assert_close(a.log_scores, b.log_scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.offsets, b.offsets, atol=1e-6, rtol=1e-6)
    for key in LOSS_KEYS:
        torch.testing.assert_close(a.losses[key], b.losses[key], atol=1e-5, rtol=1e-5)


def test_single_pair_builds_no_cross_pair_modules_and_reports_zero_losses() -> None:
    groups = tiny_groups(3)
    model = model_for(groups, small_config(mode="single_pair"))
    assert (model.csm, model.avm, model.opm, model.apa, model.rince) == (None,) * 5
    out = model(batch_of(groups, model), progress=0.5)
    assert set(out.losses) == set(LOSS_KEYS) and out.phi == 0.0
    assert out.losses["L_CL"].item() == 0.0 and out.losses["L_1"].item() == 0.0


def test_full_model_losses_and_phi() -> None:
    groups = tiny_groups(4)
    model = model_for(
        groups, small_config(avm={"phi_init": 0.9, "phi_final": 0.95})
    )  # high phi: negatives kept
    out = model(batch_of(groups, model), progress=0.0)
    assert out.phi == pytest.approx(0.9)
    assert all(out.losses[k].item() > 0 for k in LOSS_KEYS)
    w = model.cfg.loss
    expected = (
        w.cl_weight * out.losses["L_CL"]
        + w.lambda_1 * out.losses["L_1"]
        + w.gamma * out.losses["L_2"]
        + w.mu * out.losses["L_3"]
    )
    torch.testing.assert_close(out.losses["total"], expected)  # Eq. 11
    out.losses["total"].backward()
    for module in (model.csm, model.avm, model.opm, model.apa):  # every cross-pair module gets a gradient
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


ABLATIONS = [
    {"csm": {"enabled": False}},  # Table 3
    {"avm": {"enabled": False}},
    {"opm": {"enabled": False}},
    {"apa": {"enabled": False}},
    {"csm": {"temporal_position": False}},  # Table 4
    {"csm": {"contextual_attention": False}},
    {"csm": {"word_memory": False}},
    {"csm": {"shared_words": False}},
    {"csm": {"cross_video": True, "num_layers": 2}},
    {"avm": {"visual_contrast": False}},  # Table 5
    {"avm": {"textual_contrast": False}},
    {"avm": {"schedule": "fixed"}},
    {"avm": {"schedule": "linear", "negative_selection": False, "self_weighted": False}},
    {"opm": {"appearance_prototypes": False}},  # Table 6
    {"opm": {"cross_modal_alignment": False}},
    {"apa": {"motion_prototypes": False}},  # Table 7
    {"apa": {"dynamic_alignment": False}},
    {"apa": {"frame_mask": False}},
    {"opm": {"enabled": False}, "apa": {"num_activities": 3}},  # APA over raw clip units
]


@pytest.mark.parametrize(
    "overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}.{'.'.join(v)}" for k, v in o.items())
)
def test_every_ablation_switch_changes_outputs_or_losses(overrides: dict) -> None:
    """Each switch is wired: with the full model's weights, the variant's scores or losses differ."""
    groups = tiny_groups(3, patches=3)
    full = model_for(groups, small_config())
    model = model_for(groups, small_config(**overrides))
    shared = {k: v for k, v in full.state_dict().items() if k in model.state_dict()}
    shapes = model.state_dict()
    model.load_state_dict({k: v for k, v in shared.items() if v.shape == shapes[k].shape}, strict=False)
    batch = batch_of(groups, model)
    out, reference = model(batch, progress=0.25), full(batch, progress=0.25)
    assert torch.isfinite(out.losses["total"])
    # Same weights, same batch, deterministic: any difference at all comes from the switch.
    changed = [k for k in ("L_CL", "L_1", "L_2", "L_3") if out.losses[k].item() != reference.losses[k].item()]
    if not torch.equal(out.log_scores, reference.log_scores):
        changed.append("log_scores")
    assert changed, f"{overrides} changed neither the outputs nor any loss"
    out.losses["total"].backward()
    for name in ("csm", "avm", "opm", "apa"):
        assert (getattr(model, name) is None) == (overrides.get(name, {}).get("enabled") is False)
    if model.avm is None:
        assert out.losses["L_CL"].item() == 0.0


@pytest.mark.parametrize(
    "overrides", [{}, {"opm": {"appearance_prototypes": False}}, {"opm": {"enabled": False}}]
)
def test_prototypes_without_patches(overrides: dict) -> None:
    groups = tiny_groups(3, patches=0)  # C = 0: OPM/APA aggregate over a temporal window of clips
    model = model_for(groups, small_config(**overrides))
    out = model(batch_of(groups, model))
    assert torch.isfinite(out.losses["total"]) and out.losses["L_1"].item() != 0.0
    out.losses["total"].backward()


def test_bad_batches_and_configs_are_clear_errors() -> None:
    groups = tiny_groups(2)
    model = model_for(groups, small_config())
    batch = batch_of(groups, model)
    with pytest.raises(ValueError, match="tokens/clip of dim"):
        model(dataclasses.replace(batch, video_feats=batch.video_feats[..., :8]))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        model(dataclasses.replace(batch, word_ids=batch.word_ids + 1000))
    with pytest.raises(ValueError, match="max_clips"):
        small_batch_model = model_for(groups, small_config(), max_clips=4)
        small_batch_model(batch)
    with pytest.raises(ValidationError, match="divisible by num_heads"):
        small_config(d_model=18, num_heads=4)


@pytest.mark.parametrize("backbone", ["span", "proposal_map"])
def test_bfloat16_model_trains_and_decodes(backbone: str) -> None:
    groups = tiny_groups(3)
    model = model_for(groups, small_config(backbone=backbone)).to(
        torch.bfloat16
    )  # as a bf16 DeepSpeed engine holds it
    batch = batch_of(groups, model)
    out = model(batch)
    assert out.log_scores.dtype == torch.bfloat16
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.losses["total"].backward()
    for moments in model.decode(out, batch):
        assert moments and all(0 <= s <= e for s, e, _ in moments)
