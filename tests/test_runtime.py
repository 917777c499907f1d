"""The hpc_eval executor's runtimes: exact command lines, auto-detection, and its scripts run for real.

Command lines are rendered from one launcher config (a generic deployment serving a checkpoint)
and checked flag by flag. Auto-detection runs against small executables named docker, srun and
apptainer put first on PATH (process-boundary stand-ins). Dry and real runs go through the
launcher's own run_eval; the real ones run a real bfcl evaluation against the stub server on the
host runtime (real docker: tests/test_docker_real.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from hpc_eval import executor as runtime
from hpc_eval.executor_scripts import task_commands
from hpc_eval.launcher_tree import read_metrics
from slurm_helpers import (
    CONFIGS,
    REPO,
    free_port,
    hpc_eval,
    processes_mentioning,
    submit_generic_host,
    wait_until_gone_from_queue,
)
from support.fakeckpt import make_run

BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"  # right for 1 of the 4 `simple` samples
IMAGE = "nvcr.io/nvidia/nemo:25.11"
EVAL_IMAGE = "nvcr.io/nvidia/eval-factory/bfcl:26.03"


def launcher_config(tmp_path: Path, **execution) -> dict:
    """A generic deployment serving a checkpoint, one bfcl task, extra mounts and a dataset dir."""
    checkpoint = tmp_path / "run" / "iter_0000100"
    checkpoint.mkdir(parents=True, exist_ok=True)
    return {
        "execution": {
            "type": "hpc_eval",
            "output_dir": str(tmp_path / "out"),
            "mode": "sequential",
            "mounts": {"deployment": {"/shared/hf": "/hf-cache"}, "evaluation": {"/shared/tok": "/tokenizer"}},
            **execution,
        },
        "deployment": {
            "type": "generic",
            "image": IMAGE,
            "port": 8000,
            "served_model_name": "nemo-model",
            "checkpoint_path": str(checkpoint),
            "command": "python serve.py --megatron_checkpoint /checkpoint/ --port 8000",
            "env_vars": {"HF_TOKEN": "host:MY_HF_TOKEN", "REPLY": "lit:hello"},
            "endpoints": {"chat": "/v1/chat/completions", "completions": "/v1/completions", "health": "/v1/health"},
        },
        "target": {"api_endpoint": {}},
        "evaluation": {"tasks": [{"name": "bfcl.bfclv3_ast_prompting", "dataset_dir": "/shared/data"}]},
    }


def words(line: str) -> list[str]:
    return shlex.split(line)


def value_of(argv: list[str], prefix: str) -> str:
    (found,) = [word[len(prefix) :] for word in argv if word.startswith(prefix)]
    return found


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def commands(tmp_path: Path, runtime_name: str, **execution) -> dict:
    (task,) = task_commands(launcher_config(tmp_path, **execution), runtime_name)
    return task


# ---------------------------------------------------------------- exact command lines
def test_pyxis_server_and_client_are_srun_container_steps(tmp_path):
    task = commands(tmp_path, "pyxis")
    checkpoint = tmp_path / "run" / "iter_0000100"
    server = words(task["server"])
    assert server[:4] == ["srun", "--overlap", "--nodes=1", "--ntasks=1"]
    assert value_of(server, "--container-image=") == IMAGE
    assert value_of(server, "--container-mounts=").split(",") == [
        "$artifacts_dir:/results",
        f"{checkpoint}:/checkpoint:ro",
        "/shared/hf:/hf-cache",
    ]
    assert "--no-container-mount-home" in server
    assert value_of(server, "--container-env=") == "HF_TOKEN,REPLY"  # names only: values come from .secrets.env
    assert server[-3:] == ["bash", "-c", "$SERVER_COMMAND"]
    assert task["server_command"] == "python serve.py --megatron_checkpoint /checkpoint/ --port 8000"
    assert task["health_url"] == "http://127.0.0.1:8000/v1/health"

    client = words(task["client"])
    assert client[:4] == ["srun", "--overlap", "--nodes=1", "--ntasks=1"]
    assert value_of(client, "--container-image=") == EVAL_IMAGE
    assert value_of(client, "--container-mounts=").split(",") == [
        "$artifacts_dir:/results",
        "/shared/tok:/tokenizer",
        "/shared/data:/datasets",
    ]  # no checkpoint for the client
    assert "--no-container-mount-home" in client
    names = value_of(client, "--container-env=").split(",")
    assert "NEMO_EVALUATOR_DATASET_DIR" in names and "HF_TOKEN" not in names  # deployment env stays with the server
    assert "ADAPTER_PORT" in names  # each task's own adapter port, chosen by the script
    assert all(re.fullmatch(r"[A-Z_]+", name) for name in names)
    assert client[-3:] == ["bash", "-c", "$EVAL_COMMAND"]
    assert not any("--gpus" in word for word in server + client)  # the steps share the job's GPUs


def test_apptainer_runs_docker_images_with_nv_binds_and_env_by_name(tmp_path):
    task = commands(tmp_path, "apptainer")
    checkpoint = tmp_path / "run" / "iter_0000100"
    server = words(task["server"])
    assert server[:2] == [
        "APPTAINERENV_HF_TOKEN=$HF_TOKEN",
        "APPTAINERENV_REPLY=$REPLY",
    ]  # set in the container, no value in argv
    assert server[2:5] == ["apptainer", "exec", "--nv"] and "--no-home" in server
    assert pairs(server, "--bind") == [
        "$artifacts_dir:/results",
        f"{checkpoint}:/checkpoint:ro",
        "/shared/hf:/hf-cache",
        "$work_dir",
    ]
    assert pairs(server, "--pwd") == ["$work_dir"]  # a writable cwd, whatever the image
    assert server[-4:] == [f"docker://{IMAGE}", "bash", "-c", "$SERVER_COMMAND"]

    client = words(task["client"])
    assert "--nv" not in client and "--no-home" in client  # the client needs no GPU, as in the launcher
    assert pairs(client, "--bind") == [
        "$artifacts_dir:/results",
        "/shared/tok:/tokenizer",
        "/shared/data:/datasets",
        "$work_dir",
    ]
    assert "APPTAINERENV_NEMO_EVALUATOR_DATASET_DIR=$NEMO_EVALUATOR_DATASET_DIR" in client
    assert client[-4:] == [f"docker://{EVAL_IMAGE}", "bash", "-c", "$EVAL_COMMAND"]


def test_apptainer_takes_a_sif_file_as_it_is(tmp_path):
    config = launcher_config(tmp_path)
    config["deployment"]["image"] = "/images/nemo.sif"
    (task,) = task_commands(config, "apptainer")
    assert words(task["server"])[-4] == "/images/nemo.sif"


def test_home_is_mounted_only_when_asked(tmp_path):
    with_home = commands(tmp_path, "pyxis", mounts={"mount_home": True})
    assert "--no-container-mount-home" not in with_home["server"] + with_home["client"]
    assert "--no-home" not in commands(tmp_path, "apptainer", mounts={"mount_home": True})["client"]


def test_docker_server_gets_the_jobs_gpus_and_the_client_the_host_network(tmp_path):
    task = commands(tmp_path, "docker", extra_docker_args="--init")
    checkpoint = tmp_path / "run" / "iter_0000100"
    server = words(task["server"])
    assert server[:3] == ["docker", "run", "--rm"]
    assert pairs(server, "--gpus") == ["$DOCKER_GPUS"] and "all" not in server  # set by the script from the job's GPUs
    assert pairs(server, "-p") == ["8000:8000"] and pairs(server, "--entrypoint") == [""]
    assert pairs(server, "-e") == ["HF_TOKEN", "REPLY"]
    assert pairs(server, "-v") == [f"{checkpoint}:/checkpoint:ro", "/shared/hf:/hf-cache"]
    assert "--init" in server and server[-4:] == [IMAGE, "bash", "-c", "$SERVER_COMMAND"]

    client = words(task["client"])
    assert pairs(client, "--network") == ["host"] and "--rm" not in client  # `docker cp` reads it after it exits
    assert pairs(client, "-v") == ["$artifacts_dir:/results", "/shared/tok:/tokenizer", "/shared/data:/datasets"]
    assert "NEMO_EVALUATOR_DATASET_DIR" in pairs(client, "-e")
    assert client[-4:] == [EVAL_IMAGE, "bash", "-c", "$EVAL_COMMAND"]


def test_docker_client_keeps_a_network_given_in_extra_docker_args(tmp_path):
    client = words(commands(tmp_path, "docker", extra_docker_args="--network mynet")["client"])
    assert pairs(client, "--network") == ["mynet"]


def test_host_runs_the_commands_directly_with_container_paths_mapped(tmp_path):
    task = commands(tmp_path, "host")
    checkpoint = tmp_path / "run" / "iter_0000100"
    assert task["server"] == 'bash -c "$SERVER_COMMAND"' and task["client"] == 'bash -c "$EVAL_COMMAND"'
    assert task["server_command"] == f"python serve.py --megatron_checkpoint {checkpoint}/ --port 8000"


def test_submit_dry_run_shows_the_commands_of_the_configured_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("HPC_EVAL_REPO", str(REPO))
    run = make_run(tmp_path / "my-run" / "checkpoints", [100])
    result = hpc_eval(
        "submit",
        "-c",
        CONFIGS / "bfcl_generic_host.yaml",
        "--checkpoint",
        run / "iter_0000100",
        "--output-dir",
        tmp_path / "evals",
        "deployment.port=18555",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    shown = result.output.split("commands in the job (execution.type hpc_eval; ", 1)[1].splitlines()
    assert shown[1:3] == [
        "execution.runtime: host",
        "in each task: artifacts_dir=$task_dir/artifacts, and the cwd is work_dir=$task_dir/work",
    ]
    assert '    server: bash -c "$SERVER_COMMAND"' in shown and '    client: bash -c "$EVAL_COMMAND"' in shown
    assert f"test -f {run / 'iter_0000100'}/run_config.yaml" in result.output  # /checkpoint, mapped for the host
    assert not (tmp_path / "evals").exists()


def test_unknown_runtime_is_refused(tmp_path):
    with pytest.raises(ValueError, match="execution.runtime: 'podman' is not one of"):
        task_commands(launcher_config(tmp_path, runtime="podman"), "host")


# ---------------------------------------------------------------- auto-detection
def put_on_path(monkeypatch, tmp_path: Path, **scripts: str) -> None:
    """Executables NAME with a /bin/sh BODY, alone on PATH (the real docker and srun are hidden)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


