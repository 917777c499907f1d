"""Shared test fixtures.

The rule for every fixture here: replace only what cannot exist on a development or CI machine,
and only at a process boundary. Slurm is real (scripts/start-slurm.sh); the model server is a
stub HTTP server (scripts/fake_openai.py); the docker daemon is real but private
(scripts/start-docker.sh, reached through DOCKER_HOST); counters wrap real commands and still run them. The parts
benchmarks share live in tests/support/; the fixtures here wrap them.

Sections (others may add their own below, in clearly named fixtures):
  * session set-up          pytest_configure
  * the local Slurm         slurm_cluster (+ the `slurm` marker uses it automatically)
  * the stub model server   start_stub (factory), stub_server
  * the private dockerd     real_docker
  * command counters        count_calls (factory), count_sbatch
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpc_eval.slurm import max_array_size
from multinode_helpers import multinode_cluster, multinode_env  # noqa: F401  (fixtures for every module)
from support import stub as stub_lib
from support.commands import CallCounter, write_counter
from support.stub import StubServer

START_SLURM_HINT = "local Slurm is not running: start it with `bash scripts/start-slurm.sh`"


# ------------------------------------------------------------------------- session set-up
def pytest_configure(config):
    """Runs before any test module (and so the launcher) is imported.

    The launcher reads NEMO_EVALUATOR_EXEC_DB_FILE and the telemetry level at import time.
    Tests must neither send telemetry nor write into the user's ~/.nemo-evaluator exec DB.
    HOME is left alone on purpose: Slurm jobs inherit the environment, and a moved HOME
    changes where docker, pip and the launcher look for their own files.
    """
    os.environ["NEMO_EVALUATOR_TELEMETRY_LEVEL"] = "0"
    session_dir = tempfile.mkdtemp(prefix="hpc-eval-tests-")
    config._hpc_eval_session_dir = session_dir
    os.environ["NEMO_EVALUATOR_EXEC_DB_FILE"] = os.path.join(session_dir, "exec-db.v1.jsonl")
    os.environ["XDG_CACHE_HOME"] = os.path.join(session_dir, "cache")  # hpc-eval's task catalogue cache
    config.addinivalue_line("markers", "slurm: needs the real local Slurm (scripts/start-slurm.sh)")
    config.addinivalue_line("markers", "multinode: needs the multi-node Slurm (scripts/start-slurm-multinode.sh)")
    config.addinivalue_line("markers", "slow: end-to-end tests that run a real evaluation (still run in CI)")


def pytest_unconfigure(config):
    session_dir = getattr(config, "_hpc_eval_session_dir", None)
    if session_dir:
        shutil.rmtree(session_dir, ignore_errors=True)


# ------------------------------------------------------------------------- the local Slurm
@dataclass(frozen=True)
class SlurmCluster:
    """What the running local cluster offers (read from Slurm itself)."""

    node: str
    cpus: int
    gpus: int
    max_array_size: int
    partitions: tuple[str, ...]


def _run_quietly(argv: list[str], timeout: float = 15.0) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


def _probe_slurm() -> tuple[SlurmCluster | None, str]:
    """(cluster, "") when the local Slurm answers and can run jobs, else (None, why not)."""
    for command in ("sinfo", "sbatch", "sacct", "scontrol"):
        if shutil.which(command) is None:
            return None, f"`{command}` is not on PATH"
    rc, out = _run_quietly(["sinfo", "-h", "-N", "-o", "%N|%t|%c|%G|%P"])
    if rc != 0:
        return None, f"sinfo failed: {out.strip()[:300]}"
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 4]
    if not rows:
        return None, "sinfo lists no node"
    states = {row[1] for row in rows}
    if not states & {"idle", "mix", "alloc"}:
        return None, f"node state is {', '.join(sorted(states))}, not idle/mix/alloc"
    rc, out = _run_quietly(["sacct", "-n", "-X", "-o", "JobID"])
    if rc != 0:
        return None, f"sacct failed (no accounting?): {out.strip()[:300]}"
    gpus = 0
    for gres in rows[0][3].split(","):
        gpu = re.match(r"gpu(?::[^:(]+)?:(\d+)", gres)
        if gpu:
            gpus += int(gpu.group(1))
    return (
        SlurmCluster(
            node=rows[0][0],
            cpus=int(rows[0][2]),
            gpus=gpus,
            max_array_size=max_array_size(),
            partitions=tuple(dict.fromkeys(row[4].rstrip("*") for row in rows)),
        ),
        "",
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The real local Slurm cluster. Skips the test when it is not running, with how to start
    it; with HPC_EVAL_REQUIRE_SLURM=1 (set by .ci/run) it fails instead, so CI cannot skip."""
    cluster, why = _probe_slurm()
    if cluster is None:
        message = f"{START_SLURM_HINT} ({why})"
        if os.environ.get("HPC_EVAL_REQUIRE_SLURM") == "1":
            pytest.fail(f"HPC_EVAL_REQUIRE_SLURM=1: {message}", pytrace=False)
        pytest.skip(message)
    return cluster


@pytest.fixture(autouse=True)
def _slurm_marker_uses_slurm_cluster(request):
    """Every test marked @pytest.mark.slurm gets the slurm_cluster check (skip or fail), and
    leaves no job in the queue: afterwards, every job whose stdout lies under its tmp_path is
    cancelled."""
    if request.node.get_closest_marker("slurm") is None:
        yield
        return
    request.getfixturevalue("slurm_cluster")
    tmp_path = request.getfixturevalue("tmp_path")
    yield
    out = subprocess.run(["squeue", "-h", "-o", "%i|%o"], capture_output=True, text=True).stdout
    ids = {line.split("|")[0].split("_")[0] for line in out.splitlines() if str(tmp_path) in line}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False)


