"""Multi-node evaluations (issue 19): one allocation of several nodes, the model server across them
or one server per node behind haproxy, the evaluation client once.

The configs in the shapes of the launcher's multi-node examples (tests/configs/multinode/) go
through `submit --dry-run` (no job); the rest run on the real 2-node Slurm
(scripts/start-slurm-multinode.sh): nodes with their own addresses, so a server that started on
one node only, or a client that ran on every node, shows.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import CONFIGS, REPO, hpc_eval, submit_json, wait_for_file, wait_for_state
from support.fakeckpt import make_run
from test_configs_users import ENV, HPC_EVAL, dry_run

MULTINODE = CONFIGS / "multinode"


@pytest.mark.parametrize(
    ("config", "nodes", "gpus", "layout"),
    [
        ("ray_tp_pp_2nodes", 2, 8, "1 instance(s) of 2 node(s), 1 task(s) per node"),
        (
            "dp_4nodes_haproxy",
            4,
            8,
            "4 instance(s) of 1 node(s), 1 task(s) per node, started with srun on the job's nodes; haproxy in front (haproxy:2.9",
        ),
        (
            "instances_2_proxy",
            2,
            4,
            "2 instance(s) of 1 node(s), 1 task(s) per node, started with srun on the job's nodes; haproxy in front",
        ),
        ("multiinstance_ray_4nodes", 4, 8, "2 instance(s) of 2 node(s), 1 task(s) per node"),
    ],
)
def test_launcher_multinode_shapes_ask_sbatch_for_their_nodes_and_gpus(tmp_path, config, nodes, gpus, layout):
    done = dry_run(tmp_path, "-c", str(MULTINODE / f"{config}.yaml"))
    assert done.returncode == 0, done.stderr
    sbatch = json.loads(done.stdout)["sbatch_script"]
    assert f"#SBATCH --nodes={nodes}\n" in sbatch and f"#SBATCH --gpus-per-node={gpus}\n" in sbatch
    assert "#SBATCH --ntasks-per-node=1\n" in sbatch  # one payload per node: rank 0 evaluates
    text = subprocess.run(
        [HPC_EVAL, "submit", "-c", MULTINODE / f"{config}.yaml", "--dry-run"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV, "TMPDIR": str(tmp_path)},
        cwd=tmp_path,
        timeout=120,
    ).stdout
    assert f"model server: {layout}" in text, text
    per_instance = nodes // int(re.search(r"(\d) instance", layout).group(1))
    assert f"server: srun --overlap --kill-on-bad-exit=1 --nodes={per_instance} --ntasks={per_instance} " in text


def test_num_nodes_that_do_not_split_into_instances_are_refused(tmp_path):
    done = dry_run(tmp_path, "-c", str(MULTINODE / "dp_4nodes_haproxy.yaml"), "execution.num_instances=3")
    assert done.returncode == 2 and not done.stdout.strip()
    assert done.stderr.strip().splitlines() == [
        f"Error: {MULTINODE / 'dp_4nodes_haproxy.yaml'}: execution.num_nodes (4) must be a whole number divisible by "
        "execution.num_instances (3): each server instance gets num_nodes / num_instances nodes"
    ]


# ------------------------------------------------------------------ on the real 2-node Slurm
def on_multinode(test):
    return pytest.mark.slurm(pytest.mark.multinode(pytest.mark.slow(test)))


def submit(tmp_path: Path, monkeypatch, config: str, *extra: str) -> dict:
    """Submit one fake checkpoint with tests/configs/multinode/<config>.yaml; the submitted task."""
    monkeypatch.setenv("HPC_EVAL_REPO", str(REPO))
    run = make_run(tmp_path / "my-run" / "checkpoints", [100])
    result = submit_json(
        "-c",
        MULTINODE / f"{config}.yaml",
        "--checkpoint",
        run / "iter_0000100",
        "--output-dir",
        tmp_path / "evals",
        *extra,
    )
    (task,) = [task for job in result["jobs"] for task in job["tasks"]]
    return task


def finished(task: dict) -> tuple[dict, Path]:
    """Wait for the job; (summary.json, the bfcl task's directory)."""
    state = wait_for_state(task["slurm_job_id"], timeout=300)
    eval_dir = Path(task["eval_dir"])
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert state == "COMPLETED" and summary["state"] == "COMPLETED", (state, summary)
    (bfcl,) = summary["tasks"].values()
    return summary, Path(bfcl["dir"])


def posts(log: Path) -> list[dict]:
    return [line for line in map(json.loads, log.read_text().splitlines()) if line["method"] == "POST"]


def assert_client_ran_once(summary: dict, task_dir: Path) -> None:
    """One launcher invocation with one task, one summary from rank 0, the 4 samples asked once."""
    eval_dir = task_dir.parent.parent
    invocations = [path for path in eval_dir.iterdir() if re.fullmatch(r"\d{8}_\d{6}-\w+", path.name)]
    assert invocations == [task_dir.parent], invocations
    # rank 1 (node2) returned at once with nothing evaluated: submitit's result of its task
    (rank1,) = (eval_dir / "submitit").glob("*_1_result.pkl")
    assert pickle.loads(rank1.read_bytes()) == (
        "success",
        {"rank": 1, "node": "node2", "role": "hosts the steps rank 0 starts"},
    )
    assert summary["node"] == "node1" and summary["nodes"] == ["node1", "node2"]
    assert summary["tasks"][task_dir.name]["metrics"]["bfcl/python_simple_ast_non_live"] == 25.0
    logs = sorted((task_dir / "work").glob("requests-*.jsonl"))
    assert sum(len(posts(log)) for log in logs) == 4, logs


@on_multinode
def test_a_server_across_two_nodes_serves_one_evaluation(multinode_env, tmp_path, monkeypatch):
    summary, task_dir = finished(submit(tmp_path, monkeypatch, "two_node_host"))
    assert_client_ran_once(summary, task_dir)
    server_log = (task_dir / "logs" / "server_stdout.log").read_text()
    node2 = multinode_env.node("node2").address
    # the head became the model server only after the worker on node2 reached it over the network
    assert f"head on node1: worker node2 joined from {node2}" in server_log, server_log
    assert f"worker on node2: joined the head at {multinode_env.node('node1').address}:" in server_log, server_log
    assert [log.name for log in (task_dir / "work").glob("requests-*.jsonl")] == ["requests-node1.jsonl"]
    runtime = json.loads((task_dir.parent / "runtime.json").read_text())
    assert runtime["nodes"] == ["node1", "node2"] and runtime["layout"]["nodes_per_instance"] == 2


@on_multinode
def test_a_server_started_on_the_first_node_only_never_gets_ready(multinode_env, tmp_path, monkeypatch):
    """The same config with the server on one node of the two (execution.num_nodes=1): its head
    waits for a worker that never comes, so the evaluation fails on readiness, naming why."""
    task = submit(
        tmp_path, monkeypatch, "two_node_host", "+execution.num_nodes=1", "execution.endpoint_readiness_timeout=8"
    )
    assert wait_for_state(task["slurm_job_id"], timeout=300) == "FAILED"
    summary = json.loads((Path(task["eval_dir"]) / "summary.json").read_text())
    assert summary["state"] == "FAILED" and "model server: readiness timeout" in summary["reason"], summary
    assert summary["nodes"] == ["node1", "node2"]


@on_multinode
def test_two_instances_behind_haproxy_both_get_requests(multinode_env, tmp_path, monkeypatch):
    summary, task_dir = finished(submit(tmp_path, monkeypatch, "instances_host"))
    assert_client_ran_once(summary, task_dir)
    per_node = {log.name: len(posts(log)) for log in (task_dir / "work").glob("requests-*.jsonl")}
    assert set(per_node) == {"requests-node1.jsonl", "requests-node2.jsonl"} and all(per_node.values()), per_node
    proxy = (task_dir / "proxy.cfg").read_text()
    backends = re.findall(r"server instance\d (\S+):(\d+) check", proxy)
    assert [address for address, _ in backends] == [multinode_env.node(n).address for n in ("node1", "node2")], proxy
    ports = {summary["server_port"], *(int(port) for _, port in backends)}
    assert len(ports) == 3 and 8000 not in ports  # haproxy's and each server's: chosen by the job
    assert f"bind *:{summary['server_port']}" in proxy


@on_multinode
def test_scancel_of_a_multinode_evaluation_leaves_no_process_on_any_node(multinode_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTINODE_DELAY_S", "60")  # the client waits on its first request
    task = submit(tmp_path, monkeypatch, "two_node_host")
    job = task["slurm_job_id"]
    deadline = time.monotonic() + 180
    while True:  # the server's head on node1, its worker on node2, the client asking
        running = {node.name: " ".join(multinode_env.processes_on(node.name).values()) for node in multinode_env.nodes}
        logs = list(Path(task["eval_dir"]).rglob("requests-node1.jsonl"))
        if (
            "fake_openai.py" in running["node1"]
            and "multinode_server.py" in running["node2"]
            and logs
            and posts(logs[0])
        ):
            break
        assert time.monotonic() < deadline, running
        time.sleep(0.5)
    assert multinode_env.slurm("scancel", job.split("_")[0]).returncode == 0
    assert wait_for_state(job, timeout=120) == "CANCELLED"
    assert json.loads((Path(task["eval_dir"]) / "summary.json").read_text())["state"] == "CANCELLED"
    deadline = time.monotonic() + 30  # KillWait is 5 s
    while any(left := {node.name: multinode_env.processes_on(node.name) for node in multinode_env.nodes}.values()):
        assert time.monotonic() < deadline, left
        time.sleep(0.5)


@on_multinode
def test_watch_submits_new_checkpoints_as_an_array_of_two_node_allocations(multinode_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HPC_EVAL_REPO", str(REPO))
    run = make_run(tmp_path / "my-run" / "checkpoints", [100, 200])
    args = (
        "watch",
        run,
        "-c",
        MULTINODE / "two_node_host.yaml",
        "--output-dir",
        tmp_path / "evals",
        "--quiet-seconds",
        "0",
        "--json",
    )
    first = hpc_eval(*args)
    assert first.exit_code == 0, first.output
    submitted = [action for action in json.loads(first.output)["actions"] if action["action"] == "submitted"]
    assert len(submitted) == 2, first.output
    summaries = []
    for action in submitted:
        wait_for_file(Path(action["eval_dir"]) / "summary.json", timeout=400)
        summaries.append(json.loads((Path(action["eval_dir"]) / "summary.json").read_text()))
    jobs = sorted(summary["slurm_job_id"] for summary in summaries)
    assert len({job.split("_")[0] for job in jobs}) == 1 and all("_" in job for job in jobs), jobs  # one array
    for summary in summaries:
        assert (
            wait_for_state(summary["slurm_job_id"], timeout=120) == "COMPLETED" and summary["state"] == "COMPLETED"
        ), summary
        assert summary["nodes"] == ["node1", "node2"] and summary["node"] == "node1", summary
    again = hpc_eval(*args)  # the next pass: both evaluated, nothing to submit
    assert again.exit_code == 0 and not [
        a for a in json.loads(again.output)["actions"] if a["action"] == "submitted"
    ], again.output