DOCKER_DAEMON = '[ "$1" = info ] && exit 0; exit 1'
DOCKER_NO_DAEMON = "echo 'Cannot connect to the Docker daemon' >&2; exit 1"
SRUN_PYXIS = 'echo "      --container-image=[USER@][REGISTRY#]IMAGE[:TAG]|PATH"'
SRUN_PLAIN = 'echo "Usage: srun [OPTIONS(0)... [executable(0) [args(0)...]]]"'


@pytest.mark.parametrize(
    "scripts, expected",
    [
        ({"docker": DOCKER_DAEMON, "srun": SRUN_PYXIS, "apptainer": "exit 0"}, "docker"),
        ({"docker": DOCKER_NO_DAEMON, "srun": SRUN_PYXIS, "apptainer": "exit 0"}, "pyxis"),
        ({"docker": DOCKER_NO_DAEMON, "srun": SRUN_PLAIN, "apptainer": "exit 0"}, "apptainer"),
        ({"srun": SRUN_PYXIS, "apptainer": "exit 0"}, "pyxis"),
        ({"docker": DOCKER_NO_DAEMON, "srun": SRUN_PLAIN}, "host"),
        ({}, "host"),
    ],
    ids=["daemon-first", "pyxis-before-apptainer", "apptainer-before-host", "no-docker-cli", "plain-slurm", "nothing"],
)
def test_auto_takes_docker_then_pyxis_then_apptainer_then_host(monkeypatch, tmp_path, scripts, expected):
    put_on_path(monkeypatch, tmp_path, **scripts)
    chosen, reason = runtime.choose_runtime("auto")
    assert chosen == expected and reason.startswith("auto: ")


