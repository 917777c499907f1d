"""The test fixtures themselves, for real: the local Slurm runs submitit jobs, GPUs reach jobs,
the sbatch counter counts real sbatch calls, the stub server answers, the docker stand-in runs a
"container", and the slurm_cluster check skips (or, in CI, fails) without Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cloudpickle
import pytest
import submitit

# submitit pickles functions by reference, and the job cannot import this test module:
# send its functions by value instead.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def job_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "CUDA_", "GPU_"))}


def fetch(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def slurm_executor(folder: Path, **parameters) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder / "%j")
    assert executor.cluster == "slurm", "submitit fell back to local execution"
    executor.update_parameters(**{"timeout_min": 5, "slurm_partition": "debug", "cpus_per_task": 1, **parameters})
    return executor


def final_state(job: submitit.Job, timeout: float = 20.0) -> str:
    """sacct's state for the job; job.state is cached and sacct can lag a second or two."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = job.watcher.get_state(job.job_id, mode="force")
        if state not in ("UNKNOWN", "PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            return state
        time.sleep(0.5)
    return state


@pytest.mark.slurm
def test_slurm_cluster_reports_what_start_slurm_configures(slurm_cluster):
    assert slurm_cluster.gpus >= 1
    assert slurm_cluster.cpus >= 2
    assert slurm_cluster.max_array_size >= 1001
    assert {"debug", "gpu"} <= set(slurm_cluster.partitions)


@pytest.mark.slurm
def test_submitit_job_runs_on_the_local_slurm(tmp_path):
    job = slurm_executor(tmp_path).submit(square, 7)
    assert job.result() == 49
    assert final_state(job) == "COMPLETED"


@pytest.mark.slurm
def test_gpu_request_reaches_the_job(tmp_path):
    job = slurm_executor(tmp_path, slurm_partition="gpu", gpus_per_node=1).submit(job_env)
    env = job.result()
    assert env.get("CUDA_VISIBLE_DEVICES") in {"0", "1"}, env
    assert env.get("SLURM_JOB_PARTITION") == "gpu"


@pytest.mark.slurm
def test_sbatch_counter_counts_one_call_per_submit_and_per_array(tmp_path, count_sbatch, count_calls):
    sacct = count_calls("sacct")
    executor = slurm_executor(tmp_path)
    job = executor.submit(square, 3)
    assert job.result() == 9
    assert count_sbatch.count() == 1

    jobs = executor.map_array(square, range(5))
    assert [j.result() for j in jobs] == [0, 1, 4, 9, 16]
    assert count_sbatch.count() == 2, count_sbatch.calls()  # one more call for the whole array
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1

    jobs[0].done(force_check=True)  # polls sacct
    assert sacct.count() >= 1


@pytest.mark.slurm
def test_jobs_reach_the_stub_server(tmp_path, stub_server):
    job = slurm_executor(tmp_path).submit(fetch, f"{stub_server.url}/v1/models")
    assert job.result()["data"][0]["id"] == "fake-model"
    assert [r["path"] for r in stub_server.request_log()] == ["/v1/models"]
    assert stub_server.requests() == 1


def test_stub_server_answers_chat_and_completions(start_stub):
    stub = start_stub(reply="The answer is \\boxed{2}.", model_id="tiny")
    assert fetch(f"{stub.url}/health") == {"status": "ok"}
    assert fetch(f"{stub.url}/v1/models")["data"][0]["id"] == "tiny"
    chat = fetch(
        f"{stub.url}/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "What is 1+1?"}], "n": 2},
    )
    assert [c["message"]["content"] for c in chat["choices"]] == ["The answer is \\boxed{2}."] * 2
    completion = fetch(
        f"{stub.url}/v1/completions",
        {"prompt": "one two", "echo": True, "logprobs": 1, "max_tokens": 0},
    )
    logprobs = completion["choices"][0]["logprobs"]
    assert completion["choices"][0]["text"] == "one two"
    assert logprobs["tokens"] == ["one", " two"] and logprobs["token_logprobs"] == [None, -1.0]
    assert stub.request_log()[2]["body"]["messages"][0]["content"] == "What is 1+1?"
    assert stub.requests() == 4


def test_stub_server_delay_and_clean_stop(start_stub):
    stub = start_stub(delay_s=0.5)
    started = time.monotonic()
    fetch(f"{stub.url}/v1/chat/completions", {"messages": []})
    assert time.monotonic() - started >= 0.5
    stub.stop()
    assert stub.proc.returncode == 0


@pytest.mark.parametrize("require", ["", "1"])
def test_slurm_marker_skips_without_slurm_but_fails_in_ci(tmp_path, require):
    """Run one slurm-marked test in a child pytest that cannot find Slurm (empty PATH)."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty), HPC_EVAL_REQUIRE_SLURM=require)
    target = f"{Path(__file__).name}::test_slurm_cluster_reports_what_start_slurm_configures"
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", target],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "local Slurm is not running: start it with `bash scripts/start-slurm.sh`" in child.stdout
    if require:
        assert child.returncode == 1 and "1 error" in child.stdout, child.stdout
    else:
        assert child.returncode == 0 and "1 skipped" in child.stdout, child.stdout
