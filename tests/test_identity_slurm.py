"""Issue 12: scores filed under the right checkpoint (real local Slurm, launcher dry runs).

Runs that share a folder name, symlinked paths, checkpoints rewritten in place, and output dirs
written before evaluations carried their run's real directory and the checkpoint's fingerprint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hpc_eval.identity import run_hash
from slurm_helpers import hpc_eval, submit_json, wait_for_state
from support.fakeckpt import iter_name, make_iter, make_run
from test_watch import DRY_KEY, actions, attempts, make_quiet, steps, watch

pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def _config_env(monkeypatch):
    """bfcl_stub.yaml reads STUB_URL; the launcher's dry run never contacts it."""
    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")


def submitted_dirs(out: Path) -> list[Path]:
    return sorted(record.parent for record in out.glob("*/iter_*/*/slurm.json"))


def wait_all_completed(out: Path) -> None:
    for eval_dir in submitted_dirs(out):
        assert wait_for_state(attempts(eval_dir)[-1]["slurm_job_id"], timeout=240) == "COMPLETED", eval_dir


def rewrite(run: Path, step: int) -> None:
    """Training relaunched from scratch into the same directory saves `step` again, with other weights."""
    shutil.rmtree(run / iter_name(step))
    make_iter(run, step, extra={"train_state.pt": b"PK\x03\x04fake-train-state-relaunched"})
    make_quiet(run / iter_name(step))