def test_auto_does_not_wait_for_a_wedged_docker_daemon(monkeypatch, tmp_path):
    put_on_path(monkeypatch, tmp_path, docker="exec sleep 30", srun=SRUN_PYXIS)
    monkeypatch.setattr(runtime, "PROBE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    assert runtime.choose_runtime("auto")[0] == "pyxis"
    assert time.monotonic() - start < 5


def test_an_explicit_runtime_is_not_probed(monkeypatch, tmp_path):
    put_on_path(monkeypatch, tmp_path, docker=DOCKER_DAEMON)
    assert runtime.choose_runtime("host") == ("host", "execution.runtime")


# ---------------------------------------------------------------- registration and dry runs
def test_register_is_explicit_and_idempotent(tmp_path):
    code = (
        "import hpc_eval.executor as r; from nemo_evaluator_launcher.executors import registry as g; "
        "assert 'hpc_eval' not in g._EXECUTOR_REGISTRY; r.register(); r.register(); "
        "assert g.get_executor('hpc_eval') is r.executor_class(); print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HOME=str(tmp_path)),
    )  # the launcher writes its logs under HOME
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def run_eval(config: dict, dry_run: bool) -> tuple[str, Path]:
    """The launcher's run_eval on `config`; (invocation id, invocation dir)."""
    from nemo_evaluator_launcher.api.functional import run_eval as launcher_run_eval
    from nemo_evaluator_launcher.api.types import RunConfig
    from omegaconf import OmegaConf

    runtime.register()
    invocation = launcher_run_eval(RunConfig(OmegaConf.create(config)), dry_run=dry_run)
    (directory,) = Path(config["execution"]["output_dir"]).glob(f"*-{invocation}")
    return invocation, directory


def decoded_config_ef(run_sh: str) -> dict:
    encoded = re.search(r'echo "([A-Za-z0-9+/=]+)" \| base64 -d > config_ef.yaml', run_sh).group(1)
    return yaml.safe_load(base64.b64decode(encoded))


def test_dry_run_writes_the_scripts_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MY_HF_TOKEN", "hf_secret_value_1234")
    invocation, directory = run_eval(launcher_config(tmp_path, runtime="pyxis"), dry_run=True)
    task_dir = directory / "bfcl.bfclv3_ast_prompting.0"
    run_sh = (task_dir / "run.sh").read_text()
    (expected,) = task_commands(launcher_config(tmp_path, runtime="pyxis"), "pyxis")
    assert expected["server"] + ' > "$logs_dir/server_stdout.log" 2>&1 &' in run_sh
    assert expected["client"] + ' > "$logs_dir/client_stdout.log" 2>&1' in run_sh
    assert "hf_secret_value_1234" not in run_sh and "hf_secret_value_1234" in (task_dir / ".secrets.env").read_text()
    assert (task_dir / ".secrets.env").stat().st_mode & 0o777 == 0o600
    assert json.loads((directory / "runtime.json").read_text()) == {"runtime": "pyxis", "reason": "execution.runtime"}
    assert (directory / "run_all.sequential.sh").is_file() and not (task_dir / "logs").exists()  # nothing ran
    assert "hpc_eval executor: runtime pyxis" in capsys.readouterr().out
    from nemo_evaluator_launcher.common.execdb import ExecutionDB

    assert not ExecutionDB().get_jobs(invocation)  # as the launcher: a dry run records nothing
    assert decoded_config_ef(run_sh)["config"]["output_dir"] == "/results"


def test_host_config_ef_points_at_the_real_artifacts_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_HF_TOKEN", "x")
    config = launcher_config(tmp_path, runtime="host")
    config["evaluation"]["nemo_evaluator_config"] = {
        "target": {"api_endpoint": {"adapter_config": {"caching_dir": "/results/cache"}}}
    }
    _, directory = run_eval(config, dry_run=True)
    artifacts = directory / "bfcl.bfclv3_ast_prompting.0" / "artifacts"
    config_ef = decoded_config_ef((artifacts.parent / "run.sh").read_text())
    assert config_ef["config"]["output_dir"] == str(artifacts)
    assert config_ef["target"]["api_endpoint"]["adapter_config"]["caching_dir"] == f"{artifacts}/cache"
    assert "/results" not in yaml.safe_dump(config_ef).replace(str(artifacts), "")


# ---------------------------------------------------------------- real runs (no Slurm)
def generic_stub_config(tmp_path: Path, port: int, **execution) -> dict:
    """A generic deployment whose server is the stub; it only starts when /checkpoint is readable."""
    config = launcher_config(tmp_path, endpoint_readiness_timeout=60, **execution)
    config["execution"]["mounts"] = {}
    config["deployment"].update(
        image="local/fake-openai:1",
        port=port,
        served_model_name="fake-model",
        command=f"test -f /checkpoint/marker && exec python3 {REPO}/scripts/fake_openai.py {port}",
        env_vars={"REPLY": f"lit:{BFCL_REPLY}", "LOG": f"lit:{tmp_path / 'server-requests.jsonl'}"},
        endpoints={"chat": "/v1/chat/completions", "completions": "/v1/completions", "health": "/health"},
    )
    Path(config["deployment"]["checkpoint_path"], "marker").write_text("x")
    config["evaluation"] = {
        "nemo_evaluator_config": {"config": {"params": {"limit_samples": 4, "parallelism": 1}}},
        "tasks": [
            {"name": "bfcl.bfclv3_ast_prompting", "nemo_evaluator_config": {"config": {"params": {"task": "simple"}}}}
        ],
    }
    return config


def wait_for_stage_exit(task_dir: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not (task_dir / "logs" / "stage.exit").exists():
        assert time.monotonic() < deadline, (task_dir / "logs" / "stdout.log").read_text()
        time.sleep(0.5)
    return (task_dir / "logs" / "stage.exit").read_text().split()[-1]


def bfcl_score(task_dir: Path) -> float:
    return read_metrics(task_dir / "artifacts" / "results.yml")["bfcl/python_simple_ast_non_live"]


def answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_host_runtime_runs_the_server_and_client_without_containers(tmp_path, monkeypatch):
    port = free_port()
    _, directory = run_eval(generic_stub_config(tmp_path, port, runtime="host"), dry_run=False)
    task_dir = directory / "bfcl.bfclv3_ast_prompting.0"
    assert wait_for_stage_exit(task_dir) == "0", (task_dir / "logs" / "client_stdout.log").read_text()[-2000:]
    assert bfcl_score(task_dir) == 25.0
    assert sorted(p.name for p in (task_dir / "work").iterdir()) == ["config_ef.yaml", "post_cmd.sh", "pre_cmd.sh"]
    requests = [json.loads(line) for line in (tmp_path / "server-requests.jsonl").read_text().splitlines()]
    assert requests[0]["method"] == "GET" and requests[0]["path"] == "/health"  # the readiness check came first
    assert sum(request["method"] == "POST" for request in requests) >= 4
    assert "server ready" in (task_dir / "logs" / "stdout.log").read_text()
    adapter_port = int(
        re.search(r"base_url=http://localhost:(\d+)", (task_dir / "logs" / "client_stdout.log").read_text()).group(1)
    )
    assert adapter_port not in range(3825, 3900)  # its own port, not the first free one every evaluation races for
    assert not answers(port)  # stopped once the client was done


@pytest.mark.slow
def test_resume_runs_the_scripts_again_and_reuses_the_response_cache(tmp_path):
    """What the payload does when a requeued job starts again: the launcher's resume_eval."""
    from nemo_evaluator_launcher.api.functional import get_status, resume_eval

    invocation, directory = run_eval(generic_stub_config(tmp_path, free_port(), runtime="host"), dry_run=False)
    task_dir = directory / "bfcl.bfclv3_ast_prompting.0"
    assert wait_for_stage_exit(task_dir) == "0"
    posts = sum(
        json.loads(line)["method"] == "POST" for line in (tmp_path / "server-requests.jsonl").read_text().splitlines()
    )
    first_exit = (task_dir / "logs" / "stage.exit").read_text()
    assert resume_eval(invocation) == invocation
    assert (
        not (task_dir / "logs" / "stage.exit").exists() or (task_dir / "logs" / "stage.exit").read_text() != first_exit
    )
    assert wait_for_stage_exit(task_dir) == "0" and bfcl_score(task_dir) == 25.0
    requests = [json.loads(line) for line in (tmp_path / "server-requests.jsonl").read_text().splitlines()]
    assert sum(request["method"] == "POST" for request in requests) == posts  # every answer came from the cache
    assert [status["status"] for status in get_status([invocation])] == ["success"]


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_stops_the_host_runtimes_server_and_client(tmp_path, monkeypatch):
    """The payload's cancel works unchanged: the server and the harness live in the script's session."""
    result, port, requests_log = submit_generic_host(tmp_path, monkeypatch, "+deployment.env_vars.DELAY_S=lit:5")
    ((task,),) = [job["tasks"] for job in result["jobs"]]
    deadline = time.monotonic() + 120
    while not (requests_log.exists() and '"POST"' in requests_log.read_text()):  # the harness is asking the model
        assert time.monotonic() < deadline, "the evaluation never reached the model server"
        time.sleep(0.3)
    subprocess.run(["scancel", task["slurm_job_id"]], check=True)
    wait_until_gone_from_queue(task["slurm_job_id"])
    time.sleep(2)
    summary = json.loads((Path(task["eval_dir"]) / "summary.json").read_text())
    assert summary["state"] == "CANCELLED" and summary["server_port"] != port  # the job's own port
    assert (
        processes_mentioning(task["eval_dir"]) == []
        and processes_mentioning(f"fake_openai.py {summary['server_port']}") == []
    )
    assert not answers(summary["server_port"])
