"""MKTN as DeepSpeed's engine holds it (one module whose forward returns a dict of tensors), and the one
place the engine is built (`build_engine`: the training worker, `bench.zero` and `scripts/gpu_check.py`).

ZeRO-3 gathers a module's parameters in hooks around that module's `forward`, and gathers them again for
backward through hooks it attaches to the tensors the module returns. MKTN passes dataclasses between its
modules (ZeRO-3 cannot look into them, so no backward hook is attached) and reads some parameters outside
their owner's `forward`: APA has no `forward` (`APA.frames` reads `frame_queries`, `APA.prototypes` reads
`activity_queries`, both called from `MKTN.ground`), and the video encoder indexes its position table
`position.weight` instead of calling the `nn.Embedding`. So every parameter is registered with this wrapper
(`register_external_parameter`): ZeRO-3 gathers the whole model when the wrapper's forward starts and,
through the tensors of the dict it returns, again for backward. Between steps parameters, gradients and
optimizer states stay partitioned across the ranks and are checkpointed as shards; stages 0-2 ignore the
registration. State-dict keys carry the `model.` prefix (`unwrapped_state_dict` removes it).

Constraints that follow: under ZeRO-3 run MKTN only through this wrapper, so build every engine with
`build_engine` (a bare MKTN handed to `deepspeed.initialize` or built under `deepspeed.zero.Init` would read
those parameters as empty partitions, and its checkpoints would lack the `model.` prefix `export` expects); and the whole model's parameters are resident on each rank during a step, so ZeRO-3 saves the
memory of optimizer states, gradients and parameters between steps, not the parameters' peak.

Precision: a bf16/fp16 engine casts this module's parameters, not the batch; MKTN casts the batch's video
features to its parameters' dtype itself, and the total loss it returns is fp32 (checked on CPU by
`tests/test_engine_model.py`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import nn

from data_pipeline.batch import Batch
from mktn.model import MKTN, ModelOutput

PREFIX = "model."


class EngineModel(nn.Module):
    """The module handed to `deepspeed.initialize`; `output(...)` turns its dict back into a `ModelOutput`."""

    def __init__(self, model: MKTN):
        super().__init__()
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        self.model = model
        for parameter in model.parameters():
            register_external_parameter(self, parameter)

    def forward(self, batch: Batch, progress: float = 1.0, compute_loss: bool = True) -> dict[str, Any]:
        output = self.model(batch, progress=progress, compute_loss=compute_loss)
        return {f.name: getattr(output, f.name) for f in fields(output)}

    @staticmethod
    def output(values: dict[str, Any]) -> ModelOutput:
        """The `ModelOutput` of one forward pass of the engine."""
        return ModelOutput(**values)


def build_engine(model: MKTN, ds_config: dict[str, Any]) -> Any:
    """The DeepSpeed engine that trains `model` under `ds_config` (`deepspeed_config.deepspeed_config`): the
    wrapper above, with the model's trainable parameters. DeepSpeed joins the process group of this process (or
    starts one from MASTER_ADDR/RANK/WORLD_SIZE); `engine.module.model` is `model`."""
    import deepspeed  # here, not at import: the driver and inference never initialise DeepSpeed

    engine, *_ = deepspeed.initialize(
        model=EngineModel(model),
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
    )
    return engine


def unwrapped_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MKTN's own state dict from the engine's (`model.` prefix removed)."""
    return {name.removeprefix(PREFIX): tensor for name, tensor in weights.items()}
