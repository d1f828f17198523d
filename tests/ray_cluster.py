"""A real multi-node Ray cluster on one machine for tests: one `ray start --head` plus `ray start --address`
processes, each a separate Ray node with its own raylet, object store and custom resource.

Every process a node starts carries a marker in its environment, so teardown (and `kill_node`) finds exactly
the processes this cluster started, including those Ray re-parents, and never touches another Ray on the
machine. Token authentication (Ray >= 2.59) is on, with a random token in `RAY_AUTH_TOKEN` that the test's
own Ray clients (drivers, `ray job submit`) inherit through `env`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cluster.job.network import free_port

NODE_IP = "127.0.0.2"  # a loopback address Ray keeps as is (it rewrites 127.0.0.1 to the host's address)
_MARKER = "MKTN_TEST_RAY_NODE"


def node_port() -> int:
    """A TCP port nobody listens on right now on the node address (Ray's worker ports live in 10002-19999;
    these do not)."""
    return free_port(NODE_IP)


@dataclass
class LocalRayCluster:
    """Ray nodes as subprocesses under `root`; `env` is what every client of the cluster needs."""

    root: Path
    env: dict[str, str]
    cluster_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    gcs_port: int = field(default_factory=node_port)
    dashboard_port: int = field(default_factory=node_port)
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)  # the `ray start --block` processes
    killed: set[str] = field(default_factory=set)
    # Each node's Ray temp folder (session, sockets, runtime envs) is `<temp_dir>/<node>`, as on separate
    # machines: nodes sharing one would unpack a job's working_dir over each other's. Short, since a unix
    # socket path must fit in 107 bytes.
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="mktn-ray-", dir="/tmp"))

    @property
    def address(self) -> str:
        """GCS address for `ray.init(address=...)`, `mktn train --address` and `ray start --address`."""
        return f"{NODE_IP}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Ray Jobs API address for `ray job submit --address`."""
        return f"http://{NODE_IP}:{self.dashboard_port}"

    def start_head(self, num_cpus: int = 1) -> None:
        """`ray start --head` with `num_cpus` CPUs and a `head` resource; waits until the dashboard answers."""
        self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--dashboard-host={NODE_IP}",
                f"--dashboard-port={self.dashboard_port}",
            ],
            num_cpus,
        )
        self._wait(lambda: self._dashboard_up(), "dashboard", timeout=120)

    def add_node(self, name: str, num_cpus: int = 1) -> None:
        """`ray start --address HEAD` as node `name` (custom resource `name`); waits until the GCS lists it."""
        self._start(name, [f"--address={self.address}"], num_cpus)
        self._wait(lambda: name in self.alive_node_resources(), f"node {name}", timeout=120)

    def alive_node_resources(self) -> set[str]:
        """Custom resources of the alive nodes, i.e. their names (`head`, `node2`, ...)."""
        out = subprocess.run(
            [sys.executable, "-c", _LIST_NODES, self.address],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return set(out.stdout.split()) if out.returncode == 0 else set()

    def kill_raylet(self, name: str) -> int:
        """SIGKILL node `name`'s raylet (the node dies as on a machine crash); returns the raylet's pid."""
        raylets = [p for p in self._processes(name) if p.name() == "raylet"]
        assert len(raylets) == 1, f"expected one raylet for node {name}, found {raylets}"
        raylets[0].send_signal(signal.SIGKILL)
        self.killed.add(name)
        return raylets[0].pid

    def shutdown(self) -> None:
        """Terminate every process this cluster started (SIGTERM, then SIGKILL after 10 s)."""
        procs = self._processes(None)
        for p in procs:
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        for popen in self.nodes.values():
            popen.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _start(self, name: str, args: list[str], num_cpus: int) -> None:
        log = open(self.root / f"ray-{name}.log", "ab")  # noqa: SIM115 - the node's process owns it
        # RAY_ADDRESS: Ray's own helpers that call a bare `ray.init()` (Train's PlacementGroupCleaner) must find
        # this cluster, not another Ray running on the same machine.
        env = {**self.env, _MARKER: f"{self.cluster_id}:{name}", "RAY_ADDRESS": self.address}
        self.nodes[name] = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("ray")),
                "start",
                "--block",
                f"--node-ip-address={NODE_IP}",
                f"--num-cpus={num_cpus}",
                f'--resources={{"{name}": 1}}',
                f"--dashboard-agent-listen-port={node_port()}",
                f"--metrics-export-port={node_port()}",
                "--disable-usage-stats",
                f"--temp-dir={os.path.join(self.temp_dir, name)}",
                *args,
            ],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def _processes(self, name: str | None) -> list[psutil.Process]:
        want = f"{self.cluster_id}:{name}" if name else None
        found = []
        for p in psutil.process_iter():
            try:
                mark = p.environ().get(_MARKER, "")
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if mark == want or (want is None and mark.startswith(f"{self.cluster_id}:")):
                found.append(p)
        return found

    def api(self, path: str) -> dict:
        """GET a dashboard REST endpoint (e.g. `/api/jobs/ID`) with the cluster's token; the JSON answer."""
        token = {"authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        request = urllib.request.Request(f"{self.dashboard_url}{path}", headers=token)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def _dashboard_up(self) -> bool:
        try:
            return bool(self.api("/api/version"))
        except OSError:
            return False

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [n for n, p in self.nodes.items() if p.poll() is not None and n not in self.killed]
            if dead:
                raise RuntimeError(f"ray node(s) {dead} exited; see {self.root}/ray-*.log")
            time.sleep(1)
        raise TimeoutError(f"{what} not up within {timeout:.0f}s; see {self.root}/ray-*.log")


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


_LIST_NODES = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
for n in ray.nodes():
    if n["Alive"]:
        print(*[r for r in n["Resources"] if r not in ("CPU", "GPU", "memory", "object_store_memory")
                and not r.startswith("node:") and not r.startswith("accelerator_type:")])
"""


def cluster_env(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment plus Ray token auth (a fresh random token) and `extra`."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_raylet_start_wait_time_s": "180",  # a node's registration on a busy 2-core machine
        **extra,
    }
