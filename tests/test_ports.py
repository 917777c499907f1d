"""A port per model server: the substitution over command shapes, the refusal at submit time, the
listener check that tells this evaluation's server from another one, and the server's reason."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpc_eval import listener
from hpc_eval.config import load_config
from hpc_eval.launcher_tree import server_failure, task_outcome
from hpc_eval.ports import PortError, check_port, with_port
from slurm_helpers import REPO, hpc_eval
from support.fakeckpt import make_run


def generic(command: str, port=1235, type_="generic") -> dict:
    return {"deployment": {"type": type_, "port": port, "command": command, "served_model_name": "m"}, "execution": {}}


@pytest.mark.parametrize(
    "command, expected",
    [
        ("serve --port 1235", "serve --port 40001"),
        ("serve --port=1235 --x 1", "serve --port=40001 --x 1"),
        ("serve --bind 0.0.0.0:1235", "serve --bind 0.0.0.0:40001"),
        ("NIM_SERVER_PORT=1235 /opt/start.sh", "NIM_SERVER_PORT=40001 /opt/start.sh"),
        (
            "bash -c 'python deploy.py --num_gpus 1 --port 1235 --num_replicas 1'",
            "bash -c 'python deploy.py --num_gpus 1 --port 40001 --num_replicas 1'",
        ),
        (
            "serve --max-len 1235 --http-port 1235",
            "serve --max-len 1235 --http-port 40001",
        ),  # only the port argument moves
        ("serve --port '1235'", "serve --port '40001'"),
        (
            "exec python3 fake_openai.py 1235; echo",
            "exec python3 fake_openai.py 40001; echo",
        ),  # `${deployment.port}` alone
    ],
    ids=["space", "equals", "host-colon", "env", "default-shape", "other-number-kept", "quoted", "positional"],
)
def test_the_port_argument_is_replaced_once(command, expected):
    moved = with_port(generic(command), 40001)
    assert moved["deployment"]["command"] == expected and moved["deployment"]["port"] == 40001
    assert generic(command)["deployment"]["command"] == command  # the caller's config is not changed


@pytest.mark.parametrize(
    "command, says",
    [
        ("serve --model /checkpoint", "does not pass it"),
        ("serve --port 12350", "does not pass it"),  # another number that starts with the port's digits
        ("serve --port 8000", "does not pass it"),  # a fixed number other than deployment.port
        ("serve --port 1235 --metrics-port 1235", "passes it 2 times"),
        ("serve --tokens 1235 --batch 1235", "passes it 2 times"),  # two words, no port argument: which one?
        ("serve --max-len 12345 /data/1235", "does not pass it"),  # digits inside other words
    ],
)
def test_a_command_without_exactly_one_port_argument_is_refused(command, says):
    with pytest.raises(PortError, match=says) as raised:
        check_port(generic(command))
    assert "${deployment.port}" in str(raised.value)


def test_no_deployment_needs_no_port():
    check_port({"deployment": {"type": "none"}})
    check_port({})


def test_the_builtin_default_takes_the_port_from_deployment_port(tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert "--port ${deployment.port}" in raw["deployment"]["command"]
    run = make_run(tmp_path / "run" / "checkpoints", [100])
    config = load_config("default", ["deployment.port=1300"], checkpoint=run / "iter_0000100")
    assert "--port 1300 " in config.launcher["deployment"]["command"]
    assert "--port 40002 " in with_port(config.launcher, 40002)["deployment"]["command"]


def test_submit_refuses_a_fixed_port_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HPC_EVAL_REPO", str(REPO))
    run = make_run(tmp_path / "run" / "checkpoints", [100])
    result = hpc_eval(
        "submit",
        "-c",
        REPO / "tests" / "configs" / "bfcl_generic_host.yaml",
        "--checkpoint",
        run / "iter_0000100",
        "--output-dir",
        tmp_path / "evals",
        "deployment.command=python3 serve.py --port 9999",
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "bfcl_generic_host.yaml" in lines[0]
    assert "write the port as ${deployment.port}" in lines[0] and "deployment.command" in lines[0]
    assert not (tmp_path / "evals").exists()


# ---------------------------------------------------------------- whose listener
def listening_socket() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_a_listener_in_the_server_tree_is_ours():
    sock, port = listening_socket()
    with sock:
        assert listener.verdict(port, os.getppid(), "host") is None  # this process is below the pytest parent's tree
        assert listener.verdict(port, os.getpid(), "apptainer") is None


def test_another_process_tree_listening_is_not_ours(tmp_path):
    ready = tmp_path / "port"
    holder = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "fake_openai.py"), "0"], env=dict(os.environ, PORT_FILE=str(ready))
    )
    other = subprocess.Popen(["sleep", "60"])  # "this evaluation's server", which never bound the port
    try:
        while not ready.exists() or not ready.read_text().strip():
            assert holder.poll() is None
        port = int(ready.read_text())
        reason = listener.verdict(port, other.pid, "host")
        assert reason.startswith(f"port {port} is served by pid {holder.pid} (") and "fake_openai.py" in reason
        assert reason.endswith(f"not by this evaluation's server (pid {other.pid} and its children)")
        assert listener.verdict(port, holder.pid, "host") is None
    finally:
        holder.kill(), other.kill()


def test_under_pyxis_a_listener_of_this_slurm_job_is_ours(tmp_path, monkeypatch):
    ready = tmp_path / "port"
    holder = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "fake_openai.py"), "0"],
        env=dict(os.environ, PORT_FILE=str(ready), SLURM_JOB_ID="4242"),
    )
    other = subprocess.Popen(["sleep", "60"])
    try:
        while not ready.exists() or not ready.read_text().strip():
            assert holder.poll() is None
        port = int(ready.read_text())
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        assert listener.verdict(port, other.pid, "pyxis") is None  # srun --overlap: outside the tree, in the job
        monkeypatch.setenv("SLURM_JOB_ID", "4243")
        assert "Slurm job 4242" in listener.verdict(port, other.pid, "pyxis")  # another job's server
    finally:
        holder.kill(), other.kill()


def test_the_command_line_form_exits_1_with_the_reason():
    sock, port = listening_socket()
    with sock:
        other = subprocess.Popen(["sleep", "60"])
        try:
            done = subprocess.run(
                [sys.executable, "-m", "hpc_eval.listener", str(port), str(other.pid), "host"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            other.kill()
    assert done.returncode == 1 and done.stdout.startswith(f"port {port} is served by pid {os.getpid()} (")


# ---------------------------------------------------------------- the server's reason
def task_dir_with(tmp_path: Path, **logs: str) -> Path:
    task_dir = tmp_path / "task"
    (task_dir / "logs").mkdir(parents=True)
    for name, text in logs.items():
        (
            task_dir / "logs" / name.replace("_log", ".log").replace("_exit", ".exit").replace("_failed", ".failed")
        ).write_text(text)
    return task_dir


def test_a_failed_server_is_the_reason_with_its_last_log_lines(tmp_path):
    task_dir = task_dir_with(
        tmp_path,
        stage_exit="2026-01-01T00:00:00Z 1",
        server_failed="model server: the server process exited before it was ready\n",
        server_stdout_log="starting\nTraceback (most recent call last):\n  ...\nOSError: [Errno 98] Address already in use\n",
    )
    outcome = task_outcome(task_dir)
    assert outcome["status"] == "failed"
    assert outcome["reason"] == (
        f"model server: the server process exited before it was ready; see {task_dir}/logs/server_stdout.log: "
        "Traceback (most recent call last): | ... | OSError: [Errno 98] Address already in use"
    )


def test_the_local_executors_server_failure_is_recognised(tmp_path):
    task_dir = task_dir_with(
        tmp_path,
        stage_exit="x 1",
        client_stdout_log="",
        stdout_log="Sun Nov 1\nServer process 77 died\n",
        server_stdout_log="bind: address already in use\n",
    )
    assert (
        server_failure(task_dir)
        == f"model server: Server process 77 died; see {task_dir}/logs/server_stdout.log: bind: address already in use"
    )


def test_a_client_failure_still_quotes_the_client_log(tmp_path):
    task_dir = task_dir_with(
        tmp_path, stage_exit="x 3", client_stdout_log="a\nValueError: bad\n", stdout_log="server ready\n"
    )
    assert server_failure(task_dir) is None
    assert (
        task_outcome(task_dir)["reason"] == f"exit code 3; see {task_dir}/logs/client_stdout.log: a | ValueError: bad"
    )


def test_under_docker_the_containers_published_port_behind_docker_proxy_is_ours(tmp_path, monkeypatch):
    """A real docker daemon's docker-proxy (here: a python named docker-proxy) holds the port;
    `docker port` (a stand-in on PATH) says whether this task's container publishes it."""
    proxy = tmp_path / "docker-proxy"
    proxy.symlink_to(Path(os.path.realpath(sys.executable)))  # comm is the name it was started by
    ready = tmp_path / "port"
    holder = subprocess.Popen(
        [str(proxy), str(REPO / "scripts" / "fake_openai.py"), "0"],
        env=dict(os.environ, PORT_FILE=str(ready), PYTHONHOME=sys.base_prefix),
    )
    other = subprocess.Popen(["sleep", "60"])  # `docker run`, the script's server process
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\n[ "$1 $2" = "port server-1" ] && echo "0.0.0.0:$3"\n')
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    try:
        while not ready.exists() or not ready.read_text().strip():
            assert holder.poll() is None
        port = int(ready.read_text())
        assert listener.command_name(holder.pid) == "docker-proxy"
        assert listener.verdict(port, other.pid, "docker", "server-1") is None
        assert "docker-proxy" in listener.verdict(port, other.pid, "docker", "server-2")  # another task's container
        assert listener.verdict(port, other.pid, "host", "server-1") is not None
    finally:
        holder.kill(), other.kill()


def test_a_nim_gets_its_port_through_nim_server_port():
    """A NIM's command carries no port: it reads NIM_SERVER_PORT, so that is where the port goes."""
    launcher = {
        "deployment": {"type": "nim", "port": 8000, "command": "/opt/nim/start_server.sh", "env_vars": {"A": "host:A"}}
    }
    check_port(launcher)  # no port argument needed
    moved = with_port(launcher, 40123)
    assert moved["deployment"]["port"] == 40123 and moved["deployment"]["command"] == "/opt/nim/start_server.sh"
    assert moved["deployment"]["env_vars"] == {"A": "host:A", "NIM_SERVER_PORT": "lit:40123"}
    assert launcher["deployment"]["port"] == 8000  # the saved config is left alone
