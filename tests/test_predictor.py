"""`Predictor`, the Python API (`from mktn import Predictor`): every source `mktn predict` takes loads the same
trained model with its run's data settings, features come as an array or a `.npy` path, and bad input is a
ValueError naming it. The trained model is the default suite's shared run (`trained_run`)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from cluster.serve.registry import register
from data_pipeline.synthetic import generate
from data_pipeline.text import Vocab
from mktn import Predictor
from mktn.config import ModelConfig
from mktn.model import build_model
from tests.train_jobs import FaultedRun


def test_every_source_loads_the_same_model_with_its_runs_settings(
    trained_run: FaultedRun, tmp_path: Path
) -> None:
    out = trained_run.output
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    registered = register(str(out), "mktn-predictor-test", "champion")  # into the run's own registry
    final = sorted((out / "ray" / "train").glob("checkpoint_epoch*"))[-1]
    sources = [str(out), str(final), str(out / "model"), f"runs:/{run_id}/model", registered.uri]
    predictors = [Predictor.load(source, tracking_uri=uri) for source in sources]
    video = generate(1, seed=3)[0]
    sentences = [q.sentence for q in video.queries]
    expected = predictors[0].predict(video.features, sentences, video.duration)
    assert len(expected) == len(sentences) and all(len(m) == 5 for m in expected)
    for source, predictor in zip(sources, predictors):
        assert predictor.predict(video.features, sentences, video.duration) == expected, source
    # the run's batch budget (tests.train_jobs.TINY) travels with the run folder, its checkpoints and the
    # registered model; a bare model folder (also as a run's artifact) gets the defaults
    budgets = {s: p.budget.max_videos for s, p in zip(sources, predictors)}
    assert budgets == {str(out): 4, str(final): 4, str(out / "model"): 16, sources[3]: 16, registered.uri: 4}
    assert {p.run_id for p in predictors} == {run_id, None}
    np.save(tmp_path / "video.npy", video.features)
    assert predictors[0].predict(tmp_path / "video.npy", sentences, video.duration) == expected
    assert predictors[0].predict(str(tmp_path / "video.npy"), sentences, video.duration, top_k=2) == [
        m[:2] for m in expected
    ]


def test_bad_input_is_a_value_error_naming_it(tmp_path: Path) -> None:
    video = generate(1, seed=3)[0]  # features of dim 64
    predictor = Predictor(build_model(ModelConfig(d_model=16, num_heads=2), Vocab.build(["door"]), 64, 5, 16))
    with pytest.raises(ValueError, match="a list of strings, got one string"):
        predictor.predict(video.features, "one sentence", video.duration)
    with pytest.raises(ValueError, match=r"positions \[0, 2\]: 'sentence' is empty"):
        predictor.predict(video.features, [" ", "person opens the door", ""], video.duration)
    with pytest.raises(ValueError, match="'duration' must be > 0 seconds"):
        predictor.predict(video.features, ["person opens the door"], 0.0)
    with pytest.raises(ValueError, match="feature dim 8, expected 64"):
        predictor.predict(video.features[..., :8], ["person opens the door"], video.duration)
    with pytest.raises(FileNotFoundError, match="missing.npy: features file not found"):
        predictor.predict(tmp_path / "missing.npy", ["person opens the door"], video.duration)
    (tmp_path / "pickled.npy").write_bytes(pickle.dumps(video.features))
    with pytest.raises(ValueError, match="refusing a pickled"):
        predictor.predict(tmp_path / "pickled.npy", ["person opens the door"], video.duration)
