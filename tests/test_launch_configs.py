"""The cluster launch configs in cluster/launch/ parse, pass Ray's own validation, and name commands, configs
and config keys that exist, so what a user edits is what runs."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from cluster.cli import build_parser
from cluster.job.config import JobConfig, load_config
from cluster.job.storage import is_local
from cluster.train.deepspeed_config import deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "cluster" / "launch"


def _yaml(name: str) -> dict:
    return yaml.safe_load((LAUNCH / name).read_text())


def _job_of(entrypoint: str) -> tuple[JobConfig, str]:
    """Parse an entrypoint with the real `mktn` parser; returns the job it trains and its --output."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "mktn", entrypoint
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train"
    assert (ROOT / args.config).is_file(), f"{args.config} does not exist"
    return load_config(str(ROOT / args.config), args.overrides), args.output


def _check_shared_job(job: JobConfig, output: str) -> None:
    """A multi-node job: GPUs; shards and checkpoints on shared storage (no node-local disk). Checkpoints go to
    cluster.storage_path, else to <output>/ray."""
    assert job.cluster.use_gpu and job.cluster.gpus_per_worker == 1
    for url in (job.data.train, job.data.val, job.cluster.storage_path or f"{output}/ray"):
        assert url and not is_local(url), f"{url} is on a node's local disk"


@pytest.fixture(scope="module")
def cluster_yaml() -> dict:
    return _yaml("ray-cluster-gpu.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return _yaml("rayjob.yaml")


def test_ray_cluster_yaml_passes_ray_up_validation(cluster_yaml):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster_yaml))  # what `ray up` does before touching the cloud
    validate_config(prepared)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "training workers must not land on the head"
    for command in prepared["head_start_ray_commands"][1:] + prepared["worker_start_ray_commands"][1:]:
        assert ". /home/ray/mktn.env" in command, "each node must load the shared auth token before ray start"
    assert "/home/ray/mktn.env" in prepared["file_mounts"]


def test_ray_cluster_yaml_job_is_a_valid_mktn_train(cluster_yaml):
    job_spec = cluster_yaml["metadata"]["mktn"]
    _check_shared_job(*_job_of(job_spec["entrypoint"]))
    assert (ROOT / job_spec["runtime_env"]).is_file()


def test_runtime_env_is_valid_for_ray_jobs():
    from ray.runtime_env import RuntimeEnv

    spec = _yaml("runtime_env.yaml")
    env = RuntimeEnv(**spec)  # Ray's own validation of the fields
    assert env["working_dir"] == "."
    assert all(isinstance(v, str) for v in spec["env_vars"].values()), "env var values must be strings"
    assert spec["env_vars"]["DS_ACCELERATOR"] == "cuda"


def test_rayjob_manifest(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    job, output = _job_of(spec["entrypoint"])
    _check_shared_job(job, output)
    assert not is_local(output), (
        "a RayJob's head pod goes away with the job: its run folder must be in the bucket"
    )
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    # The same environment as a `ray job submit` of the VM cluster, minus the working_dir upload.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env == {"env_vars": _yaml("runtime_env.yaml")["env_vars"]}

    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    gpus_per_pod = int(limits["nvidia.com/gpu"])
    assert group["replicas"] * gpus_per_pod >= job.cluster.num_workers * job.cluster.gpus_per_worker
    assert float(limits["cpu"]) >= job.cluster.cpus_per_worker * job.cluster.num_workers / group["replicas"]
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


def test_every_launch_config_runs_the_same_image(cluster_yaml, rayjob):
    image = cluster_yaml["docker"]["image"]
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    assert {c["image"] for p in pods for c in p["template"]["spec"]["containers"]} == {image}


def test_dockerfile_builds_from_this_ray_and_copies_existing_paths():
    text = (LAUNCH / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311-")
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"


@pytest.mark.parametrize("name", ["gpu.yaml", "large_zero3_offload.yaml"])
def test_gpu_configs_validate_and_give_gpu_deepspeed_settings(name):
    job = load_config(str(ROOT / "configs" / name))
    assert job.cluster.use_gpu and job.cluster.gpus_per_worker == 1
    ds = deepspeed_config(job, job.cluster.num_workers, optimizer_steps=100)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert "torch_adam" not in ds["optimizer"]["params"], "GPUs use DeepSpeed's fused Adam"
    if name == "large_zero3_offload.yaml":
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
