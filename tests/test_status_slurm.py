"""`status` and `results --missing --resubmit` against real jobs on the local Slurm."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import CONFIGS, hpc_eval, submit_json, wait_for_state
from support.fakeckpt import make_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"


def status_rows(root: Path) -> dict[str, dict]:
    result = hpc_eval("status", root, "--json")
    assert result.exit_code == 0, result.output
    return {row["job_id"]: row for row in json.loads(result.output)}


def test_status_shows_each_state_with_one_squeue_and_one_sacct_call(
    tmp_path, monkeypatch, start_stub, real_docker, count_calls
):
    slow = start_stub(reply=BFCL_REPLY, delay_s=30)
    monkeypatch.setenv("STUB_URL", slow.url)
    run = make_run(tmp_path / "train" / "checkpoints", [100, 200, 300])
    out = tmp_path / "out"
    dry = ["dry_run=true", "slurm.gpus_per_node=0", "slurm.cpus_per_task=1"]
    array = submit_json("-c", CONFIGS / "bfcl_stub.yaml", "--checkpoint", run, "--all", "--output-dir", out, *dry)
    (array_job,) = array["jobs"]
    completed_ids = [task["slurm_job_id"] for task in array_job["tasks"]]
    running = submit_json(
        "-c", CONFIGS / "bfcl_stub.yaml", "--output-dir", out, "--run", "slow", "slurm.gpus_per_node=0"
    )
    cancelled = submit_json(
        "-c", CONFIGS / "bfcl_stub.yaml", "--output-dir", out, "--run", "cancelled", "slurm.gpus_per_node=0"
    )
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")  # a node whose docker is down
    failed = submit_json(
        "-c", CONFIGS / "bfcl_stub.yaml", "--output-dir", out, "--run", "broken", "slurm.gpus_per_node=0"
    )
    running_id, cancelled_id, failed_id = (r["jobs"][0]["job_id"] for r in (running, cancelled, failed))
    for job_id in completed_ids:
        assert wait_for_state(job_id) == "COMPLETED"
    assert wait_for_state(failed_id) == "FAILED"
    wait_for_state(running_id, {"RUNNING"})
    wait_for_state(cancelled_id, {"RUNNING"})
    subprocess.run(["scancel", cancelled_id], check=True)
    deadline = time.monotonic() + 60
    while status_rows(out)[cancelled_id]["state"] != "CANCELLED":  # COMPLETING while Slurm kills it
        assert time.monotonic() < deadline
        time.sleep(0.5)

    sacct, squeue = count_calls("sacct"), count_calls("squeue")
    rows = status_rows(out)
    assert sacct.count() == 1 and squeue.count() == 1  # for 6 evaluations, not one call each
    assert [rows[job]["state"] for job in completed_ids] == ["COMPLETED"] * 3
    assert all("_" in job for job in completed_ids)  # array tasks as A_a
    assert [rows[job]["iteration"] for job in completed_ids] == [100, 200, 300]
    assert rows[running_id]["state"] == "RUNNING"
    assert rows[cancelled_id]["state"] == "CANCELLED"
    assert rows[failed_id]["state"] == "FAILED" and "exit code 125" in rows[failed_id]["reason"]
    table = hpc_eval("status", out).output.splitlines()
    assert table[0].split() == ["run", "iteration", "config_hash", "job_id", "state", "attempts", "elapsed", "reason"]
    subprocess.run(["scancel", running_id], check=False)


def test_missing_results_are_resubmitted_as_one_array_and_resume(
    tmp_path, monkeypatch, start_stub, real_docker, count_calls
):
    count_sbatch = count_calls("sbatch")  # after PATH is set, so that its wrapper stays first
    stub = start_stub(reply=BFCL_REPLY)
    monkeypatch.setenv("STUB_URL", stub.url)
    run = make_run(tmp_path / "train" / "checkpoints", [100, 200])
    out = tmp_path / "out"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")  # the first attempt fails: docker is down
    first = submit_json(
        "-c", CONFIGS / "bfcl_stub.yaml", "--checkpoint", run, "--all", "--output-dir", out, "slurm.gpus_per_node=0"
    )
    for task in first["jobs"][0]["tasks"]:
        assert wait_for_state(task["slurm_job_id"]) == "FAILED"
    missing = hpc_eval("results", out, "--missing", "--format", "json")
    assert [(row["iteration"], row["task"]) for row in json.loads(missing.output)] == [
        (100, "bfcl.bfclv3_ast_prompting.0"),
        (200, "bfcl.bfclv3_ast_prompting.0"),
    ]

    monkeypatch.setenv("DOCKER_HOST", real_docker.host)
    calls_before = count_sbatch.count()
    resubmitted = hpc_eval("results", out, "--missing", "--resubmit")
    assert resubmitted.exit_code == 0, resubmitted.output
    assert "resubmitted 2 evaluation(s)" in resubmitted.output
    assert count_sbatch.count() == calls_before + 1  # one array
    for row in json.loads(hpc_eval("status", out, "--json").output):
        assert row["attempts"] == 2
        assert wait_for_state(row["job_id"]) == "COMPLETED"
    table = hpc_eval("results", out, "--format", "json", "--metric", "bfcl/python_simple_ast_non_live")
    scores = [(row["iteration"], row["bfcl/python_simple_ast_non_live"]) for row in json.loads(table.output)]
    assert scores == [(100, 25.0), (200, 25.0)]
    assert json.loads(hpc_eval("results", out, "--missing", "--format", "json").output) == []
