"""Issue 15 (part A): records that survive a crash, and jobs Slurm no longer knows (real local Slurm).

A torn slurm.json or a garbage summary.json among good ones, a held array cancelled before it
started (sacct folds its tasks into one line), a recorded id Slurm never had, and a recorded id
that now names someone else's job.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import hpc_eval
from support.fakeckpt import make_run
from test_watch import DRY_KEY, actions, make_quiet, watch

pytestmark = pytest.mark.slurm
HOLD = "+slurm.additional_parameters.hold=true"  # queued, never run


@pytest.fixture(autouse=True)
def _config_env(monkeypatch):
    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")


def held_evaluations(tmp_path: Path, steps: list[int]) -> tuple[Path, Path, list[Path]]:
    """Submit `steps` of a fresh run, held; (run dir, output dir, evaluation dirs by step)."""
    run = make_run(tmp_path / "run" / "checkpoints", steps)
    make_quiet(run)
    out = tmp_path / "out"
    submitted = hpc_eval("submit", *DRY_KEY, HOLD, "--checkpoint", run, "--all", "--output-dir", out)
    assert submitted.exit_code == 0, submitted.output
    return run, out, sorted(record.parent for record in out.glob("*/iter_*/*/slurm.json"))


def status_rows(out: Path) -> tuple[dict[str, dict], str]:
    result = hpc_eval("status", out, "--json")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return {row["eval_dir"]: row for row in json.loads(result.stdout)}, result.stderr


def rewrite_record(eval_dir: Path, **changes) -> None:
    record = json.loads((eval_dir / "slurm.json").read_text().splitlines()[-1])
    (eval_dir / "slurm.json").write_text(json.dumps({**record, **changes}) + "\n")


def long_ago(seconds: int = 600) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - seconds))


def test_a_torn_record_and_a_garbage_summary_are_reported_and_the_rest_goes_on(tmp_path):
    run, out, (torn, garbage, good) = held_evaluations(tmp_path, [100, 200, 300])
    with open(torn / "slurm.json", "a") as record:
        record.write('{"slurm_job_id": "12')  # a crash in the middle of an append
    (garbage / "summary.json").write_text('{"state": "COMPL')  # written in place by an old version, cut short
    rows, warnings = status_rows(out)
    assert {rows[str(path)]["state"] for path in (torn, garbage, good)} == {"PENDING"}, rows
    lines = [line for line in warnings.splitlines() if line.startswith("warning:")]
    assert (
        len(lines) == 2 and lines[0] == f"warning: {torn / 'slurm.json'}: line 2 is not a submission record; skipped"
    ), warnings
    assert lines[1].startswith(f"warning: {garbage / 'summary.json'}: not valid JSON (") and lines[1].endswith(
        "; skipped"
    ), warnings
    passed = watch(run, out)
    assert passed.exit_code == 0 and "Traceback" not in passed.output and actions(passed.output) == [], passed.output
    results = hpc_eval("results", out, "--format", "json")
    assert results.exit_code == 0 and "Traceback" not in results.output, results.output


def test_a_record_appended_after_a_torn_line_keeps_every_whole_record(tmp_path):
    from hpc_eval.store import EvalPaths

    paths = EvalPaths(tmp_path)
    paths.record_attempt({"slurm_job_id": "1"})
    with open(paths.slurm_record, "a") as record:
        record.write('{"slurm_job_id": "2", "sub')
    paths.record_attempt({"slurm_job_id": "3"})
    assert [attempt["slurm_job_id"] for attempt in paths.read_attempts()] == ["1", "3"]
    assert [p.name for p in tmp_path.iterdir()] == ["slurm.json"]  # no temp file left behind


def sacct_lines(job: str, want: str) -> list[str]:
    """`JobID|State` lines of one job, once `want` shows in them (sacct lags a cancel)."""
    deadline, lines = time.monotonic() + 60, []
    while want not in " ".join(lines) and time.monotonic() < deadline:
        time.sleep(0.5)
        lines = subprocess.run(
            ["sacct", "-X", "-P", "-n", "-o", "JobID,State", "-j", job], capture_output=True, text=True
        ).stdout.splitlines()
    return lines


def test_a_held_array_cancelled_before_any_task_started_shows_cancelled_per_task(tmp_path):
    _, out, evals = held_evaluations(tmp_path, [100, 200])
    job = json.loads((evals[0] / "slurm.json").read_text())["slurm_job_id"].split("_")[0]
    subprocess.run(["scancel", job], check=True)
    assert sacct_lines(job, f"{job}_[0-1%2]|") == [f"{job}_[0-1%2]|CANCELLED by 0"]  # one folded line for both
    rows, _ = status_rows(out)
    assert [rows[str(path)]["state"] for path in evals] == ["CANCELLED"] * 2, rows


def test_a_cancelled_array_folded_by_sacct_shows_cancelled_per_task_and_watch_says_why_it_skips(tmp_path):
    run, out, evals = held_evaluations(tmp_path, [100, 200, 300])
    job = json.loads((evals[0] / "slurm.json").read_text())["slurm_job_id"].split("_")[0]
    subprocess.run(["scontrol", "release", f"{job}_0"], check=True)  # task 0 gets a record of its own
    subprocess.run(["scancel", job], check=True)
    lines = sacct_lines(job, f"{job}_[1-2%3]|CANCELLED")
    assert f"{job}_[1-2%3]|CANCELLED by 0" in lines, (
        lines
    )  # what this test is about: Slurm folds the tasks never started
    rows, _ = status_rows(out)
    assert [rows[str(path)]["state"] for path in evals][1:] == ["CANCELLED"] * 2, rows
    assert rows[str(evals[0])]["state"] in ("CANCELLED", "COMPLETED"), rows  # task 0 may have finished first
    passed = watch(run, out)
    assert passed.exit_code == 0, passed.output
    assert sorted((verb, step) for verb, step, _, _ in actions(passed.output)) == [
        ("skipped", 100),
        ("skipped", 200),
        ("skipped", 300),
    ]
    assert all("ended CANCELLED" in detail and "--retry-failed" in detail for *_, detail in actions(passed.output)), (
        passed.output
    )
    assert actions(watch(run, out, "--quiet").output) == []
    retried = watch(run, out, "--retry-failed", HOLD)
    assert sorted(step for verb, step, _, _ in actions(retried.output) if verb == "resubmitted") == [100, 200, 300], (
        retried.output
    )


def test_a_job_slurm_never_had_is_lost_and_watch_submits_it_again(tmp_path):
    run, out, [evaluation] = held_evaluations(tmp_path, [100])
    job = json.loads((evaluation / "slurm.json").read_text())["slurm_job_id"]
    subprocess.run(["scancel", job], check=True)
    rewrite_record(evaluation, slurm_job_id="88888888", submitted_at=long_ago())  # far above any id: never existed
    rows, _ = status_rows(out)
    assert rows[str(evaluation)]["state"] == "LOST", rows
    assert "Slurm knows no job 88888888" in rows[str(evaluation)]["reason"]
    table = hpc_eval("status", out)
    assert "LOST" in table.output, table.output
    passed = watch(run, out, HOLD)
    [(verb, step, where, detail)] = actions(passed.output)
    assert (verb, step, where) == ("resubmitted", 100, str(evaluation)) and "Slurm no longer knows" in detail, (
        passed.output
    )
    rows, _ = status_rows(out)
    assert rows[str(evaluation)]["state"] == "PENDING" and rows[str(evaluation)]["attempts"] == 2, rows


def test_a_recorded_id_that_now_names_another_job_is_not_trusted(tmp_path):
    run, out, [evaluation] = held_evaluations(tmp_path, [100])
    subprocess.run(["scancel", json.loads((evaluation / "slurm.json").read_text())["slurm_job_id"]], check=True)
    other = subprocess.run(
        ["sbatch", "--parsable", "--hold", "-J", "someone-else", "-o", str(tmp_path / "other.out"), "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    rewrite_record(evaluation, slurm_job_id=other, submitted_at=long_ago())
    rows, _ = status_rows(out)
    assert rows[str(evaluation)]["state"] == "LOST", rows  # not PENDING: that is someone-else's job
    assert f"job id {other} now names another job (someone-else)" in rows[str(evaluation)]["reason"], rows
    subprocess.run(["scancel", other], check=False)


def test_a_fresh_record_slurm_does_not_know_yet_is_unknown_not_lost(tmp_path):
    _, out, [evaluation] = held_evaluations(tmp_path, [100])
    subprocess.run(["scancel", json.loads((evaluation / "slurm.json").read_text())["slurm_job_id"]], check=True)
    rewrite_record(evaluation, slurm_job_id="88888887")  # submitted_at: just now (sacct may lag a submission)
    rows, _ = status_rows(out)
    assert rows[str(evaluation)]["state"] == "UNKNOWN", rows
