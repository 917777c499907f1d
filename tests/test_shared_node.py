"""Evaluations that share a node each talk to their own model server (real Slurm, real run_eval).

One array over two checkpoints, both tasks running at once on the local Slurm, each serving its
checkpoint with the stub server on the host runtime (tests/configs/shared_node_host.yaml). The
stub's answer comes from the checkpoint, so a score tells which server answered: step 100's is
right (bfcl 25.0), step 200's is wrong (0.0). Each server logs its own requests.
The same array with real docker (tests/configs/shared_node_docker.yaml, the private dockerd):
our executor's docker runtime, and the launcher's own `local` executor, whose clients run in their
server container's network namespace.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path

import pytest
import yaml

from hpc_eval.launcher_tree import read_metrics
from slurm_helpers import CONFIGS, REPO, hpc_eval, submit_json, wait_for_state
from support.fakeckpt import make_run

RIGHT, WRONG = "[calculate_triangle_area(base=10, height=5)]", "[no_such_function(a=1)]"
SCORES = {100: 25.0, 200: 0.0}
METRIC = "bfcl/python_simple_ast_non_live"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def two_checkpoints(tmp_path: Path, server_args: dict[int, str] | None = None) -> Path:
    run = make_run(tmp_path / "shared" / "checkpoints", [100, 200])
    for step, reply in ((100, RIGHT), (200, WRONG)):
        (run / f"iter_{step:07d}" / "reply.txt").write_text(reply)
    for step, args in (server_args or {}).items():
        (run / f"iter_{step:07d}" / "server_args.txt").write_text(args)
    return run


def submit_array(tmp_path: Path, monkeypatch, config: Path, run: Path) -> dict[int, dict]:
    """Submit both checkpoints as one array; wait for both; {step: {state, summary, task_dir}}."""
    monkeypatch.setenv("HPC_EVAL_REPO", str(REPO))
    result = submit_json("-c", config, "--checkpoint", run, "--all", "--output-dir", tmp_path / "evals")
    tasks = [task for job in result["jobs"] for task in job["tasks"]]
    assert len(tasks) == 2 and len({task["slurm_job_id"].split("_")[0] for task in tasks}) == 1, result  # one array
    found = {}
    for task in tasks:
        eval_dir = Path(task["eval_dir"])
        state = wait_for_state(task["slurm_job_id"], timeout=300)
        summary = json.loads((eval_dir / "summary.json").read_text())
        (bfcl,) = summary["tasks"].values()
        found[int(eval_dir.parent.name.split("_")[1])] = {
            "state": state,
            "summary": summary,
            "task_dir": Path(bfcl["dir"]),
            "job": task["slurm_job_id"],
            "eval_dir": eval_dir,
        }
    return found


def requests(task_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (task_dir / "work" / "server-requests.jsonl").read_text().splitlines()]


def assert_served_by_its_own_server(evaluation: dict, step: int) -> None:
    summary, task_dir = evaluation["summary"], evaluation["task_dir"]
    assert evaluation["state"] == "COMPLETED" and summary["state"] == "COMPLETED", summary
    assert "all servers started" in (task_dir / "logs" / "server_stdout.log").read_text()  # the two servers overlapped
    got = requests(task_dir)
    assert got[0]["method"] == "GET" and got[0]["path"] == "/health"  # its own readiness check
    assert sum(request["method"] == "POST" for request in got) == 4  # its 4 samples, and not the other's
    assert read_metrics(task_dir / "artifacts" / "results.yml")[METRIC] == SCORES[step]  # its checkpoint's answers
    assert "served by this task's server" in (task_dir / "logs" / "stdout.log").read_text()


def test_an_array_on_one_node_gets_a_server_port_per_task(tmp_path, monkeypatch):
    found = submit_array(tmp_path, monkeypatch, CONFIGS / "shared_node_host.yaml", two_checkpoints(tmp_path))
    for step, evaluation in found.items():
        assert_served_by_its_own_server(evaluation, step)
    ports = {evaluation["summary"]["server_port"] for evaluation in found.values()}
    assert len(ports) == 2 and 8000 not in ports
    assert found[100]["summary"]["node"] == found[200]["summary"]["node"]
    for evaluation in found.values():  # the saved config keeps the config's port; the job's copy moved it
        assert (
            yaml.safe_load((evaluation["eval_dir"] / "launcher_config.yaml").read_text())["deployment"]["port"] == 8000
        )


def test_a_fixed_port_in_the_builtin_default_shape_is_moved_too(tmp_path, monkeypatch):
    """The command of configs/default.yaml's shape: `bash -c '... --port 1235 ...'`, a literal number."""
    config = yaml.safe_load((CONFIGS / "shared_node_host.yaml").read_text())
    command = config["deployment"]["command"].replace("${deployment.port}", "--port 1235")
    config["deployment"].update(port=1235, command=f"bash -c '{command}'")
    path = tmp_path / "default_shape.yaml"
    path.write_text(yaml.safe_dump(config))
    found = submit_array(tmp_path, monkeypatch, path, two_checkpoints(tmp_path))
    for step, evaluation in found.items():
        assert_served_by_its_own_server(evaluation, step)
    ports = {evaluation["summary"]["server_port"] for evaluation in found.values()}
    assert len(ports) == 2 and 1235 not in ports


