"""Ray Train checkpoints on an S3 server through `cluster.job.storage.pyarrow_filesystem`, and resume from them."""

from __future__ import annotations

import json
import os
import tempfile

import boto3
import pytest

from cluster.job.storage import pyarrow_filesystem

pytest_plugins = ["tests.s3_server"]  # the s3_server / s3_bucket fixtures


def _count_loop(config: dict) -> None:
    """Counts steps from the restored checkpoint (if any) and checkpoints after each one."""
    import ray.train

    done = 0
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as d, open(os.path.join(d, "state.json")) as f:
            done = json.load(f)["step"]
    for step in range(done + 1, done + 1 + config["steps"]):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"step": step}, f)
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(d))


@pytest.fixture
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow  # 1.5-5 min on 2 cores; the default suite keeps the fast S3 tests of test_storage.py
def test_ray_train_checkpoints_on_s3_and_resumes(s3_bucket, ray_local):
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, path = pyarrow_filesystem(f"{s3_bucket}/runs/r1/ray")

    def fit(steps: int):
        run = RunConfig(
            name="job",
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        )
        trainer = TorchTrainer(
            _count_loop,
            train_loop_config={"steps": steps},
            scaling_config=ScalingConfig(num_workers=1),
            run_config=run,
        )
        return trainer.fit()

    first = fit(2)
    assert first.metrics["step"] == 2
    second = fit(1)  # same name + storage: Ray restores the latest checkpoint from the bucket
    assert second.metrics["step"] == 3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket[5:])["Contents"]]
    states = sorted(k for k in keys if k.endswith("state.json"))
    assert len(states) == 2 and all(k.startswith("runs/r1/ray/job/checkpoint_") for k in states)
    assert second.checkpoint.path.startswith(f"{s3_bucket[5:]}/runs/r1/ray/job/checkpoint_")
