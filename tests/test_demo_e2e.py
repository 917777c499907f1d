"""End to end on the real local Slurm, as the demo runs it: no docker, no container at all.

`hpc-eval submit` over a fake Megatron Bridge run's checkpoints -> one job array -> the payload
-> the launcher's run_eval -> the hpc_eval executor on the host runtime -> the real bfcl harness
-> the stub model server -> real results.yml -> summary.json -> `hpc-eval results`. Replaced at
the process boundary only: the model (scripts/fake_openai.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_helpers import CONFIGS, hpc_eval, processes_mentioning, submit_generic_host, submit_json, wait_for_state
from support.fakeckpt import make_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"  # right for 1 of the 4 `simple` samples
METRIC = "bfcl/python_simple_ast_non_live"


def finished_summaries(result: dict) -> list[dict]:
    """Wait for every array task of the one submitted array; their summary.json, in array order."""
    (job,) = result["jobs"]
    summaries = []
    for task in job["tasks"]:
        assert wait_for_state(task["slurm_job_id"], timeout=300) == "COMPLETED", task
        summaries.append(json.loads((Path(task["eval_dir"]) / "summary.json").read_text()))
    return summaries


def invocation_runtime(summary: dict) -> str:
    return json.loads((Path(summary["invocation_dir"]) / "runtime.json").read_text())["runtime"]


def test_submit_all_checkpoints_as_one_array_on_the_host_runtime(tmp_path, monkeypatch, start_stub):
    stub = start_stub(reply=BFCL_REPLY)
    monkeypatch.setenv("STUB_URL", stub.url)
    run = make_run(tmp_path / "my-run" / "checkpoints", [100, 200, 300])
    output_dir = tmp_path / "evals"
    result = submit_json("-c", CONFIGS / "bfcl_host.yaml", "--checkpoint", run, "--all", "--output-dir", output_dir)
    (job,) = result["jobs"]
    assert [task["iteration"] for task in job["tasks"]] == [100, 200, 300]
    assert [task["slurm_job_id"] for task in job["tasks"]] == [f"{job['job_id']}_{index}" for index in range(3)]

    for summary in finished_summaries(result):
        (task,) = summary["tasks"].values()
        assert task["status"] == "success" and task["metrics"][METRIC] == 25.0
        assert invocation_runtime(summary) == "host"
    assert stub.requests() >= 12  # 4 samples per checkpoint reached the model server

    rows = json.loads(hpc_eval("results", output_dir, "--format", "json").output)
    assert [(row["run"], row["iteration"], row[METRIC]) for row in rows] == [
        ("my-run", step, 25.0) for step in (100, 200, 300)
    ]


def test_generic_deployment_serves_the_checkpoint_on_the_host_runtime(tmp_path, monkeypatch):
    result, config_port, requests_log = submit_generic_host(tmp_path, monkeypatch)
    (summary,) = finished_summaries(result)
    port = summary["server_port"]  # the job's own, not the config's
    assert port != config_port
    (task,) = summary["tasks"].values()
    assert task["status"] == "success" and task["metrics"][METRIC] == 25.0
    assert invocation_runtime(summary) == "host"

    requests = [json.loads(line) for line in requests_log.read_text().splitlines()]
    assert (requests[0]["method"], requests[0]["path"]) == ("GET", "/health")  # the readiness check, before any POST
    assert sum(request["method"] == "POST" for request in requests) >= 4
    logs = Path(task["dir"]) / "logs"
    assert f"listening on http://127.0.0.1:{port}" in (logs / "server_stdout.log").read_text()
    assert "server ready" in (logs / "stdout.log").read_text()
    assert processes_mentioning(f"fake_openai.py {port}") == []  # the executor stopped its server