def status_json(out: Path) -> list[dict]:
    result = hpc_eval("status", out, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def results_json(out: Path):
    result = hpc_eval("results", out, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_runs_that_share_a_name_are_both_evaluated_and_shown_apart(tmp_path, count_sbatch):
    first = make_run(tmp_path / "a" / "run1" / "checkpoints", [100, 200])
    second = make_run(tmp_path / "b" / "run1" / "checkpoints", [100, 200])
    make_quiet(first)
    make_quiet(second)
    out = tmp_path / "out"
    submitted = hpc_eval("submit", *DRY_KEY, "--checkpoint", first, "--all", "--output-dir", out)
    assert submitted.exit_code == 0 and "submitted array job" in submitted.output, submitted.output

    preview = json.loads(
        hpc_eval("submit", *DRY_KEY, "--checkpoint", second, "--all", "--output-dir", out, "--dry-run", "--json").stdout
    )
    assert [ev["action"] for ev in preview["evaluations"]] == ["submit", "submit"], preview["evaluations"]
    passed = watch(first, out, second)  # first's are in flight: left alone; second's are new
    assert passed.exit_code == 0 and steps(passed.output, "submitted") == [100, 200], passed.output
    assert all(where.startswith(str(out / f"run1-{run_hash(second)}")) for _, _, where, _ in actions(passed.output))
    assert count_sbatch.count() == 2
    wait_all_completed(out)
    assert len(submitted_dirs(out)) == 4
    quiet = watch(first, out, second)
    assert quiet.exit_code == 0 and actions(quiet.output) == [], quiet.output
    again = hpc_eval("submit", *DRY_KEY, "--checkpoint", second, "--all", "--output-dir", out)
    assert "nothing to submit" in again.output and count_sbatch.count() == 2, again.output

    labels = {first: f"run1-{run_hash(first)}", second: f"run1-{run_hash(second)}"}
    rows, notes = results_json(out)
    assert sorted((row["run"], row["iteration"]) for row in rows) == sorted(
        (label, step) for label in labels.values() for step in (100, 200)
    )
    assert "2 training runs share the label 'run1'" in notes
    assert all(f"{label} = {run.resolve()}" in notes for run, label in labels.items()), notes
    statuses = status_json(out)
    assert sorted((row["run_dir"], row["iteration"], row["state"]) for row in statuses) == sorted(
        (str(run.resolve()), step, "COMPLETED") for run in labels for step in (100, 200)
    )
    table = hpc_eval("status", out)
    assert sorted(line.split()[0] for line in table.stdout.splitlines()[1:]) == sorted(list(labels.values()) * 2)
    assert "share the label 'run1'" in table.stderr


def test_a_symlinked_path_to_an_evaluated_checkpoint_is_skipped(tmp_path, count_sbatch):
    run = make_run(tmp_path / "train" / "checkpoints", [100])
    make_quiet(run)
    out = tmp_path / "out"
    assert steps(watch(run, out).output, "submitted") == [100]
    wait_all_completed(out)
    (tmp_path / "link").symlink_to(run)  # the same run, reached another way
    (tmp_path / "best").symlink_to(run / iter_name(100))
    for checkpoint, selection in ((tmp_path / "link", ["--all"]), (tmp_path / "best", [])):
        result = hpc_eval("submit", *DRY_KEY, "--checkpoint", checkpoint, *selection, "--output-dir", out)
        assert result.exit_code == 0 and "nothing to submit" in result.output, result.output
        assert "already evaluated with config" in result.output and str(submitted_dirs(out)[0]) in result.output
    linked = watch(tmp_path / "link", out)
    assert linked.exit_code == 0 and actions(linked.output) == [], linked.output
    assert count_sbatch.count() == 1 and len(submitted_dirs(out)) == 1


def test_a_checkpoint_rewritten_in_place_is_evaluated_again_and_its_old_scores_are_marked(tmp_path, count_sbatch):
    run = make_run(tmp_path / "train" / "checkpoints", [100, 200])
    make_quiet(run)
    out = tmp_path / "out"
    assert steps(watch(run, out).output, "submitted") == [100, 200]
    wait_all_completed(out)
    assert actions(watch(run, out).output) == []
    (old,) = [path for path in submitted_dirs(out) if path.parent.name == iter_name(100)]

    rewrite(run, 100)
    again = watch(run, out)
    assert again.exit_code == 0 and [(verb, step) for verb, step, _, _ in actions(again.output)] == [
        ("submitted", 100)
    ], again.output
    ((_, _, new, _),) = actions(again.output)
    assert Path(new) != old and Path(new).parent == old.parent
    assert count_sbatch.count() == 2
    wait_all_completed(out)
    assert actions(watch(run, out).output) == [] and count_sbatch.count() == 2

    statuses = {row["eval_dir"]: row for row in status_json(out)}
    assert statuses[str(old)]["checkpoint_changed"] is True and statuses[new]["checkpoint_changed"] is False
    table = hpc_eval("status", out)
    assert table.stdout.splitlines()[0].split()[:3] == ["run", "iteration", "checkpoint"]
    (marked,) = [line for line in table.stdout.splitlines() if "rewritten" in line]
    assert marked.split()[:3] == ["train", "100", "rewritten"] and "written again in place" in table.stderr
    rows, notes = results_json(out)
    assert [(row["iteration"], row["checkpoint"]) for row in rows] == [(100, "rewritten"), (100, ""), (200, "")]
    assert "written again in place" in notes


def test_the_payload_refuses_a_checkpoint_rewritten_between_submit_and_start(tmp_path):
    run = make_run(tmp_path / "train" / "checkpoints", [100])
    out = tmp_path / "out"
    held = submit_json(
        *DRY_KEY, "+slurm.additional_parameters.hold=true", "--checkpoint", run / iter_name(100), "--output-dir", out
    )
    (task,) = held["jobs"][0]["tasks"]
    try:
        rewrite(run, 100)
        subprocess.run(["scontrol", "release", task["slurm_job_id"]], check=True)
        assert wait_for_state(task["slurm_job_id"], timeout=240) == "FAILED"
    finally:
        subprocess.run(["scancel", task["slurm_job_id"]], check=False)
    eval_dir = Path(task["eval_dir"])
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["state"] == "FAILED" and summary["failure"] == "checkpoint_changed", summary
    assert summary["reason"].startswith(f"checkpoint rewritten since submit: {run / iter_name(100)} (")
    assert "train_state.pt sha256" in summary["reason"] and "submit it again" in summary["reason"]
    assert not list(eval_dir.glob("????????_??????-*")), "the launcher ran for a checkpoint that changed"
    (row,) = status_json(out)
    assert row["state"] == "FAILED" and row["reason"] == summary["reason"]


def test_an_output_dir_in_the_old_layout_still_shows_and_is_still_skipped(tmp_path, count_sbatch):
    run = make_run(tmp_path / "train" / "checkpoints", [100, 200])
    make_quiet(run)
    out = tmp_path / "out"
    submitted = hpc_eval("submit", *DRY_KEY, "--checkpoint", run, "--all", "--output-dir", out)
    assert submitted.exit_code == 0, submitted.output
    wait_all_completed(out)
    # as hpc-eval wrote it before: <output_dir>/<run>/<iter>/<config hash>, no run dir nor fingerprint recorded
    old_dirs = []
    for eval_dir in submitted_dirs(out):
        old = out / "train" / eval_dir.parent.name / eval_dir.name.rsplit("-", 1)[0]
        old.parent.mkdir(parents=True)
        eval_dir.rename(old)
        request = json.loads((old / "request.json").read_text())
        for key in ("run_dir", "checkpoint_realpath", "fingerprint"):
            del request[key]
        (old / "request.json").write_text(json.dumps(request))
        old_dirs.append(old)
    shutil.rmtree(out / f"train-{run_hash(run)}")

    assert sorted((row["eval_dir"], row["state"], row["run"]) for row in status_json(out)) == [
        (str(old), "COMPLETED", "train") for old in old_dirs
    ]
    rows, _ = results_json(out)
    assert [(row["run"], row["iteration"]) for row in rows] == [("train", 100), ("train", 200)]
    skipped = hpc_eval("submit", *DRY_KEY, "--checkpoint", run, "--all", "--output-dir", out)
    assert "nothing to submit" in skipped.output and all(str(old) in skipped.output for old in old_dirs), skipped.output
    first = watch(run, out)
    assert first.exit_code == 0 and actions(first.output) == [], first.output
    (index,) = out.glob(f"train-{run_hash(run)}/.completed-*")  # later passes: one stat per checkpoint
    assert sorted(entry.name.split("@")[0] for entry in index.iterdir()) == [iter_name(100), iter_name(200)]
    assert actions(watch(run, out).output) == [] and count_sbatch.count() == 1
