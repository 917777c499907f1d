"""The payload in real Slurm jobs: run_eval, waiting, summary.json, cancel, requeue, vanished checkpoints.

Replaced at the process boundary only: the model (a stub HTTP server on 127.0.0.1). Slurm,
submitit, the launcher, the docker daemon (private, scripts/start-docker.sh) with the bfcl image
built locally, and the bfcl harness are real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import (
    CONFIGS,
    hpc_eval,
    processes_mentioning,
    release_requeue_hold,
    submit_json,
    wait_for_file,
    wait_for_state,
    wait_until_gone_from_queue,
)
from support.fakeckpt import make_run

pytestmark = pytest.mark.slurm

BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"  # right for 1 of the 4 `simple` samples


@pytest.fixture
def bfcl_env(monkeypatch, start_stub, real_docker):
    """The environment a user's shell would have: the stub's URL, DOCKER_HOST of a real daemon."""
    stub = start_stub(reply=BFCL_REPLY)
    monkeypatch.setenv("STUB_URL", stub.url)
    return stub


def only_evaluation(result: dict) -> tuple[str, Path]:
    (job,) = result["jobs"]
    (task,) = job["tasks"]
    return task["slurm_job_id"], Path(task["eval_dir"])


def read_summary(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "summary.json").read_text())


def test_launcher_dry_run_key_runs_run_eval_in_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("NVIDIA_API_KEY", "not-a-real-key")
    result = submit_json("-c", "tiny_chat", "dry_run=true", "slurm.cpus_per_task=1", "--output-dir", tmp_path)
    job_id, eval_dir = only_evaluation(result)
    assert result["status_command"] == f"hpc-eval status {tmp_path}"
    assert result["logs_command"] == f"hpc-eval logs {eval_dir}"
    assert wait_for_state(job_id) == "COMPLETED"
    (task,) = result["jobs"][0]["tasks"]
    assert Path(task["stdout"]) == eval_dir / "submitit" / f"{job_id}_0_log.out" and Path(task["stdout"]).is_file()
    summary = read_summary(eval_dir)
    assert summary["state"] == "COMPLETED" and summary["dry_run"] is True
    assert any(script.endswith("mmlu_instruct.0/run.sh") for script in summary["scripts"])
    assert Path(summary["invocation_dir"], "run_all.sequential.sh").is_file()
    assert "not-a-real-key" not in (eval_dir / "launcher_config.yaml").read_text()  # passed by name
    (secrets,) = Path(summary["invocation_dir"]).rglob(".secrets.env")  # the launcher's, with the value
    assert secrets.stat().st_mode & 0o077 == 0, "resolved secrets must be readable by the owner only"


@pytest.mark.slow
def test_real_evaluation_writes_metrics_and_sees_its_gpu(tmp_path, bfcl_env):
    result = submit_json("-c", CONFIGS / "bfcl_stub.yaml", "--output-dir", tmp_path)
    job_id, eval_dir = only_evaluation(result)
    assert wait_for_state(job_id) == "COMPLETED"
    summary = read_summary(eval_dir)
    (task,) = summary["tasks"].values()
    assert task["status"] == "success"
    assert task["metrics"]["bfcl/python_simple_ast_non_live"] == 25.0
    assert summary["cuda_visible_devices"] in {"0", "1"}  # slurm.gpus_per_node: 1 reached the job (one of 2 fake GPUs)
    assert bfcl_env.requests() >= 4  # the harness really talked to the model server


@pytest.mark.slow
def test_failed_evaluation_fails_the_job_with_its_reason(tmp_path, bfcl_env, monkeypatch):
    """The image is not on the node and cannot be pulled: one reason, at once, no hang."""
    monkeypatch.setenv("NEMO_EVALUATOR_TRUST_UNLISTED_TASKS", "1")  # a `container` override is unlisted
    started = time.monotonic()
    result = submit_json(
        "-c",
        CONFIGS / "bfcl_stub.yaml",
        "--output-dir",
        tmp_path,
        "+evaluation.tasks.0.container=local/no-such-image:1",
    )
    job_id, eval_dir = only_evaluation(result)
    assert wait_for_state(job_id, timeout=60) == "FAILED"
    assert time.monotonic() - started < 60
    summary = read_summary(eval_dir)
    assert summary["state"] == "FAILED" and summary["failure"] == "task_failed"
    assert "bfcl.bfclv3_ast_prompting.0" in summary["reason"] and "exit code 125" in summary["reason"]
    assert "docker: Error response from daemon" in summary["reason"]  # the pull that cannot reach a registry
    (log,) = eval_dir.rglob("client_stdout.log")
    assert "Unable to find image 'local/no-such-image:1' locally" in log.read_text()
    status = json.loads(hpc_eval("status", tmp_path, "--json").output)
    assert [row["state"] for row in status] == ["FAILED"] and "exit code 125" in status[0]["reason"]


@pytest.mark.slow
def test_scancel_leaves_no_process_behind(tmp_path, bfcl_env, monkeypatch, start_stub, real_docker):
    slow = start_stub(reply=BFCL_REPLY, delay_s=3)
    monkeypatch.setenv("STUB_URL", slow.url)
    result = submit_json("-c", CONFIGS / "bfcl_stub.yaml", "--output-dir", tmp_path)
    job_id, eval_dir = only_evaluation(result)
    deadline = time.monotonic() + 240  # queue wait and a real container start on a busy machine
    while slow.requests() < 1:  # the harness is in its request phase
        assert time.monotonic() < deadline, "the evaluation never reached the model"
        time.sleep(0.3)
    subprocess.run(["scancel", job_id], check=True)
    wait_until_gone_from_queue(job_id)
    time.sleep(2)
    assert processes_mentioning(str(eval_dir)) == []
    assert processes_mentioning("bfcl generate") == []
    seen = slow.requests()
    time.sleep(4)
    assert slow.requests() == seen, "something kept evaluating after the job was cancelled"
    summary = read_summary(eval_dir)
    assert summary["state"] == "CANCELLED"
    assert summary["cleanup"]["containers_killed"], "the containers (outside the job) were not killed"
    assert real_docker.containers_using(tmp_path) == {}  # killed and removed: names free for a resume


@pytest.mark.slow
def test_vanished_checkpoint_fails_with_its_own_reason(tmp_path, bfcl_env):
    run = make_run(tmp_path / "train" / "checkpoints", [100])
    checkpoint = run / "iter_0000100"
    result = submit_json(
        "-c",
        CONFIGS / "bfcl_stub.yaml",
        "--checkpoint",
        checkpoint,
        "--output-dir",
        tmp_path / "out",
        "+slurm.additional_parameters.hold=true",
    )
    job_id, eval_dir = only_evaluation(result)
    shutil.rmtree(checkpoint)  # training's retention deleted it while the job waited in the queue
    subprocess.run(["scontrol", "release", job_id], check=True)
    assert wait_for_state(job_id) == "FAILED"
    summary = read_summary(eval_dir)
    assert summary["failure"] == "checkpoint_missing"
    assert str(checkpoint) in summary["reason"] and "no longer exists" in summary["reason"]


@pytest.mark.slow
def test_time_limit_requeues_and_resumes_the_same_invocation(tmp_path, bfcl_env, monkeypatch, start_stub):
    delay_file = tmp_path / "stub-delay"
    delay_file.write_text("20")  # 4 samples at 20 s each cannot finish in the 60 s before the signal
    monkeypatch.setenv("DELAY_FILE", str(delay_file))
    slow = start_stub(reply=BFCL_REPLY)
    monkeypatch.setenv("STUB_URL", slow.url)
    result = submit_json(
        "-c", CONFIGS / "bfcl_stub.yaml", "--output-dir", tmp_path / "out", "slurm.time=2", "slurm.signal_delay_s=60"
    )  # ~60 s per attempt: real containers start slowly
    job_id, eval_dir = only_evaluation(result)
    wait_for_file(eval_dir / "summary.json", timeout=150)
    first = read_summary(eval_dir)
    assert first["state"] == "REQUEUED" and first["attempt"] == 1
    delay_file.write_text("0")  # the second attempt may finish
    deadline = time.monotonic() + 150
    while not (read_summary(eval_dir)["attempt"] == 2 and read_summary(eval_dir)["state"] != "REQUEUED"):
        assert time.monotonic() < deadline, read_summary(eval_dir)
        if read_summary(eval_dir)["attempt"] == 1:
            release_requeue_hold(job_id, eval_dir)
        time.sleep(2)
    second = read_summary(eval_dir)
    logs = {log.name: log.read_text()[-2000:] for log in eval_dir.rglob("logs/*.log")}
    assert second["state"] == "COMPLETED", (second.get("reason"), second.get("tasks"), logs)
    assert second["invocation_id"] == first["invocation_id"]  # resumed, not started again
    assert wait_for_state(job_id) == "COMPLETED"
