"""The multi-node local Slurm itself (scripts/start-slurm-multinode.sh): the sbatch-level facts that
multi-node evaluations build on. Each node is a slurmd in its own network namespace, so these
tests show real nodes: own hostnames and addresses, a server on one node reached from another
only over the network, cancellation reaching every node, and what submitit does with nodes=2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from multinode_helpers import MultiNodeCluster


def on_multinode(test):
    return pytest.mark.slurm(pytest.mark.multinode(test))


def sbatch_wait(cluster: MultiNodeCluster, script: str, tmp_path, *args: str) -> str:
    """Submit `script` with sbatch --wait on the multi-node cluster; return the job's stdout."""
    path, out = tmp_path / "job.sh", tmp_path / "job.out"
    path.write_text("#!/bin/bash\n" + script)
    proc = cluster.slurm("sbatch", "--wait", "--time=3", "-o", str(out), *args, str(path), timeout=180)
    text = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n--- job output ---\n{text}"
    return text


@on_multinode
def test_two_node_job_runs_a_step_on_each_node_with_its_own_hostname_address_and_gpus(multinode_env, tmp_path):
    out = sbatch_wait(
        multinode_env,
        """
scontrol show hostnames "$SLURM_JOB_NODELIST" | sed 's/^/nodelist /'
srun --ntasks-per-node=1 bash -c 'echo "step $SLURM_PROCID $(hostname) $(hostname -I) gpus=$CUDA_VISIBLE_DEVICES"'
""",
        tmp_path,
        "--nodes=2",
        "--gpus-per-node=2",
    )
    nodes = {node.name: node.address for node in multinode_env.nodes[:2]}
    assert [line.split()[1] for line in out.splitlines() if line.startswith("nodelist ")] == list(nodes), out
    steps = sorted(line.split()[1:] for line in out.splitlines() if line.startswith("step "))
    assert steps == [["0", "node1", nodes["node1"], "gpus=0,1"], ["1", "node2", nodes["node2"], "gpus=0,1"]], out


@on_multinode
def test_a_server_on_node1_is_reached_from_node2_only_at_node1s_address(multinode_env, tmp_path):
    node1, node2 = multinode_env.nodes[:2]
    (tmp_path / "hello.txt").write_text("from node1\n")
    client = f"""
import sys, time, urllib.request
def get(host):
    return urllib.request.urlopen(f"http://{{host}}:8731/hello.txt", timeout=5).read().decode().strip()
for _ in range(120):  # until the server on node1 listens
    try:
        print("by address:", get("{node1.address}")); break
    except OSError:
        time.sleep(0.5)
print("by name:", get("node1"))
try:
    get("127.0.0.1")
    print("loopback: answered")
except OSError as exc:
    print("loopback: refused")
"""
    (tmp_path / "client.py").write_text(client)
    out = sbatch_wait(
        multinode_env,
        f"""
cd {tmp_path}
srun --nodes=1 --ntasks=1 -w node1 python3 -m http.server --bind 0.0.0.0 8731 2> server.log &
srun --nodes=1 --ntasks=1 -w node2 python3 client.py
kill %1
""",
        tmp_path,
        "--nodes=2",
    )
    assert "by address: from node1" in out and "by name: from node1" in out, out
    # 127.0.0.1 on node2 is node2's own: the server that runs only on node1 is not there
    assert "loopback: refused" in out, out
    assert f"{node2.address} - -" in (tmp_path / "server.log").read_text()


@on_multinode
def test_scancel_of_a_two_node_job_leaves_no_process_on_either_node(multinode_env, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(
        f"#!/bin/bash\nsrun --ntasks-per-node=1 bash -c 'touch {tmp_path}/up.$SLURM_NODEID; exec sleep 600'\n"
    )
    proc = multinode_env.slurm("sbatch", "--parsable", "--nodes=2", "-o", str(tmp_path / "job.out"), str(script))
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 90
    while not all((tmp_path / f"up.{i}").exists() for i in (0, 1)):
        assert time.monotonic() < deadline, (tmp_path / "job.out").read_text()
        time.sleep(0.3)
    for node in ("node1", "node2"):
        assert any(cmd == "sleep 600" for cmd in multinode_env.processes_on(node).values()), node

    assert multinode_env.slurm("scancel", job_id).returncode == 0
    deadline = time.monotonic() + 30  # KillWait is 5 s
    left = {}
    while time.monotonic() < deadline:
        left = {node.name: multinode_env.processes_on(node.name) for node in multinode_env.nodes}
        if not any(left.values()) and not multinode_env.slurm("squeue", "-h", "-j", job_id).stdout.strip():
            break
        time.sleep(0.5)
    assert not any(left.values()), left


@on_multinode
def test_submitit_with_two_nodes_runs_the_function_once_per_node(multinode_env, tmp_path):
    def where() -> dict:
        env = submitit.JobEnvironment()
        return {
            "host": socket.gethostname(),
            "global_rank": env.global_rank,
            "num_tasks": env.num_tasks,
            **{
                key: os.environ.get(key)
                for key in ("SLURM_PROCID", "SLURM_NODEID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST")
            },
        }

    executor = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(nodes=2, ntasks_per_node=1, time=3, gpus_per_node=1)
    job = executor.submit(where)
    results = job.results()  # one result per task (submitit writes <id>_<task>_result.pkl for each)

    assert [(r["SLURM_PROCID"], r["SLURM_NODEID"], r["host"]) for r in results] == [
        ("0", "0", "node1"),
        ("1", "1", "node2"),
    ], results
    assert all(r["SLURM_NTASKS"] == "2" and r["num_tasks"] == 2 and r["SLURM_LOCALID"] == "0" for r in results)
    assert all(r["SLURM_JOB_NODELIST"] == "node[1-2]" for r in results), results
    assert job.task(0).result() == results[0]
    with pytest.raises(AssertionError, match=r"use `results\(\)`"):
        job.result()  # submitit refuses result() on a job with more than one task
    deadline = time.monotonic() + 60  # sacct (what submitit reads states with) lags the job by a few s
    while (state := job.watcher.get_state(job.job_id, mode="force")) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state == "COMPLETED"
    batch_script = (tmp_path / "submitit" / f"{job.job_id}_submission.sh").read_text()
    assert "#SBATCH --nodes=2" in batch_script and "\nsrun " in batch_script


@pytest.mark.parametrize("require", ["", "1"])
def test_multinode_fixture_skips_without_the_cluster_but_fails_in_ci(tmp_path, require):
    """Run one multinode test in a child pytest that looks for the cluster in an empty state dir."""
    env = dict(os.environ, SLURM_MN_STATE=str(tmp_path / "none"), HPC_EVAL_REQUIRE_MULTINODE=require)
    target = f"{Path(__file__).name}::test_scancel_of_a_two_node_job_leaves_no_process_on_either_node"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", target],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        "multi-node Slurm is not running: start it with `bash scripts/start-slurm.sh && "
        "bash scripts/start-slurm-multinode.sh`" in child.stdout
    ), child.stdout
    if require:
        assert child.returncode == 1 and "1 error" in child.stdout, child.stdout
    else:
        assert child.returncode == 0 and "1 skipped" in child.stdout, child.stdout
