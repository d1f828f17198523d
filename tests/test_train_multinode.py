"""`mktn train --address` on a real two-node Ray cluster on loopback: `ray start --head` plus `ray start --address`,
each node with 1 CPU and its own raylet, token authentication on. The 2 workers must land on both nodes.
Slow (two Ray nodes on 2 cores); run it with `make test-slow` or
`pytest -m slow tests/test_train_multinode.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ray_cluster import LocalRayCluster, cluster_env
from tests.train_jobs import MlflowRun, audit, run, tiny_dataset, train_args

pytestmark = pytest.mark.slow


def test_training_across_two_ray_nodes(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    env = cluster_env({})
    cluster = LocalRayCluster(root=tmp_path, env=env)
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node("node2", num_cpus=1)
        out = tmp_path / "run"
        auth = {key: env[key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        args = train_args(out, data, "cluster.num_workers=2", "train.epochs=2", "deepspeed.zero_stage=2")
        run([*args, "--address", cluster.address], tmp_path / "train.log", **auth)
    finally:
        cluster.shutdown()
    lines = audit(out)
    assert len({x["node"] for x in lines}) == 2  # rank 0 and rank 1 on different Ray nodes
    assert {x["node"] for x in lines if x["rank"] == 0} != {x["node"] for x in lines if x["rank"] == 1}
    mlflow = MlflowRun(out)
    assert mlflow.run.info.status == "FINISHED" and mlflow.run.data.tags["world_size"] == "2"
    assert mlflow.steps("train/loss") == list(range(1, max(x["step"] for x in lines) + 1))
    assert (out / "model" / "model.safetensors").exists()
