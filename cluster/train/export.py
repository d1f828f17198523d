"""A training checkpoint -> one consolidated fp32 model that loads without DeepSpeed or Ray.

ZeRO stages 1-3 keep the fp32 master weights sharded across the ranks' optimizer files; DeepSpeed's
`zero_to_fp32` merges them (ZeRO-3 included) into one state dict. Stage 0 saves the whole module on
rank 0. The model is rebuilt from the checkpoint's own config, vocabulary/text-encoder identity and
feature spec, the merged weights are loaded strictly (every tensor must match), and the result is
written in the `mktn.export` folder format.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cluster.job.config import JobConfig
from cluster.train import checkpoint
from cluster.train.engine import unwrapped_state_dict
from data_pipeline.text import Vocab
from mktn.export import save_model
from mktn.model import MKTN


def consolidated_state_dict(directory: str) -> dict[str, torch.Tensor]:
    """MKTN's full fp32 weights from the checkpoint at `directory`, whatever the ZeRO stage it trained under."""
    state = checkpoint.TrainState.read(directory)
    with checkpoint.safe_torch_load():
        if state.zero_stage == 0:
            path = Path(directory, checkpoint.DS_TAG, "mp_rank_00_model_states.pt")
            weights = torch.load(path, map_location="cpu", weights_only=True)["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            weights = get_fp32_state_dict_from_zero_checkpoint(directory, tag=checkpoint.DS_TAG)
    return {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in unwrapped_state_dict(weights).items()
    }


def model_from_checkpoint(directory: str) -> MKTN:
    """The trained model of the checkpoint at `directory`, in eval mode, on CPU."""
    job = JobConfig.model_validate(checkpoint.read_json(directory, "job.json"))
    text = checkpoint.read_json(directory, "text_state.json")
    features = checkpoint.read_json(directory, "features.json")
    vocab = Vocab.from_json(json.dumps(text["vocab"]), source=f"{directory}/text_state.json")
    model = MKTN(
        job.model,
        vocab,
        features["feature_dim"],
        features["tokens_per_clip"],
        features["max_clips"],
        saved_text=text,
    )
    model.load_state_dict(consolidated_state_dict(directory), strict=True)
    return model.eval()


def export_checkpoint(directory: str, out: str) -> str:
    """Write the checkpoint at `directory` as a standalone model folder at `out`; returns `out`."""
    save_model(model_from_checkpoint(directory), out)
    return out
