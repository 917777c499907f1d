"""Small helpers for tests that run jobs on the real local Slurm."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner, Result

from hpc_eval.cli import main

CONFIGS = Path(__file__).parent / "configs"
REPO = Path(__file__).resolve().parents[1]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}


def hpc_eval(*args: str) -> Result:
    """Run the real CLI in-process; fail loudly with its output when it crashes."""
    result = CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)
    return result


def submit_json(*args: str) -> dict:
    result = hpc_eval("submit", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def sacct_state(job_id: str) -> str:
    """The accounting state of one job (array task ids as A_i)."""
    output = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-o", "JobID,State", "-j", job_id.split("_")[0]], capture_output=True, text=True
    ).stdout
    for line in output.splitlines():
        job, _, state = line.partition("|")
        if job == job_id:
            return state.split()[0] if state else ""
    return ""


def wait_for_state(job_id: str, states: set[str] = FINAL_STATES, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = sacct_state(job_id)
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not reach {sorted(states)} in {timeout}s (last: {sacct_state(job_id)!r})")


def wait_for_file(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.2)


def wait_until_gone_from_queue(job_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0]], capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still in squeue after {timeout}s")


def release_requeue_hold(job_id: str, eval_dir: Path) -> None:
    """Skip Slurm's 120 s hold of a requeued job, once its node has let the last attempt go.

    The node revokes the job's credential when the requeue ends the attempt; a start in that same
    second is refused ("Job credential revoked") and the job ends FAILED, never run again. The
    attempt's summary.json is written just before it exits: 3 s after that is safely past it."""
    if time.time() - (eval_dir / "summary.json").stat().st_mtime >= 3:
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (an evaluation dir, a port)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def submit_generic_host(tmp_path: Path, monkeypatch, *extra: str) -> tuple[dict, int, Path]:
    """Submit tests/configs/bfcl_generic_host.yaml on one fake checkpoint: its `generic` deployment
    starts the stub server on a free port. Returns (submit --json output, port, request log)."""
    from support.fakeckpt import make_run

    port = free_port()
    requests_log = tmp_path / "server-requests.jsonl"
    monkeypatch.setenv("HPC_EVAL_REPO", str(REPO))
    run = make_run(tmp_path / "my-run" / "checkpoints", [100])
    result = submit_json(
        "-c",
        CONFIGS / "bfcl_generic_host.yaml",
        "--checkpoint",
        run / "iter_0000100",
        "--output-dir",
        tmp_path / "evals",
        f"deployment.port={port}",
        f"+deployment.env_vars.LOG=lit:{requests_log}",
        *extra,
    )
    return result, port, requests_log