def test_a_server_that_cannot_bind_fails_with_its_own_reason(tmp_path, monkeypatch):
    """Step 100's server also binds a fixed metrics port, which the test holds: it dies at start
    with Errno 98. Before this change its evaluation completed against step 200's server."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        run = two_checkpoints(tmp_path, {100: f"--metrics-port {port}"})
        found = submit_array(tmp_path, monkeypatch, CONFIGS / "shared_node_host.yaml", run)
    failed = found[100]
    assert failed["state"] == "FAILED" and failed["summary"]["state"] == "FAILED"
    reason = failed["summary"]["reason"]
    assert "model server: the server process exited before it was ready" in reason
    assert (
        f"{failed['task_dir']}/logs/server_stdout.log" in reason
        and "OSError: [Errno 98] Address already in use" in reason
    )
    assert not (failed["task_dir"] / "logs" / "client_stdout.log").exists()  # no client ever started
    assert_served_by_its_own_server(found[200], 200)  # the other evaluation is unaffected
    shown = hpc_eval("status", "--json", tmp_path / "evals")
    rows = {row["iteration"]: row for row in json.loads(shown.output)}
    assert rows[100]["state"] == "FAILED" and rows[100]["reason"].endswith("OSError: [Errno 98] Address already in use")
    assert rows[200]["state"] == "COMPLETED"


@pytest.mark.parametrize("runtime_name", ["pyxis", "apptainer"])
def test_pyxis_and_apptainer_scripts_carry_the_port_chosen_in_the_job(tmp_path, monkeypatch, runtime_name):
    """The launcher's dry run inside the job writes run.sh with the port the payload chose."""
    monkeypatch.setenv("HPC_EVAL_REPO", str(REPO))
    run = make_run(tmp_path / "run" / "checkpoints", [100])
    result = submit_json(
        "-c",
        CONFIGS / "bfcl_generic_host.yaml",
        "--checkpoint",
        run / "iter_0000100",
        "--output-dir",
        tmp_path / "evals",
        f"execution.runtime={runtime_name}",
        "dry_run=true",
    )
    ((task,),) = [job["tasks"] for job in result["jobs"]]
    assert wait_for_state(task["slurm_job_id"], timeout=300) == "COMPLETED"
    summary = json.loads((Path(task["eval_dir"]) / "summary.json").read_text())
    port = summary["server_port"]
    assert port != 8000
    (run_sh,) = [Path(script) for script in summary["scripts"] if script.endswith("/run.sh")]
    text = run_sh.read_text()
    (server_command,) = [line.strip() for line in text.splitlines() if line.strip().startswith("SERVER_COMMAND=")]
    assert server_command.endswith(f"fake_openai.py {port}'") and "8000" not in server_command
    assert f'wait_for_server http://127.0.0.1:{port}/health 60 "$SERVER_PID" {port}' in text
    launch = "srun --overlap" if runtime_name == "pyxis" else "apptainer exec --nv"
    assert any(launch in line and "server_stdout.log" in line for line in text.splitlines())
    encoded = re.search(r'echo "([A-Za-z0-9+/=]+)" \| base64 -d > config_ef.yaml', text).group(1)
    client = yaml.safe_load(base64.b64decode(encoded))["target"]["api_endpoint"]
    assert client["url"] == f"http://127.0.0.1:{port}/v1/chat/completions"  # the client is sent to the same port


# ---------------------------------------------------------------- real docker (scripts/start-docker.sh)
def submit_docker_array(
    tmp_path: Path, monkeypatch, execution: dict | None = None, server_args: dict[int, str] | None = None
) -> tuple[dict[int, dict], Path]:
    """tests/configs/shared_node_docker.yaml over both checkpoints, `execution` replacing its
    execution block; ({step: evaluation}, the dir the servers share at /sync)."""
    config = yaml.safe_load((CONFIGS / "shared_node_docker.yaml").read_text())
    sync = tmp_path / "sync"
    sync.mkdir()
    config["execution"] = {**(execution or config["execution"])}
    config["execution"]["mounts"] = {"deployment": {str(REPO / "scripts"): "/stub", str(sync): "/sync"}}
    path = tmp_path / "shared_node_docker.yaml"
    path.write_text(yaml.safe_dump(config))
    run = two_checkpoints(tmp_path, server_args)
    for step in SCORES:
        (run / f"iter_{step:07d}" / "step.txt").write_text(str(step))
    return submit_array(tmp_path, monkeypatch, path, run), sync


