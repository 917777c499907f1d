"""The multi-node local Slurm (scripts/start-slurm-multinode.sh), for tests of multi-node jobs.

Its fixtures are imported by conftest.py, so every test module can ask for them.

Its nodes are slurmds in their own network namespaces: node1, node2, ... at their own addresses on a
private bridge, so a process on node2 reaches a server on node1 only at node1's address. Clients
reach the cluster with SLURM_CONF=<its slurm.conf>; without it every Slurm command talks to the
single-node cluster, which stays the default for all other tests.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

STATE = Path(os.environ.get("SLURM_MN_STATE", "/var/lib/slurm-multinode"))
START_HINT = (
    "multi-node Slurm is not running: start it with `bash scripts/start-slurm.sh && "
    "bash scripts/start-slurm-multinode.sh`"
)


@dataclass(frozen=True)
class Node:
    name: str  # its hostname inside the namespace, and its Slurm NodeName
    address: str  # its only address besides 127.0.0.1
    netns: str  # its network namespace (`ip netns pids <netns>` lists its processes)
    slurmd_pid: int


@dataclass(frozen=True)
class MultiNodeCluster:
    slurm_conf: str
    nodes: tuple[Node, ...]

    @property
    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF pointing at this cluster (for subprocesses)."""
        return dict(os.environ, SLURM_CONF=self.slurm_conf)

    def slurm(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, squeue, ...) against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=timeout)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def processes_on(self, name: str) -> dict[int, str]:
        """{pid: command line} of every live process in the node's namespace, its slurmd excepted."""
        node = self.node(name)
        out = subprocess.run(["ip", "netns", "pids", node.netns], capture_output=True, text=True).stdout
        found = {}
        for pid in map(int, out.split()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if pid != node.slurmd_pid and state != "Z":
                found[pid] = cmdline
        return found


def _probe() -> tuple[MultiNodeCluster | None, str]:
    conf, nodes_tsv = STATE / "etc" / "slurm.conf", STATE / "nodes.tsv"
    if not conf.exists() or not nodes_tsv.exists():
        return None, f"no {conf} or {nodes_tsv}"
    nodes = []
    for line in nodes_tsv.read_text().splitlines():
        name, address, netns = line.split("\t")
        try:
            pid = int((STATE / "run" / f"slurmd-{name}.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None, f"slurmd of {name} is not running"
        nodes.append(Node(name, address, netns, pid))
    cluster = MultiNodeCluster(str(conf), tuple(nodes))
    try:
        out = cluster.slurm("sinfo", "-h", "-N", "-o", "%N %t", timeout=15)
    except subprocess.TimeoutExpired:
        return None, "sinfo timed out"
    # comp: still completing the previous test's job, it takes the next one right after
    ready = {
        line.split()[0]
        for line in out.stdout.splitlines()
        if line.split()[1:] in (["idle"], ["mix"], ["alloc"], ["comp"])
    }
    missing = [node.name for node in nodes if node.name not in ready]
    if out.returncode != 0 or missing:
        return None, f"nodes not idle: {missing or out.stderr.strip()[:200]}"
    return cluster, ""


@pytest.fixture(scope="session")
def multinode_cluster() -> MultiNodeCluster:
    """The running multi-node cluster. Skips with how to start it; with HPC_EVAL_REQUIRE_MULTINODE=1
    (set by .ci/run) it fails instead, so CI cannot skip."""
    cluster, why = _probe()
    if cluster is None:
        message = f"{START_HINT} ({why})"
        if os.environ.get("HPC_EVAL_REQUIRE_MULTINODE") == "1":
            pytest.fail(f"HPC_EVAL_REQUIRE_MULTINODE=1: {message}", pytrace=False)
        pytest.skip(message)
    return cluster


@pytest.fixture
def multinode_env(multinode_cluster, monkeypatch, tmp_path) -> MultiNodeCluster:
    """SLURM_CONF points at the multi-node cluster for this test (for submitit and the CLI, which
    run Slurm commands in-process); afterwards every job of the test (its output under tmp_path)
    is cancelled on that cluster."""
    monkeypatch.setenv("SLURM_CONF", multinode_cluster.slurm_conf)
    yield multinode_cluster
    out = multinode_cluster.slurm("squeue", "-h", "-o", "%i|%o").stdout
    ids = {line.split("|")[0].split("_")[0] for line in out.splitlines() if str(tmp_path) in line}
    if ids:
        multinode_cluster.slurm("scancel", *sorted(ids))
