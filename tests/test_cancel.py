"""`hpc-eval cancel` on a running array on the real local Slurm: one scancel, records say "cancelled by user"."""

from __future__ import annotations

import json
import time

import pytest

from hpc_eval.status import collect_status
from hpc_eval.watch import WatchOptions, retry_reason
from slurm_helpers import (
    CONFIGS,
    hpc_eval,
    processes_mentioning,
    submit_json,
    wait_for_state,
    wait_until_gone_from_queue,
)
from support.fakeckpt import make_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"


def test_cancel_a_running_array_leaves_every_evaluation_cancelled_by_user(
    tmp_path, monkeypatch, start_stub, real_docker, count_calls
):
    slow = start_stub(reply=BFCL_REPLY, delay_s=30)  # every request takes 30 s: the tasks stay running
    monkeypatch.setenv("STUB_URL", slow.url)
    run = make_run(tmp_path / "train" / "checkpoints", [100, 200])
    out = tmp_path / "out"
    submitted = submit_json(
        "-c", CONFIGS / "bfcl_stub.yaml", "--checkpoint", run, "--all", "--output-dir", out, "slurm.gpus_per_node=0"
    )
    (array,) = submitted["jobs"]
    task_ids = [task["slurm_job_id"] for task in array["tasks"]]
    for job_id in task_ids:
        wait_for_state(job_id, {"RUNNING"})
    deadline = time.monotonic() + 180
    while slow.requests() < 2:  # both harnesses wait on the model
        assert time.monotonic() < deadline, "the evaluations never reached the model"
        time.sleep(0.5)

    refused = hpc_eval("cancel", out)
    assert refused.exit_code == 2 and "add --all" in refused.output

    scancel = count_calls("scancel")
    result = hpc_eval("cancel", out, "--all", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(item["job_id"] for item in json.loads(result.output)["cancelled"]) == sorted(task_ids)
    assert scancel.count() == 1

    for job_id in task_ids:
        assert wait_for_state(job_id) == "CANCELLED"
        wait_until_gone_from_queue(job_id)
    rows = collect_status([out])
    assert [(row.state, row.reason) for row in rows] == [("CANCELLED", "cancelled by user")] * 2
    table = hpc_eval("status", out).output
    assert table.count("cancelled by user") == 2
    time.sleep(2)
    assert processes_mentioning(str(out)) == []
    assert real_docker.containers_using(tmp_path) == {}  # the clients' containers were killed and removed
    assert processes_mentioning("bfcl generate") == []
    assert [retry_reason(row.state, row.attempts, row.created_at, WatchOptions()) for row in rows] == ["", ""]
    assert all(retry_reason(row.state, row.attempts, row.created_at, WatchOptions(retry_failed=True)) for row in rows)

    again = hpc_eval("cancel", out, "--all")
    assert again.exit_code == 0 and "nothing to cancel" in again.output


def test_cancel_of_an_unknown_target_is_one_usage_error(tmp_path):
    result = hpc_eval("cancel", "nosuchrun:100", "--output-dir", tmp_path)
    assert result.exit_code == 2
    assert result.output.startswith("Error: no evaluation found for 'nosuchrun:100'")
