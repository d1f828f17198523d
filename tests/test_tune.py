"""Search spaces are validated against the config schema before Ray starts; trials never oversubscribe the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.job.config import ConfigError, load_config
from cluster.tune.results import TrialRow, best_trial
from cluster.tune.search import concurrent_trials, load_search, probe_jobs, with_final_validation

REPO = Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "synthetic.yaml")


def search_file(tmp_path: Path, space: str, head: str = "metric: R1@0.5\nnum_samples: 2\n") -> str:
    path = tmp_path / "search.yaml"
    path.write_text(head + "space:\n" + space)
    return str(path)


def test_the_shipped_search_space_validates() -> None:
    job = load_config(BASE)
    spec = load_search(str(REPO / "configs" / "tune" / "synthetic.yaml"), job, num_samples=3)
    assert spec.num_samples == 3 and spec.metric == "R1@0.5"
    assert {"train.lr", "model.csm.enabled", "deepspeed.zero_stage"} <= set(spec.space)
    assert spec.space["train.lr"].kind == "loguniform" and spec.space["train.lr"].bounds == (5e-4, 5e-3)
    jobs = probe_jobs(job, spec)
    assert {j.deepspeed.zero_stage for j in jobs} == {1, 2, 3}
    assert {j.model.avm.schedule for j in jobs} == {"cosine", "linear", "fixed"}
    assert any(j.model.csm.enabled is False for j in jobs)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            "  model.dropuot: {uniform: [0.0, 0.3]}\n",
            "unknown key 'model.dropuot' (did you mean 'model.dropout'?)",
        ),
        ("  model.d_model: {choice: [32, big]}\n", "space.model.d_model='big'"),
        ("  model.d_model: {uniform: [16, 64]}\n", "'model.d_model'"),  # an integer key cannot take 29.76
        ("  deepspeed.zero_stage: {choice: [2, 4]}\n", "space.deepspeed.zero_stage=4"),
        ("  train.lr: {uniform: [0.01, 0.001]}\n", "uniform needs finite low < high"),
        ("  train.lr: {loguniform: [0.0, 0.01]}\n", "loguniform needs low > 0"),
        (
            "  train.lr: {uniform: [0.001, 0.01], choice: [0.1]}\n",
            "give exactly one of choice, uniform, loguniform",
        ),
        ("  train.lr: {choice: []}\n", "'space.train.lr.choice'"),
        ("  train.lr: {normal: [0, 1]}\n", "'space.train.lr.normal'"),
        ("  cluster.num_workers: {choice: [1, 2]}\n", "are fixed for the whole search"),
        ("  data.train: {choice: [a, b]}\n", "are fixed for the whole search"),
    ],
)
def test_bad_search_spaces_are_refused_naming_the_key(tmp_path: Path, space: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_search(search_file(tmp_path, space), load_config(BASE))
    assert message in str(err.value)
    assert str(tmp_path / "search.yaml") in str(err.value)


def test_search_level_mistakes_are_refused(tmp_path: Path) -> None:
    job = load_config(BASE)
    space = "  train.lr: {choice: [0.001]}\n"
    with pytest.raises(ConfigError, match="metric 'R1@0.9' is not a validation metric"):
        load_search(search_file(tmp_path, space, "metric: R1@0.9\n"), job)
    with pytest.raises(ConfigError, match="'num_samples'"):
        load_search(search_file(tmp_path, space, "num_samples: 0\n"), job)
    with pytest.raises(ConfigError, match="--num-samples must be >= 1"):
        load_search(search_file(tmp_path, space), job, num_samples=0)
    with pytest.raises(ConfigError, match="'space'"):
        load_search(search_file(tmp_path, "", "metric: R1@0.5\n"), job)
    with pytest.raises(ConfigError, match="asha.grace_period=2 must be below train.epochs=2"):
        load_search(
            search_file(tmp_path, space, "asha: {grace_period: 2}\n"), load_config(BASE, ["train.epochs=2"])
        )
    with pytest.raises(FileNotFoundError, match="search space file not found"):
        load_search(str(tmp_path / "nope.yaml"), job)


@pytest.mark.parametrize(
    ("overrides", "resources", "expected"),
    [
        (["cluster.num_workers=1"], {"CPU": 2}, 2),
        (["cluster.num_workers=2"], {"CPU": 2}, 1),
        (["cluster.num_workers=2"], {"CPU": 7}, 3),
        (["cluster.num_workers=2", "cluster.cpus_per_worker=2"], {"CPU": 7}, 1),
        (["cluster.num_workers=2"], {"CPU": 1}, 1),  # never zero: the trials queue
        (["cluster.num_workers=1", "cluster.use_gpu=true"], {"CPU": 16, "GPU": 2}, 2),
    ],
)
def test_concurrent_trials_fit_the_cluster(overrides: list[str], resources: dict, expected: int) -> None:
    assert concurrent_trials(load_config(BASE, overrides), resources) == expected


def test_a_finished_trial_is_ranked_on_its_models_validation(tmp_path: Path) -> None:
    """A trial that finished before ASHA's stop reached it: Tune's last result is epoch 1, its model is epoch 2."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_ids = []
    for r1 in ([10.0, 40.0], [30.0, 35.0]):
        run_id = client.create_run(client.create_experiment(f"e{len(run_ids)}")).info.run_id
        for epoch, value in enumerate(r1, start=1):
            client.log_metric(run_id, "val/R1_IoU0.5", value, step=epoch * 10)
            client.log_metric(run_id, "epoch", epoch, step=epoch * 10)
        run_ids.append(run_id)
    rows = [
        TrialRow(
            "a", {"train.lr": 1e-3}, {"R1@0.5": 10.0}, 1, "finished", run_ids[0]
        ),  # Tune saw epoch 1 only
        TrialRow("b", {"train.lr": 2e-3}, {"R1@0.5": 35.0}, 2, "finished", run_ids[1]),
    ]
    assert best_trial(rows, "R1@0.5").trial_id == "b"
    final = [with_final_validation(client, row, patience=5) for row in rows]
    assert [(r.epochs, r.metrics["R1@0.5"]) for r in final] == [(2, 40.0), (2, 35.0)]
    assert final[0].values == {"train.lr": 1e-3} and final[0].run_id == run_ids[0]
    assert best_trial(final, "R1@0.5").trial_id == "a"