# ------------------------------------------------------------------------- stub model server
@pytest.fixture
def start_stub(tmp_path):
    """Factory: start_stub(reply=None, delay_s=None, model_id=None) -> StubServer.

    Each call starts scripts/fake_openai.py on a free port of 127.0.0.1 (support/stub.py); all
    are stopped (SIGTERM by PID) after the test."""
    started: list[StubServer] = []

    def start(reply: str | None = None, delay_s: float | None = None, model_id: str | None = None) -> StubServer:
        stub = stub_lib.start_stub(tmp_path, f"stub-{len(started)}", reply, delay_s, model_id)
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stub.stop()


@pytest.fixture
def stub_server(start_stub) -> StubServer:
    """One stub model server with the default reply."""
    return start_stub()


# ------------------------------------------------------------------------- the private docker daemon
DOCKER_DIR = Path(os.environ.get("HPC_EVAL_DOCKER_DIR", "/var/tmp/hpc-eval-docker"))
TEST_IMAGE = "nvcr.io/nvidia/eval-factory/bfcl:26.03"  # the launcher's catalogue name for bfcl
START_DOCKER_HINT = (
    "the private docker daemon is not running or the test image is missing: "
    "`bash scripts/start-docker.sh && bash scripts/build-test-image.sh` (as root)"
)


@dataclass(frozen=True)
class RealDocker:
    """The real dockerd of scripts/start-docker.sh, reached through DOCKER_HOST (never the
    default socket: nothing else on the machine must see it)."""

    host: str
    image: str

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", *args],
            env=dict(os.environ, DOCKER_HOST=self.host),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def containers_using(self, path: Path) -> dict[str, str]:
        """Name -> state of every container (running or not) with a bind mount under `path`:
        other sessions share the daemon, so a test counts only its own containers."""
        ids = self.docker("ps", "-aq").stdout.split()
        if not ids:
            return {}
        found = {}
        for info in json.loads(self.docker("inspect", *ids).stdout or "[]"):
            if any(str(m.get("Source", "")).startswith(str(path)) for m in info.get("Mounts", [])):
                found[info["Name"].lstrip("/")] = info["State"]["Status"]
        return found


def _probe_docker(host: str) -> str:
    """Why the daemon cannot serve the tests ("" when it answers and holds the test image)."""
    if shutil.which("docker") is None:
        return "`docker` is not on PATH"
    env = dict(os.environ, DOCKER_HOST=host)
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], env=env, capture_output=True, text=True, timeout=10
        )
        image = subprocess.run(
            ["docker", "image", "inspect", TEST_IMAGE], env=env, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if info.returncode != 0:
        return f"no daemon at {host}: {(info.stderr or info.stdout).strip()[:200]}"
    if image.returncode != 0:
        return f"no image {TEST_IMAGE}"
    return ""


@pytest.fixture(scope="session")
def _docker_daemon() -> RealDocker:
    host = f"unix://{DOCKER_DIR / 'docker.sock'}"
    why = _probe_docker(host)
    if why:
        message = f"{START_DOCKER_HINT} ({why})"
        if os.environ.get("HPC_EVAL_REQUIRE_DOCKER") == "1":
            pytest.fail(f"HPC_EVAL_REQUIRE_DOCKER=1: {message}", pytrace=False)
        pytest.skip(message)
    return RealDocker(host=host, image=TEST_IMAGE)


@pytest.fixture
def real_docker(_docker_daemon, monkeypatch) -> RealDocker:
    """The real private dockerd for this test: DOCKER_HOST is set in os.environ, so in-process
    code, the CLI and Slurm jobs (which inherit the environment) all reach it. Skips when it is
    not running, with how to start it; with HPC_EVAL_REQUIRE_DOCKER=1 (.ci/run) it fails."""
    monkeypatch.setenv("DOCKER_HOST", _docker_daemon.host)
    return _docker_daemon


# ------------------------------------------------------------------------- command counters
@pytest.fixture
def count_calls(tmp_path, monkeypatch):
    """Factory: count_calls("sacct") -> CallCounter (support/commands.py).

    Puts a wrapper named like the command first on PATH (os.environ, via monkeypatch, so
    in-process code such as submitit sees it; `.env` has the PATH for subprocess envs)."""
    bin_dir = tmp_path / "counted-bin"
    counters: dict[str, CallCounter] = {}

    def count(command: str) -> CallCounter:
        if command not in counters:
            counters[command] = write_counter(command, bin_dir, tmp_path / f"calls-{command}.txt")
            monkeypatch.setenv("PATH", counters[command].env["PATH"])
        return counters[command]

    return count


@pytest.fixture
def count_sbatch(count_calls) -> CallCounter:
    """Counts real `sbatch` calls (see count_calls)."""
    return count_calls("sbatch")


# ---------------------------------------------------------------- api keys by name
@pytest.fixture(autouse=True)
def api_keys_present(monkeypatch):
    """The configs here name these api keys; submit refuses one the submitting environment lacks
    (the launcher would, on the node). A test of a missing key deletes it."""
    for name in ("NVIDIA_API_KEY", "SOME_KEY"):
        monkeypatch.setenv(name, os.environ.get(name, "not-a-real-key"))
