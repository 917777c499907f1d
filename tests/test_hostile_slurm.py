"""Hostile paths and signals at awkward moments, on the real local Slurm with a real bfcl harness.

Replaced at the process boundary only: the model (the stub server) and, where a test needs a
signal to land at one moment, a wrapper first on PATH that runs the real command (scontrol) or
answers slowly as a missing docker daemon would (docker info)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import (
    CONFIGS,
    hpc_eval,
    release_requeue_hold,
    submit_json,
    wait_for_file,
    wait_for_state,
    wait_until_gone_from_queue,
)
from support.fakeckpt import make_run

pytestmark = pytest.mark.slurm

BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"  # right for 1 of the 4 `simple` samples
SPELLINGS = "run é'\"\\ x"  # non-ASCII, both quotes, a backslash, spaces: escaped differently in JSON
HOSTILE = 'o\'ut "$(touch CANARY)" é'


def only_evaluation(result: dict) -> tuple[str, Path]:
    (job,) = result["jobs"]
    (task,) = job["tasks"]
    return task["slurm_job_id"], Path(task["eval_dir"])


def read_summary(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "summary.json").read_text())


def put_first_on_path(monkeypatch, tmp_path: Path, name: str, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text("#!/bin/bash\n" + script)
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_checkpoint_spelled_with_escapes_is_evaluated_once(tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")  # the launcher's dry run contacts nothing
    run = make_run(tmp_path / SPELLINGS / "checkpoints", [100])
    config = ["-c", CONFIGS / "bfcl_stub.yaml", "dry_run=true", "slurm.cpus_per_task=1", "slurm.gpus_per_node=0"]
    out = tmp_path / "evals"
    job_id, eval_dir = only_evaluation(submit_json(*config, "--checkpoint", run / "iter_0000100", "--output-dir", out))
    watched = hpc_eval("watch", run, *config, "--output-dir", out, "--quiet-seconds", 0)
    assert watched.exit_code == 0, watched.output
    assert "pass: 0 submitted," in watched.output, watched.output  # the same config hash: already submitted
    assert wait_for_state(job_id) == "COMPLETED"
    assert [path.parent for path in out.rglob("request.json")] == [eval_dir]
    assert read_summary(eval_dir)["state"] == "COMPLETED"


@pytest.mark.slow
def test_hostile_output_dir_and_checkpoint_evaluate_with_no_injection(tmp_path, monkeypatch, start_stub):
    stub = start_stub(reply=BFCL_REPLY)
    monkeypatch.setenv("STUB_URL", stub.url)
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / HOSTILE / "checkpoints", [100])
    out = tmp_path / HOSTILE / "evals"
    result = submit_json("-c", CONFIGS / "bfcl_host.yaml", "--checkpoint", run / "iter_0000100", "--output-dir", out)
    job_id, eval_dir = only_evaluation(result)
    assert wait_for_state(job_id) == "COMPLETED", (
        (eval_dir / "summary.json").read_text() if (eval_dir / "summary.json").exists() else ""
    )
    summary = read_summary(eval_dir)
    assert summary["state"] == "COMPLETED"
    (task,) = summary["tasks"].values()
    assert task["status"] == "success" and task["metrics"]["bfcl/python_simple_ast_non_live"] == 25.0, task
    canaries = [path for path in tmp_path.rglob("CANARY")] + [
        path for path in (Path("/tmp"), Path.home()) if (path / "CANARY").exists()
    ]
    assert not canaries, canaries
    assert not list(Path("/tmp").glob(f"hpc-eval-{os.getuid()}-{summary['invocation_id']}-*")), (
        "safe aliases left behind"
    )


def start_slow_evaluation(tmp_path, monkeypatch, start_stub, *extra: str) -> tuple[str, Path, object]:
    delay_file = tmp_path / "stub-delay"
    delay_file.write_text("20")  # each request waits: the evaluation is still running when signalled
    monkeypatch.setenv("DELAY_FILE", str(delay_file))
    stub = start_stub(reply=BFCL_REPLY)
    monkeypatch.setenv("STUB_URL", stub.url)
    return *only_evaluation(
        submit_json("-c", CONFIGS / "bfcl_host.yaml", "--output-dir", tmp_path / "out", *extra)
    ), stub


@pytest.mark.slow
def test_term_of_the_requeue_inside_submitits_handler_is_not_a_cancel(tmp_path, monkeypatch, start_stub):
    # `scontrol requeue` as submitit runs it, then 3 s more inside submitit's handler, when Slurm's TERM lands
    put_first_on_path(
        monkeypatch,
        tmp_path,
        "scontrol",
        f"trap '' TERM\n{subprocess.check_output(['which', 'scontrol'], text=True).strip()} \"$@\"; rc=$?\n"
        '[ "$1" = requeue ] && sleep 3\nexit $rc\n',
    )
    job_id, eval_dir, _ = start_slow_evaluation(tmp_path, monkeypatch, start_stub)
    deadline = time.monotonic() + 120
    while not list(eval_dir.glob("*/*/logs/stage.running")):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    wait_for_file(eval_dir / "summary.json", timeout=60)
    summary = read_summary(eval_dir)
    assert summary["state"] == "REQUEUED", summary
    assert wait_for_state(job_id, {"PENDING", "REQUEUED", "RUNNING"}, timeout=30)


@pytest.mark.slow
def test_usr2_while_the_launcher_starts_resumes_the_same_invocation(tmp_path, monkeypatch, start_stub):
    # no docker daemon, found slowly: `run_eval` is still probing for one when USR2 arrives
    probing = tmp_path / "probing"
    put_first_on_path(monkeypatch, tmp_path, "docker", f'[ "$1" = info ] && touch {probing} && sleep 4\nexit 1\n')
    job_id, eval_dir, _ = start_slow_evaluation(tmp_path, monkeypatch, start_stub, "execution.runtime=auto")
    wait_for_file(probing, timeout=120)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    wait_for_file(eval_dir / "summary.json", timeout=60)
    first = read_summary(eval_dir)
    assert first["state"] == "REQUEUED" and first["attempt"] == 1, first
    assert json.loads((eval_dir / "payload_state.json").read_text())["invocation_id"] == first["invocation_id"]
    (tmp_path / "stub-delay").write_text("0")
    deadline = time.monotonic() + 150
    while not (read_summary(eval_dir)["attempt"] == 2 and read_summary(eval_dir)["state"] != "REQUEUED"):
        assert time.monotonic() < deadline, read_summary(eval_dir)
        if read_summary(eval_dir)["attempt"] == 1:
            release_requeue_hold(job_id, eval_dir)
        time.sleep(1)
    second = read_summary(eval_dir)
    assert second["state"] == "COMPLETED", second
    assert second["invocation_id"] == first["invocation_id"]  # resumed, not started again
    assert len(list(eval_dir.glob("*/run_all.sequential.sh"))) == 1  # no second launcher run left behind


@pytest.mark.slow
def test_cancel_leaves_no_harness_temp_script_on_the_node(tmp_path, monkeypatch, start_stub):
    job_id, eval_dir, stub = start_slow_evaluation(tmp_path, monkeypatch, start_stub)
    deadline = time.monotonic() + 120
    while not any(request["method"] == "POST" for request in stub.request_log()):  # the harness's script runs
        assert time.monotonic() < deadline, "the harness never asked the model"
        time.sleep(0.3)
    subprocess.run(["scancel", job_id], check=True)
    wait_until_gone_from_queue(job_id)
    time.sleep(2)
    left = []
    for script in Path("/tmp").glob("*/*.sh"):
        try:
            if str(eval_dir) in script.read_text(errors="replace"):
                left.append(script)
        except OSError:
            continue
    assert not left, f"harness temp scripts left in /tmp: {left}"
    assert not list(Path("/tmp").glob(f"hpc-eval-{os.getuid()}-job{job_id}-*")), "the payload's TMPDIR was left behind"
