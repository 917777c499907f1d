"""Issue 5: many checkpoints of a training run go out as one Slurm array (real local Slurm).

Jobs use the launcher's own dry run (`dry_run=true`): each array task runs the real payload and
the real run_eval, writes the launcher's scripts and a summary.json in 2-3 s, and evaluates
nothing. That is all the array, claim, skip and split mechanics need.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from slurm_helpers import CONFIGS, hpc_eval, wait_for_state
from support.fakeckpt import iter_name, make_iter, make_run

pytestmark = pytest.mark.slurm

VALID_STEPS = [1000, 2000, 3000, 4000, 5000, 6000]
INVALID = {  # step -> (the half-written layout, words of the reason users see)
    7000: (
        (".metadata", "metadata.json", "train_state.pt", "run_config.yaml", "tokenizer/tokenizer.json"),
        "shards without .metadata",
    ),
    8000: (("run_config.yaml", "tokenizer/tokenizer.json"), "train_state.pt without run_config.yaml"),
}
# The bfcl stub config, with the launcher's dry run in the job, one CPU and no GPU per task.
DRY_KEY = ["-c", str(CONFIGS / "bfcl_stub.yaml"), "dry_run=true", "slurm.cpus_per_task=1", "slurm.gpus_per_node=0"]


@pytest.fixture(autouse=True)
def _config_env(monkeypatch, tmp_path):
    """bfcl_stub.yaml reads STUB_URL; the launcher's dry run never contacts it. --dry-run's
    temp dirs go under tmp_path."""
    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def training_run(tmp_path) -> Path:
    """Six complete checkpoints (tracker at 6000) and two a save left half-written."""
    run = make_run(tmp_path / "train" / "checkpoints", VALID_STEPS)
    for step, (missing, _) in INVALID.items():
        make_iter(run, step, missing=missing)
    return run


def submitted_tasks(output: str) -> tuple[list[str], dict[str, Path]]:
    """(array job ids, {task id: evaluation dir}) from submit's output."""
    arrays = re.findall(r"^submitted (?:array job|job) (\d+)", output, re.M)
    tasks = {task: Path(path) for task, path in re.findall(r"^  (\d+(?:_\d+)?)  (/\S+)$", output, re.M)}
    return arrays, tasks


def eval_dirs(output_dir: Path) -> list[Path]:
    """Evaluation directories under output_dir (<run>-<run hash>/<iter>/<hash>-<fingerprint>), claimed or not."""
    return sorted(path for path in output_dir.glob("*/iter_*/*") if path.is_dir())


def attempts(eval_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (eval_dir / "slurm.json").read_text().splitlines() if line.strip()]


