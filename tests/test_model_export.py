"""A consolidated model folder (safetensors + JSON config + vocab.json) reloads and predicts from raw sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mktn import Predictor
from mktn.export import load_model, save_model
from tests.model_support import batch_of, model_for, small_config, tiny_groups


@pytest.mark.parametrize("backbone", ["span", "proposal_map"])
def test_save_load_round_trip_predicts_the_same(tmp_path: Path, backbone: str) -> None:
    groups = tiny_groups(3)
    model = model_for(groups, small_config(backbone=backbone)).eval()
    save_model(model, str(tmp_path / "m"))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    loaded = load_model(f"file://{tmp_path / 'm'}")
    assert not loaded.training and loaded.vocab.itos == model.vocab.itos
    batch = batch_of(groups, model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).log_scores, model(batch).log_scores)
    g = groups[0]
    sentences = [q.sentence for q in g.queries]
    assert Predictor(loaded).predict(g.features, sentences, g.duration) == Predictor(model).predict(
        g.features, sentences, g.duration
    )
    assert loaded.text_state()["sentence_encoder"] == {"name": "learned-bigru"}


def test_memory_fs_and_text_state(tmp_path: Path) -> None:
    groups = tiny_groups(2)
    model = model_for(groups, small_config())
    save_model(model, "memory://mktn-export-test/model")
    loaded = load_model("memory://mktn-export-test/model")
    state = loaded.text_state()
    assert state["format"] == "mktn-text-v1" and state["vocab"]["words"] == model.vocab.itos[2:]
    assert state["word_embeddings"] == {"name": "learned", "dim": 50}


def test_predict_rejects_bad_inputs() -> None:
    groups = tiny_groups(1)
    model = model_for(groups, small_config())
    g = groups[0]
    with pytest.raises(ValueError, match="positions \\[1\\]: 'sentence' is empty"):
        Predictor(model).predict(g.features, ["a person opens the door", "  "], g.duration)
    with pytest.raises(ValueError, match="duration"):
        Predictor(model).predict(g.features, ["x"], 0.0)
    with pytest.raises(ValueError, match="feature dim 4, expected"):
        Predictor(model).predict(g.features[..., :4], ["a person opens the door"], g.duration)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    groups = tiny_groups(2)
    folder = tmp_path / "m"
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        load_model(str(folder))
    save_model(model_for(groups, small_config()), str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model": config["model"] | {"d_model": 32}}))
    with pytest.raises(ValueError, match="model.safetensors does not match its config"):
        load_model(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_model(str(folder))
    (folder / "config.json").write_text(json.dumps(config | {"format": "other"}))
    with pytest.raises(ValueError, match="expected format 'mktn-model-v1'"):
        load_model(str(folder))
