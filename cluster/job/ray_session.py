"""Start a local Ray or join a running cluster, after checking that the job fits what it offers.

`ray_session(address, check)` joins the cluster at `address` (else `RAY_ADDRESS`: `auto`, `host:6379`,
`ray://host:10001`), or the one this process already joined; without one it starts a Ray of its own with
this machine's CPUs and GPUs (`address="local"`: a new one even where `ray start` left a cluster that a bare
`ray.init()` would join). `check(resources)` gets the total CPU/GPU counts on offer: the cluster's, or before
a local Ray starts, this machine's, so a job that cannot run fails before any Ray process exists. A Ray the
session started is shut down when the block ends; a joined one keeps running.

A local Ray fixes its GCS port before it starts and passes `RAY_ADDRESS` to every process it runs: Ray
Train's placement-group cleaner finds its cluster through the state API, and with another Ray instance on
the machine it cannot tell which is its own and gives up, so the CPUs of a trial that ASHA stopped stayed
reserved until the search ended.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cluster.job.network import free_port


@contextmanager
def ray_session(address: str | None, check: Callable[[dict[str, float]], None]) -> Iterator[None]:
    """Ray, joined or started for the block (see the module docstring); `check` runs before any start."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized() or address:
        if not ray.is_initialized():
            ray.init(address=address, logging_level=logging.WARNING)
        check(ray.cluster_resources())
        yield
        return
    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    check({"CPU": cpus, "GPU": gpus})
    _start_local(cpus, gpus)
    try:
        yield
    finally:
        ray.shutdown()


def _start_local(cpus: int, gpus: int) -> None:
    """A local Ray whose every process knows its address (`RAY_ADDRESS`)."""
    import ray

    port = free_port("")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=gpus,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"RAY_ADDRESS": f"{ray.util.get_node_ip_address()}:{port}"}},
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