def dry_run_json(*args) -> dict:
    result = hpc_eval("submit", *DRY_KEY, *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def chosen_steps(result: dict) -> list[int]:
    return sorted(ev["iteration"] for ev in result["evaluations"] if ev["action"] == "submit")


# ------------------------------------------------------------------ --all: one array, then nothing


@pytest.mark.slow
def test_all_checkpoints_go_out_as_one_array_and_a_second_submit_submits_nothing(tmp_path, training_run, count_sbatch):
    out = tmp_path / "out"
    args = [*DRY_KEY, "--checkpoint", training_run, "--all", "--output-dir", out]
    first = hpc_eval("submit", *args)
    assert first.exit_code == 0, first.output
    assert count_sbatch.count() == 1, count_sbatch.calls()
    (array_id,), tasks = submitted_tasks(first.output)
    assert f"submitted array job {array_id} ({len(VALID_STEPS)} tasks)" in first.output
    assert sorted(tasks) == [f"{array_id}_{index}" for index in range(len(VALID_STEPS))]
    assert sorted(path.parent.name for path in tasks.values()) == [iter_name(step) for step in VALID_STEPS]

    # the half-written checkpoints: listed with their reasons, never claimed nor submitted
    for step, (_, words) in INVALID.items():
        line = next((line for line in first.output.splitlines() if iter_name(step) in line), "")
        assert line.startswith("skip (invalid): ") and words in line, first.output
        assert not list(out.glob(f"*/{iter_name(step)}"))
    assert len(eval_dirs(out)) == len(VALID_STEPS)

    # the manifest fixes array index -> checkpoint at submit time
    (manifest_file,) = (out / ".arrays").glob("*/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    assert [entry["index"] for entry in manifest] == list(range(len(VALID_STEPS)))
    for entry in manifest:
        eval_dir = tasks[f"{array_id}_{entry['index']}"]
        assert entry["eval_dir"] == str(eval_dir)
        assert Path(entry["checkpoint"]) == training_run / eval_dir.parent.name

    # the array runs to completion: every task COMPLETED, every evaluation has its summary
    for task, eval_dir in tasks.items():
        assert wait_for_state(task, timeout=240) == "COMPLETED", task
        summary = json.loads((eval_dir / "summary.json").read_text())
        assert summary["state"] == "COMPLETED" and summary["slurm_job_id"] == task, summary
        assert [attempt["slurm_job_id"] for attempt in attempts(eval_dir)] == [task]

    second = hpc_eval("submit", *args)
    assert second.exit_code == 0, second.output
    assert count_sbatch.count() == 1, "a second identical submit called sbatch"
    assert "nothing to submit" in second.output
    for step in VALID_STEPS:
        line = next(
            line for line in second.output.splitlines() if line.startswith("skip: ") and iter_name(step) in line
        )
        assert "already evaluated" in line and "--force" in line, line
    assert all(len(attempts(path)) == 1 for path in eval_dirs(out))

    forced = hpc_eval("submit", *args, "--force")
    assert forced.exit_code == 0, forced.output
    assert count_sbatch.count() == 2
    (forced_id,), forced_tasks = submitted_tasks(forced.output)
    assert forced_id != array_id and len(forced_tasks) == len(VALID_STEPS)
    assert all(len(attempts(path)) == 2 for path in eval_dirs(out))


def test_strict_refuses_the_whole_submission(tmp_path, training_run, count_sbatch):
    out = tmp_path / "out"
    result = hpc_eval("submit", *DRY_KEY, "--checkpoint", training_run, "--all", "--strict", "--output-dir", out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: invalid checkpoint ") and "Traceback" not in result.output
    assert iter_name(7000) in result.output and "(and 1 more)" in result.output
    assert count_sbatch.count() == 0
    assert not out.exists() or eval_dirs(out) == []


# ------------------------------------------------------------------ --dry-run and the selection


def test_dry_run_submits_nothing_and_gives_the_array_size(tmp_path, training_run, count_sbatch):
    out = tmp_path / "out"
    result = hpc_eval("submit", *DRY_KEY, "--checkpoint", training_run, "--all", "--output-dir", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert (
        f"would submit {len(VALID_STEPS)} evaluation(s) as one array of {len(VALID_STEPS)}; nothing submitted"
        in result.output
    )
    assert f"#SBATCH --array=0-{len(VALID_STEPS) - 1}%" in result.output
    for step, (_, words) in INVALID.items():
        assert any(
            line.startswith("skip (invalid): ") and iter_name(step) in line and words in line
            for line in result.output.splitlines()
        ), result.output
    assert count_sbatch.count() == 0
    assert not out.exists(), "--dry-run claimed evaluation directories"


def test_dry_run_lists_each_checkpoint_with_submit_or_skip(tmp_path, training_run, count_sbatch):
    """Issue 5: --dry-run lists every checkpoint with "submit" or "skip: reason"."""
    out = tmp_path / "out"
    done = hpc_eval("submit", *DRY_KEY, "--checkpoint", training_run / iter_name(2000), "--output-dir", out)
    assert done.exit_code == 0 and count_sbatch.count() == 1, done.output
    result = hpc_eval("submit", *DRY_KEY, "--checkpoint", training_run, "--all", "--output-dir", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert count_sbatch.count() == 1
    lines = result.output.splitlines()
    for step in VALID_STEPS + list(INVALID):
        mentions = [line for line in lines if f"{training_run / iter_name(step)}" in line]
        expected = "skip (invalid): " if step in INVALID else "skip: " if step == 2000 else "submit"
        assert len(mentions) == 1 and mentions[0].startswith(expected), (
            f"{iter_name(step)}: expected one line starting {expected!r}, got {mentions}:\n{result.output}"
        )
    assert "would submit 5 evaluation(s) as one array of 5" in result.output


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (["--all"], VALID_STEPS),
        (["--latest"], [6000]),
        (["--every", "2000"], [2000, 4000, 6000]),
        (["--from-step", "2000", "--to-step", "4000"], [2000, 3000, 4000]),
        (["--every", "2000", "--from-step", "3000"], [4000, 6000]),
    ],
)
def test_selection_picks_the_right_checkpoints(tmp_path, training_run, selection, expected):
    result = dry_run_json("--checkpoint", training_run, *selection, "--output-dir", tmp_path / "out")
    assert chosen_steps(result) == expected
    assert all(Path(ev["checkpoint"]) == training_run / iter_name(ev["iteration"]) for ev in result["evaluations"])


def test_repeated_checkpoints_and_a_quoted_glob(tmp_path, training_run):
    repeated = dry_run_json(
        "--checkpoint",
        training_run / iter_name(1000),
        "--checkpoint",
        training_run / iter_name(3000),
        "--output-dir",
        tmp_path / "out",
    )
    assert chosen_steps(repeated) == [1000, 3000]
    globbed = dry_run_json("--checkpoint", f"{training_run}/iter_000[246]000", "--output-dir", tmp_path / "out")
    assert chosen_steps(globbed) == [2000, 4000, 6000]
    everything = dry_run_json("--checkpoint", f"{training_run}/iter_*", "--output-dir", tmp_path / "out")
    assert chosen_steps(everything) == VALID_STEPS
    assert sorted(Path(item["path"]).name for item in everything["invalid_checkpoints"]) == [
        iter_name(s) for s in INVALID
    ]


# ------------------------------------------------------------------ site limits and sbatch flags


def test_max_array_size_reads_the_cluster(slurm_cluster):
    from hpc_eval.slurm import max_array_size

    limit = max_array_size()

    def accepted(index: int) -> bool:  # --test-only: sbatch checks the request and submits nothing
        argv = ["sbatch", "--test-only", f"--array={index}", "-p", slurm_cluster.partitions[0], "--wrap=true"]
        return subprocess.run(argv, capture_output=True, text=True).returncode == 0

    assert accepted(limit - 1) and not accepted(limit)


@pytest.mark.slow
def test_a_lower_array_size_limit_splits_the_submission(tmp_path, count_sbatch):
    run = make_run(tmp_path / "train" / "checkpoints", range(1000, 8000, 1000))
    out = tmp_path / "out"
    result = hpc_eval("submit", *DRY_KEY, "slurm.max_array_size=3", "--checkpoint", run, "--all", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert count_sbatch.count() == 3, count_sbatch.calls()
    assert "split into 3 arrays: 7 evaluations exceed the array size limit" in result.output
    arrays, tasks = submitted_tasks(result.output)
    assert len(arrays) == 3 and len(tasks) == 7
    assert sorted(len(json.loads(m.read_text())) for m in (out / ".arrays").glob("*/manifest.json")) == [1, 3, 3]
    recorded = eval_dirs(out)
    assert [path.parent.name for path in recorded] == [iter_name(step) for step in range(1000, 8000, 1000)]
    assert all(len(attempts(path)) == 1 for path in recorded)
    for task, eval_dir in tasks.items():
        assert wait_for_state(task, timeout=240) == "COMPLETED", task
        assert json.loads((eval_dir / "summary.json").read_text())["state"] == "COMPLETED"


def test_parallel_reaches_sbatch_as_the_array_throttle(tmp_path, training_run, count_sbatch):
    out = tmp_path / "out"
    result = hpc_eval(
        "submit",
        *DRY_KEY,
        "--checkpoint",
        training_run,
        "--from-step",
        "1000",
        "--to-step",
        "4000",
        "--parallel",
        "2",
        "--output-dir",
        out,
    )
    assert result.exit_code == 0, result.output
    (array_id,), tasks = submitted_tasks(result.output)
    (script,) = (out / ".arrays").glob(f"*/{array_id}_submission.sh")
    assert "#SBATCH --array=0-3%2" in script.read_text().splitlines()
    assert len(tasks) == 4 and count_sbatch.count() == 1


def test_an_outer_jobs_variables_do_not_leak_into_sbatch(tmp_path, training_run, monkeypatch, count_sbatch):
    """Inside a job (or scrontab) SBATCH_*/SLURM_* are set; sbatch would honour SBATCH_PARTITION."""
    monkeypatch.setenv("SBATCH_PARTITION", "nonexistent")
    monkeypatch.setenv("SLURM_JOB_ID", "999999")
    out = tmp_path / "out"
    result = hpc_eval("submit", *DRY_KEY, "--checkpoint", training_run, "--every", "3000", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert count_sbatch.count() == 1
    assert os.environ["SBATCH_PARTITION"] == "nonexistent"  # put back after the submission
    (array_id,), tasks = submitted_tasks(result.output)
    assert len(tasks) == 2
    for task, eval_dir in tasks.items():
        assert wait_for_state(task, timeout=240) == "COMPLETED"
        assert json.loads((eval_dir / "summary.json").read_text())["slurm_job_id"] == task
    partitions = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-o", "Partition", "-j", array_id], capture_output=True, text=True
    ).stdout.split()
    default = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    assert partitions and {f"{p}*" for p in partitions} <= set(default), (partitions, default)  # the default partition


@pytest.mark.parametrize("selection", [["--all"], []], ids=["array", "one-job"])
def test_without_sbatch_on_path_nothing_is_claimed(tmp_path, training_run, selection):
    venv_bin = Path(sys.executable).parent
    out = tmp_path / "out"
    checkpoint = training_run if selection else training_run / iter_name(1000)
    env = {key: value for key, value in os.environ.items() if key != "PATH"}
    env["PATH"] = str(venv_bin)
    proc = subprocess.run(
        [
            str(venv_bin / "hpc-eval"),
            "submit",
            *DRY_KEY,
            "--checkpoint",
            str(checkpoint),
            *selection,
            "--output-dir",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("Error: sbatch is not on PATH"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


def test_two_arrays_submitted_in_the_same_second_keep_their_own_manifest(
    tmp_path, training_run, monkeypatch, count_sbatch
):
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt, *when: "20250101-000000")  # the same second for both
    out = tmp_path / "out"
    pairs = [(1000, 2000), (3000, 4000)]
    for pair in pairs:
        result = hpc_eval(
            "submit",
            *DRY_KEY,
            "--checkpoint",
            training_run,
            "--from-step",
            pair[0],
            "--to-step",
            pair[1],
            "--output-dir",
            out,
            "+slurm.additional_parameters.hold=true",
        )
        assert result.exit_code == 0, result.output
    assert count_sbatch.count() == 2
    manifests = [json.loads(path.read_text()) for path in sorted((out / ".arrays").glob("*/manifest.json"))]
    assert sorted(tuple(entry["iteration"] for entry in manifest) for manifest in manifests) == pairs
