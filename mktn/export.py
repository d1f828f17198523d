"""A consolidated model in one folder: `model.safetensors` + `config.json` + `vocab.json`.

Loading needs only PyTorch, safetensors and this package (no DeepSpeed, no Ray, nothing unpickled).
The folder is any fsspec URL. `config.json` holds the model config, the feature shape the model was
built for, and the text encoder's identity (GloVe / MiniLM package and version): with the vocabulary
that is everything needed to predict from raw sentences.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from data_pipeline.text import Vocab
from mktn.config import ModelConfig
from mktn.model import MKTN

FORMAT = "mktn-model-v1"
WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"


def model_config(model: MKTN) -> dict[str, Any]:
    """The JSON-able description `load_model` rebuilds the model from."""
    return {
        "format": FORMAT,
        "model": model.cfg.model_dump(mode="json"),
        "feature_dim": model.feature_dim,
        "tokens_per_clip": model.tokens_per_clip,
        "max_clips": model.max_clips,
        "text": model.text_encoder.identity(),
    }


def save_model(model: MKTN, folder: str) -> None:
    """Write `model` (weights on CPU, contiguous) to `folder`, creating it."""
    fs, root = fsspec.core.url_to_fs(folder)
    fs.makedirs(root, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with fs.open(f"{root}/{WEIGHTS}", "wb") as f:
        f.write(save_safetensors(tensors, metadata={"format": FORMAT}))
    with fs.open(f"{root}/{CONFIG}", "w") as f:
        json.dump(model_config(model), f, indent=2)
    with fs.open(f"{root}/{VOCAB}", "w") as f:
        f.write(model.vocab.to_json())


def load_model(folder: str) -> MKTN:
    """The model saved by `save_model` in `folder`, in eval mode on CPU."""
    fs, root = fsspec.core.url_to_fs(folder)
    for name in (WEIGHTS, CONFIG, VOCAB):
        if not fs.exists(f"{root}/{name}"):
            raise FileNotFoundError(
                f"{folder}: missing {name} (expected a folder written by mktn.export.save_model)"
            )
    with fs.open(f"{root}/{CONFIG}", "r") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{folder}/{CONFIG}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{folder}/{CONFIG}: expected format {FORMAT!r}")
    missing = [k for k in ("model", "feature_dim", "tokens_per_clip", "max_clips", "text") if k not in meta]
    if missing:
        raise ValueError(f"{folder}/{CONFIG}: missing keys {missing}")
    with fs.open(f"{root}/{VOCAB}", "r") as f:
        vocab = Vocab.from_json(f.read(), source=f"{folder}/{VOCAB}")
    model = MKTN(
        ModelConfig.model_validate(meta["model"]),
        vocab,
        meta["feature_dim"],
        meta["tokens_per_clip"],
        meta["max_clips"],
        saved_text=meta["text"],
    )
    with fs.open(f"{root}/{WEIGHTS}", "rb") as f:
        state = load_safetensors(f.read())
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        resized = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
        raise ValueError(
            f"{folder}/{WEIGHTS} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shape {resized[:5]}"
        )
    model.load_state_dict(state)
    return model.eval()
