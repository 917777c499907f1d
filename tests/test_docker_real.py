"""The docker runtime against a real, private docker daemon (scripts/start-docker.sh) with the bfcl
image built locally (scripts/build-test-image.sh): what the old stand-in could not show.

Through the real local Slurm with the hpc_eval executor (`runtime: docker`); the launcher's own
`local` executor is covered by test_payload_slurm.py, test_status_slurm.py and test_watch.py.
Only the model is replaced: scripts/fake_openai.py, on the host or as the server container.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpc_eval.cleanup import kill_containers
from hpc_eval.launcher_tree import read_metrics
from hpc_eval.payload import CLEANUP_BUDGET_S
from slurm_helpers import CONFIGS, REPO, free_port, submit_json, wait_for_state, wait_until_gone_from_queue
from support.fakeckpt import make_run

BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"  # right for 1 of the 4 `simple` samples
SCORE = "bfcl/python_simple_ast_non_live"
UNPRIVILEGED = "hpc-eval-docker"  # a user in the `docker` group, created for the test session


def only_task(result: dict) -> tuple[str, Path]:
    ((task,),) = [job["tasks"] for job in result["jobs"]]
    return task["slurm_job_id"], Path(task["eval_dir"])


def summary_of(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "summary.json").read_text())


def task_dir_of(eval_dir: Path) -> Path:
    (task_dir,) = Path(summary_of(eval_dir)["invocation_dir"]).glob("bfcl.*")
    return task_dir


def job_gpu_ids(job_id: str) -> str:
    """The global GPU ids Slurm gives the job (`scontrol -d`: GRES=gpu:1(IDX:1)), read while it
    runs: a finished job no longer shows them."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run(["scontrol", "-d", "show", "job", job_id], capture_output=True, text=True).stdout
        found = re.search(r"gpu(?::\w+)?:\d+\(IDX:([\d,-]+)\)", out)
        if found:
            return found.group(1)
        assert "JobState=PENDING" in out or "JobState=RUNNING" in out, out
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never showed its GPUs")