def assert_served_in_docker(evaluation: dict, step: int, sync: Path) -> None:
    """Completed, scored with its own checkpoint's answers; its stub got its own readiness checks
    and exactly its 4 samples (the other stub's log has the other 4)."""
    summary, task_dir = evaluation["summary"], evaluation["task_dir"]
    assert evaluation["state"] == "COMPLETED" and summary["state"] == "COMPLETED", summary
    assert "all servers started" in (task_dir / "logs" / "server_stdout.log").read_text()  # the two servers overlapped
    got = [json.loads(line) for line in (sync / f"requests-{step}.jsonl").read_text().splitlines()]
    assert got[0]["method"] == "GET" and got[0]["path"] == "/health"  # its own readiness check
    assert sum(request["method"] == "POST" for request in got) == 4  # its 4 samples, and not the other's
    assert read_metrics(task_dir / "artifacts" / "results.yml")[METRIC] == SCORES[step]  # its checkpoint's answers


def assert_one_node_two_ports(found: dict[int, dict]) -> None:
    assert found[100]["summary"]["node"] == found[200]["summary"]["node"]
    ports = {evaluation["summary"]["server_port"] for evaluation in found.values()}
    assert len(ports) == 2 and 8000 not in ports


def test_docker_runtime_array_on_one_node_each_task_reaches_its_own_server_container(
    tmp_path, monkeypatch, real_docker
):
    """Our executor, runtime docker: each server container publishes the port its job chose (-p P:P);
    the clients run on the host network and reach it there."""
    found, sync = submit_docker_array(tmp_path, monkeypatch)
    for step, evaluation in found.items():
        assert_served_in_docker(evaluation, step, sync)
        assert "served by this task's server" in (evaluation["task_dir"] / "logs" / "stdout.log").read_text()
        run_sh = (evaluation["task_dir"] / "run.sh").read_text()
        assert f"-p {evaluation['summary']['server_port']}:{evaluation['summary']['server_port']} " in run_sh
    assert_one_node_two_ports(found)
    assert real_docker.containers_using(tmp_path) == {}


LOCAL_EXECUTION = {
    "type": "local",
    "mode": "sequential",
    "output_dir": "${output_dir}",
    "endpoint_readiness_timeout": 120,
}


def test_launcher_local_executor_two_evaluations_on_one_node_each_reach_their_own_server(
    tmp_path, monkeypatch, real_docker
):
    """The launcher's `local` executor: the port is chosen in the job as for ours, and each client
    runs in its server container's network namespace (--network container:SERVER), so its requests
    and its adapter port (3825) are its own: both complete, each scored with its own server's answers."""
    execution = {
        "type": "local",
        "mode": "sequential",
        "output_dir": "${output_dir}",
        "endpoint_readiness_timeout": 120,
    }
    found, sync = submit_docker_array(tmp_path, monkeypatch, execution)
    for step, evaluation in found.items():
        assert_served_in_docker(evaluation, step, sync)
        run_sh = (evaluation["task_dir"] / "run.sh").read_text()
        assert "--network container:$SERVER_CONTAINER_NAME" in run_sh  # the launcher's own script, not ours
    assert_one_node_two_ports(found)
    assert real_docker.containers_using(tmp_path) == {}


def test_launcher_local_executor_a_server_that_dies_at_start_fails_with_its_own_reason(
    tmp_path, monkeypatch, real_docker
):
    """Step 100's server dies at start (a metrics port it cannot bind): the launcher's script sees
    its `docker run` exit, and the summary quotes the server's log; step 200 is unaffected."""
    found, sync = submit_docker_array(tmp_path, monkeypatch, LOCAL_EXECUTION, {100: "--metrics-port 99999"})
    failed = found[100]
    assert failed["state"] == "FAILED" and failed["summary"]["state"] == "FAILED", failed["summary"]
    reason = failed["summary"]["reason"]
    assert re.search(r"^bfcl\.bfclv3_ast_prompting\.0: model server: Server process \d+ died; see ", reason), reason
    assert f"{failed['task_dir']}/logs/server_stdout.log" in reason and "port must be 0-65535" in reason
    assert not (sync / "requests-100.jsonl").exists()  # it never served
    assert_served_in_docker(found[200], 200, sync)
    assert real_docker.containers_using(tmp_path) == {}
