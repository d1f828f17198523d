"""`EngineModel` in bf16, as a DeepSpeed engine with `"bf16": {"enabled": true}` holds it (cast module, fp32
batch), on CPU without DeepSpeed's engine: forward, backward and decoding work and give finite numbers."""

from __future__ import annotations

import pytest
import torch

from cluster.train.engine import EngineModel, unwrapped_state_dict
from tests.model_support import batch_of, model_for, small_config, tiny_groups


@pytest.mark.parametrize("backbone", ["span", "proposal_map"])
def test_bf16_engine_model_trains_on_an_fp32_batch(backbone: str) -> None:
    groups = tiny_groups(3)
    model = model_for(groups, small_config(backbone=backbone))
    batch = batch_of(groups, model)  # float32 features, as the loader collates them
    engine = EngineModel(model).to(torch.bfloat16)
    assert batch.video_feats.dtype == torch.float32
    output = EngineModel.output(engine(batch, progress=0.5))
    assert set(output.losses) == {"total", "L_CL", "L_1", "L_2", "L_3"}
    assert all(torch.isfinite(loss).all() for loss in output.losses.values()), output.losses
    assert output.losses["total"].dtype == torch.float32 and output.losses["total"] > 0
    output.losses["total"].backward()
    grads = [p.grad for p in engine.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)
    moments = model.decode(EngineModel.output(engine(batch, compute_loss=False)), batch)
    assert len(moments) == batch.num_queries and all(0 <= s <= e for row in moments for s, e, _ in row)


def test_state_dict_keys_lose_the_wrapper_prefix() -> None:
    groups = tiny_groups(2)
    model = model_for(groups, small_config())
    assert unwrapped_state_dict(EngineModel(model).state_dict()).keys() == model.state_dict().keys()