def submit_generic(tmp_path: Path, *extra: str, mounts: dict | None = None) -> tuple[str, Path, int]:
    """tests/configs/bfcl_generic_docker.yaml on one fake checkpoint, on a free port, with the stub
    mounted at /stub (and `mounts`: host path -> container path)."""
    config = yaml.safe_load((CONFIGS / "bfcl_generic_docker.yaml").read_text())
    config["execution"]["mounts"] = {"deployment": {str(REPO / "scripts"): "/stub", **(mounts or {})}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    run = make_run(tmp_path / "my-run" / "checkpoints", [100])
    result = submit_json(
        "-c",
        tmp_path / "config.yaml",
        "--checkpoint",
        run / "iter_0000100",
        "--output-dir",
        tmp_path / "evals",
        f"deployment.port={port}",
        *extra,
    )
    job_id, eval_dir = only_task(result)
    return job_id, eval_dir, port


# ---------------------------------------------------------------- the daemon itself
def test_the_daemon_is_private_and_behaves_like_docker(tmp_path, real_docker):
    without = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    assert subprocess.run(["docker", "info"], env=without, capture_output=True, timeout=30).returncode != 0, (
        "a docker daemon answers on the default socket: `runtime: auto` would pick docker for everyone"
    )
    relative = real_docker.docker("run", "--rm", "-v", "relative/dir:/x", real_docker.image, "true")
    assert relative.returncode == 125 and "relative/dir" in relative.stderr
    started = time.monotonic()
    missing = real_docker.docker("run", "--rm", "local/no-such-image:1", "true")
    assert missing.returncode == 125 and "Unable to find image" in missing.stderr
    assert time.monotonic() - started < 20  # no registry: fails at once, does not hang
    gpus = real_docker.docker(
        "run", "--rm", "--gpus", '"device=1"', real_docker.image, "sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES"
    )
    assert gpus.returncode == 0 and gpus.stdout.strip() == "1", gpus.stderr
    volume = tmp_path / "vol"
    volume.mkdir()
    wrote = real_docker.docker(
        "run", "--rm", "-v", f"{volume}:/results", real_docker.image, "sh", "-c", "echo x > /results/f"
    )
    assert wrote.returncode == 0 and (volume / "f").stat().st_uid == 0  # written by the container's root


def test_kill_containers_is_fast_when_pid1_ignores_term(tmp_path, real_docker):
    """`docker stop` waits 10 s for a PID 1 that ignores TERM (sh -c); kill then rm does not."""
    names = [f"hpc-eval-test-kill-{os.getpid()}-{i}" for i in range(2)]
    for name in names:
        started = real_docker.docker(
            "run", "-d", "--name", name, "-v", f"{tmp_path}:/t", real_docker.image, "sh", "-c", "sleep 100; true"
        )
        assert started.returncode == 0, started.stderr
    before = time.monotonic()
    kill_containers(names, budget_s=CLEANUP_BUDGET_S / 2)
    took = time.monotonic() - before
    assert real_docker.containers_using(tmp_path) == {}
    assert took < CLEANUP_BUDGET_S / 2, f"kill then rm took {took:.1f} s"
    print(f"kill_containers of 2 running containers: {took:.2f} s")


# ---------------------------------------------------------------- hpc_eval executor, runtime: docker
@pytest.mark.slurm
@pytest.mark.slow
def test_no_deployment_evaluation_leaves_no_container(tmp_path, monkeypatch, start_stub, real_docker):
    stub = start_stub(reply=BFCL_REPLY)
    monkeypatch.setenv("STUB_URL", stub.url)
    result = submit_json(
        "-c",
        CONFIGS / "bfcl_stub.yaml",
        "--output-dir",
        tmp_path,
        "execution.type=hpc_eval",
        "+execution.runtime=docker",
        "slurm.gpus_per_node=0",
    )
    job_id, eval_dir = only_task(result)
    assert wait_for_state(job_id) == "COMPLETED", summary_of(eval_dir)
    (task,) = summary_of(eval_dir)["tasks"].values()
    assert task["status"] == "success" and task["metrics"][SCORE] == 25.0
    assert stub.requests() >= 4
    assert real_docker.containers_using(tmp_path) == {}
    results = task_dir_of(eval_dir) / "artifacts" / "results.yml"
    assert results.stat().st_mode & 0o777 == 0o777  # written as the container's root, opened up for the user


@pytest.mark.slurm
@pytest.mark.slow
def test_generic_server_container_gets_exactly_the_jobs_gpu(tmp_path, monkeypatch, real_docker):
    job_id, eval_dir, port = submit_generic(tmp_path)
    gpus = job_gpu_ids(job_id)
    assert wait_for_state(job_id) == "COMPLETED", summary_of(eval_dir)
    task_dir = task_dir_of(eval_dir)
    assert read_metrics(task_dir / "artifacts" / "results.yml")[SCORE] == 25.0
    server_log = (task_dir / "logs" / "server_stdout.log").read_text()
    assert gpus in {"0", "1"} and f"NVIDIA_VISIBLE_DEVICES={gpus}\n" in server_log  # one of 2 GPUs, not all
    assert real_docker.containers_using(tmp_path) == {}  # server stopped and removed, client removed
    script = (task_dir / "run.sh").read_text()
    runs = [line for line in script.splitlines() if line.strip().startswith("docker run")]
    sources = [shlex.split(spec)[0].split(":")[0] for line in runs for spec in re.findall(r" -v (\S+)", line)]
    assert len(sources) == 3 and all(s.startswith("/") for s in sources[:2]), sources  # checkpoint, /stub
    assert sources[2] == "$artifacts_dir"  # the client's /results: an absolute path set by the script


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_removes_server_and_client_containers_within_the_budget(tmp_path, monkeypatch, real_docker):
    logs = tmp_path / "server-log"
    logs.mkdir()
    job_id, eval_dir, _ = submit_generic(
        tmp_path,
        "+deployment.env_vars.DELAY_S=lit:5",
        "+deployment.env_vars.LOG=lit:/log/requests.jsonl",
        mounts={str(logs): "/log"},
    )
    deadline = time.monotonic() + 120
    while not ((logs / "requests.jsonl").exists() and '"POST"' in (logs / "requests.jsonl").read_text()):
        assert time.monotonic() < deadline, "the evaluation never reached the model server"
        time.sleep(0.3)
    assert len(real_docker.containers_using(tmp_path)) == 2  # server and client run
    cancelled = time.monotonic()
    subprocess.run(["scancel", job_id], check=True)
    while real_docker.containers_using(tmp_path):  # before Slurm's KillWait (5 s here) ends the clean-up
        assert time.monotonic() - cancelled < CLEANUP_BUDGET_S + 5, real_docker.containers_using(tmp_path)
        time.sleep(0.2)
    print(f"containers gone {time.monotonic() - cancelled:.1f} s after scancel")
    wait_until_gone_from_queue(job_id)
    assert summary_of(eval_dir)["state"] == "CANCELLED"


@pytest.mark.slurm
@pytest.mark.slow
def test_server_bound_to_localhost_is_unreachable_and_the_user_is_told(tmp_path, monkeypatch, real_docker):
    """On docker's bridge network, -p PORT:PORT forwards to the container's own address: a server
    on 127.0.0.1 inside it never answers the readiness check."""
    job_id, eval_dir, port = submit_generic(
        tmp_path, "deployment.env_vars.BIND=lit:127.0.0.1", "execution.endpoint_readiness_timeout=8"
    )
    assert wait_for_state(job_id, timeout=120) == "FAILED"
    summary = summary_of(eval_dir)
    assert "did not answer 200 within 8s" in summary["reason"]
    assert "listen on 0.0.0.0" in summary["reason"]  # the hint: listen on all addresses in the container
    assert summary["failure"] == "task_failed"
    assert real_docker.containers_using(tmp_path) == {}


@pytest.mark.slurm
@pytest.mark.slow
def test_missing_server_image_fails_at_once_with_its_reason(tmp_path, monkeypatch, real_docker):
    started = time.monotonic()
    job_id, eval_dir, _ = submit_generic(
        tmp_path, "deployment.image=local/no-such-server:1", "execution.endpoint_readiness_timeout=600"
    )
    assert wait_for_state(job_id, timeout=120) == "FAILED"
    assert time.monotonic() - started < 120  # not the 600 s readiness timeout
    task_dir = task_dir_of(eval_dir)
    assert (
        "Unable to find image 'local/no-such-server:1' locally" in (task_dir / "logs" / "server_stdout.log").read_text()
    )
    assert "the server process exited before it was ready" in summary_of(eval_dir)["reason"]
    assert real_docker.containers_using(tmp_path) == {}


# ---------------------------------------------------------------- as a user in the docker group
@pytest.fixture(scope="session")
def docker_group_user() -> pwd.struct_passwd:
    """An unprivileged user in the `docker` group (created once; root hides file ownership)."""
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root")
    try:
        return pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--groups", "docker", UNPRIVILEGED], check=True)
    return pwd.getpwnam(UNPRIVILEGED)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_docker_group_user_gets_results_it_can_read_and_delete(tmp_path, start_stub, real_docker, docker_group_user):
    stub = start_stub(reply=BFCL_REPLY)
    home = Path(docker_group_user.pw_dir) / f"test-{os.getpid()}-{time.time_ns()}"  # pytest's tmp_path is root's, 0700
    home.mkdir()
    os.chown(home, docker_group_user.pw_uid, docker_group_user.pw_gid)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "DOCKER_HOST": real_docker.host,
        "STUB_URL": stub.url,
        "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0",
        "NEMO_EVALUATOR_EXEC_DB_FILE": str(home / "exec-db.jsonl"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    as_user = ["runuser", "-u", UNPRIVILEGED, "--"]  # with its groups (docker), as a Slurm job gets them
    hpc_eval_bin = str(Path(sys.executable).parent / "hpc-eval")  # the tests' own venv
    if subprocess.run(
        [*as_user, sys.executable, "-c", "import hpc_eval"], env=env, cwd=home, capture_output=True
    ).returncode:
        pytest.skip(
            f"{UNPRIVILEGED} cannot run {sys.executable} (a venv on an interpreter under /root?): "
            "make .venv from /usr/bin/python3, as scripts/setup.sh does on CI"
        )
    out = home / "out"
    submitted = subprocess.run(
        [
            *as_user,
            hpc_eval_bin,
            "submit",
            "-c",
            str(CONFIGS / "bfcl_stub.yaml"),
            "--output-dir",
            str(out),
            "execution.type=hpc_eval",
            "+execution.runtime=docker",
            "slurm.gpus_per_node=0",
            "--json",
        ],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id, eval_dir = only_task(json.loads(submitted.stdout))
    assert wait_for_state(job_id) == "COMPLETED", summary_of(eval_dir)
    results = subprocess.run(
        [*as_user, hpc_eval_bin, "results", str(out), "--format", "json", "--metric", SCORE],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert results.returncode == 0 and [row[SCORE] for row in json.loads(results.stdout)] == [25.0], results.stderr
    owners = {p.stat().st_uid for p in (task_dir_of(eval_dir) / "artifacts").rglob("*")}
    assert 0 in owners  # the container wrote as root: what a root-run test never notices
    removed = subprocess.run([*as_user, "rm", "-rf", str(out)], env=env, capture_output=True, text=True)
    assert removed.returncode == 0 and not out.exists(), removed.stderr
    subprocess.run(["rm", "-rf", str(home)], check=True)
