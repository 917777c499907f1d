"""Issue 6: `hpc-eval watch` evaluates each new checkpoint exactly once (real local Slurm).

Most jobs use the launcher's own dry run (`dry_run=true`: the real payload and run_eval write
scripts and a summary.json in 2-3 s); the time-limit tests run a real bfcl evaluation against a
slow stub model so that the time limit ends it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_helpers import CONFIGS, hpc_eval, wait_for_state
from support.fakeckpt import iter_name, make_iter, make_run, write_tracker

pytestmark = pytest.mark.slurm

DRY_KEY = ["-c", str(CONFIGS / "bfcl_stub.yaml"), "dry_run=true", "slurm.cpus_per_task=1", "slurm.gpus_per_node=0"]
HALF_WRITTEN = (".metadata", "metadata.json", "train_state.pt", "run_config.yaml", "tokenizer/tokenizer.json")
ACTION_LINE = re.compile(r"^(submitted|resubmitted|waiting|skipped|failed)\s+(\S+) (\S+)  (\S+)(?:  (.*))?$")
HPC_EVAL = Path(sys.executable).parent / "hpc-eval"
BFCL_REPLY = "[calculate_triangle_area(base=10, height=5)]"


@pytest.fixture(autouse=True)
def _config_env(monkeypatch):
    """bfcl_stub.yaml reads STUB_URL; the launcher's dry run never contacts it."""
    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")


def make_quiet(path: Path, age_s: float = 600) -> None:
    """Set every mtime under `path` (and its own) `age_s` into the past: a save that ended long ago."""
    when = time.time() - age_s
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(root, name), (when, when), follow_symlinks=False)
    os.utime(path, (when, when))


def actions(output: str) -> list[tuple[str, int, str, str]]:
    """(action, step, eval dir or checkpoint, detail) for each per-checkpoint line of a pass."""
    found = []
    for line in output.splitlines():
        match = ACTION_LINE.match(line)
        if match:
            found.append((match.group(1), int(match.group(3)), match.group(4), match.group(5) or ""))
    return found


def steps(output: str, action: str) -> list[int]:
    return sorted(step for verb, step, _, _ in actions(output) if verb == action)


def summary_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("pass: ")]
    assert len(lines) == 1, output
    return lines[0]


def watch(run_dir: Path, out: Path, *args, config=DRY_KEY, quiet: float = 0):
    return hpc_eval("watch", run_dir, *config, "--output-dir", out, "--quiet-seconds", quiet, *args)


def evaluations(out: Path) -> dict[int, list[Path]]:
    """step -> evaluation dirs that recorded at least one sbatch (slurm.json)."""
    found: dict[int, list[Path]] = {}
    for record in sorted(out.glob("*/iter_*/*/slurm.json")):
        found.setdefault(int(record.parent.parent.name.removeprefix("iter_")), []).append(record.parent)
    return found


def attempts(eval_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (eval_dir / "slurm.json").read_text().splitlines() if line.strip()]


def task_of(output: str, step: int) -> str:
    """The Slurm job id of the (re)submission of `step` in a pass's output."""
    (detail,) = [detail for verb, s, _, detail in actions(output) if s == step and verb in ("submitted", "resubmitted")]
    return re.match(r"job (\S+?)(?:;|$)", detail).group(1)


# ------------------------------------------------------------------ new checkpoints, once each


def test_checkpoints_appearing_between_passes_are_each_submitted_once(tmp_path, count_sbatch):
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"

    first = watch(run, out, quiet=60)
    assert first.exit_code == 0, first.output
    assert steps(first.output, "submitted") == [1000, 2000] and count_sbatch.count() == 1
    assert [step for verb, step, _, _ in actions(first.output)] == [2000, 1000], "newest first"
    assert summary_line(first.output).startswith("pass: 2 submitted, 0 resubmitted, 0 waiting")

    # training saves 3000, and is half-way through saving 4000
    make_iter(run, 3000)
    write_tracker(run, 3000)
    make_iter(run, 4000, missing=HALF_WRITTEN)
    make_quiet(run / iter_name(3000))
    second = watch(run, out, quiet=60)
    assert second.exit_code == 0, second.output
    assert steps(second.output, "submitted") == [3000] and count_sbatch.count() == 2
    ((_, _, where, why),) = [a for a in actions(second.output) if a[0] == "waiting"]
    assert where == str(run / iter_name(4000)) and "shards without .metadata" in why
    assert not list(out.glob(f"train-*/{iter_name(4000)}"))

    # the save of 4000 finishes: complete, but its files are seconds old
    make_iter(run, 4000)
    write_tracker(run, 4000)
    third = watch(run, out, quiet=60)
    assert third.exit_code == 0, third.output
    assert steps(third.output, "waiting") == [4000] and steps(third.output, "submitted") == []
    ((_, _, _, why),) = [a for a in actions(third.output) if a[0] == "waiting"]
    assert "quiet window 60 s" in why, why
    assert count_sbatch.count() == 2 and not list(out.glob(f"train-*/{iter_name(4000)}"))

    make_quiet(run / iter_name(4000))  # a minute later
    fourth = watch(run, out, quiet=60)
    assert steps(fourth.output, "submitted") == [4000] and count_sbatch.count() == 3

    fifth = watch(run, out, quiet=60)
    assert fifth.exit_code == 0 and actions(fifth.output) == [], fifth.output
    assert summary_line(fifth.output) == "pass: 0 submitted, 0 resubmitted, 0 waiting, 0 skipped, 0 failed"
    assert count_sbatch.count() == 3

    found = evaluations(out)
    assert sorted(found) == [1000, 2000, 3000, 4000]
    assert all(len(dirs) == 1 and len(attempts(dirs[0])) == 1 for dirs in found.values()), found
    for (eval_dir,) in found.values():
        assert wait_for_state(attempts(eval_dir)[0]["slurm_job_id"], timeout=240) == "COMPLETED"
    done = watch(run, out, quiet=60)
    assert actions(done.output) == [] and count_sbatch.count() == 3
    (index,) = out.glob("train-*/.completed-*")  # evaluated checkpoints cost one stat on later passes
    assert sorted(name.split("@")[0] for name in os.listdir(index)) == [
        iter_name(step) for step in (1000, 2000, 3000, 4000)
    ]


@pytest.mark.parametrize("overlap", ["same-dirs", "overlapping-dirs"])
def test_eight_simultaneous_passes_submit_each_checkpoint_once(tmp_path, count_sbatch, overlap):
    """Same dirs: the per-directory lock lets one pass work (the others exit 75). Overlapping
    dirs (two login nodes' crontabs watching [a] and [a, b]): different locks, so passes scan
    at once and the mkdir claims alone keep each checkpoint to one submission."""
    run = make_run(tmp_path / "a" / "checkpoints", [1000, 2000, 3000, 4000, 5000])
    other = make_run(tmp_path / "b" / "checkpoints", [1000, 2000])
    make_quiet(run)
    make_quiet(other)
    out = tmp_path / "out"
    commands = []
    for index in range(8):
        dirs = [str(run)] if overlap == "same-dirs" or index % 2 else [str(run), str(other)]
        commands.append([str(HPC_EVAL), "watch", *dirs, *DRY_KEY, "--output-dir", str(out), "--quiet-seconds", "60"])
    passes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for command in commands
    ]
    outputs = [proc.communicate(timeout=180)[0] for proc in passes]
    codes = [proc.returncode for proc in passes]
    assert set(codes) <= {0, 75} and 0 in codes, list(zip(codes, outputs))
    for code, output in zip(codes, outputs):
        if code == 75:
            assert output.strip() == "another pass is running for these directories; nothing done", output
    submitted = sorted(
        (where.split("/")[-3].rsplit("-", 1)[0], step)
        for output in outputs
        for verb, step, where, _ in actions(output)
        if verb == "submitted"
    )
    expected = [("a", step) for step in (1000, 2000, 3000, 4000, 5000)] + (
        [("b", 1000), ("b", 2000)] if overlap != "same-dirs" else []
    )
    assert submitted == sorted(expected), outputs
    if overlap == "same-dirs":
        assert count_sbatch.count() == 1, count_sbatch.calls()
    records = sorted(out.glob("*/iter_*/*/slurm.json"))
    assert len(records) == len(expected) and all(len(attempts(record.parent)) == 1 for record in records)


def write_hf_export(iteration: Path) -> Path:
    """A complete Megatron Bridge HF export in iter_N/hf/ (see deployments.hf_export_problem)."""
    hf = iteration / "hf"
    hf.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (hf / name).write_text("{}")
    (hf / "model.safetensors").write_bytes(b"w")
    return hf


def test_an_hf_server_config_evaluates_each_iteration_once_its_hf_export_is_complete(
    tmp_path, count_sbatch, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", "hf-not-real")
    run = make_run(tmp_path / "train" / "checkpoints", [100, 200, 300])
    write_hf_export(run / iter_name(100))
    (write_hf_export(run / iter_name(300)) / "model.safetensors").unlink()  # its export is still being written
    out = tmp_path / "out"
    vllm = ["-c", str(CONFIGS / "users" / "vllm_hf.yaml"), "+dry_run=true", "slurm.cpus_per_task=1"]
    config = [*vllm, "slurm.gpus_per_node=0"]

    first = watch(run, out, config=config)
    assert first.exit_code == 0, first.output
    assert steps(first.output, "submitted") == [100] and count_sbatch.count() == 1
    waiting = {step: why for verb, step, _, why in actions(first.output) if verb == "waiting"}
    assert sorted(waiting) == [200, 300], first.output
    assert waiting[200].startswith("deployment.type vllm serves iter_0000200/hf, not yet a complete HF export: ")
    assert waiting[200].endswith("iter_0000200/hf does not exist") and "has no weights" in waiting[300]
    assert not list(out.glob(f"train-*/{iter_name(200)}")) and not list(out.glob(f"train-*/{iter_name(300)}"))
    ((eval_dir,),) = evaluations(out).values()
    saved = yaml.safe_load((eval_dir / "launcher_config.yaml").read_text())["deployment"]
    assert saved["checkpoint_path"] == str(run / iter_name(100) / "hf")
    assert saved.get("hf_model_handle") is None and "meta-llama" not in saved["command"]

    write_hf_export(run / iter_name(200))  # Megatron Bridge exported 200
    second = watch(run, out, config=config)
    assert steps(second.output, "submitted") == [200] and steps(second.output, "waiting") == [300]
    assert count_sbatch.count() == 2
    assert wait_for_state(attempts(eval_dir)[0]["slurm_job_id"], timeout=240) == "COMPLETED"


def test_a_pass_skips_what_submit_already_evaluated(tmp_path, count_sbatch):
    """`submit --all` now, `watch` from cron later: the same config is the same evaluation."""
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"
    submitted = hpc_eval("submit", *DRY_KEY, "--checkpoint", run, "--all", "--output-dir", out)
    assert submitted.exit_code == 0 and count_sbatch.count() == 1, submitted.output
    make_iter(run, 3000)
    make_quiet(run / iter_name(3000))
    result = watch(run, out)
    assert result.exit_code == 0 and [(verb, step) for verb, step, _, _ in actions(result.output)] == [
        ("submitted", 3000)
    ], result.output
    assert count_sbatch.count() == 2 and sorted(evaluations(out)) == [1000, 2000, 3000]


def test_a_changed_eval_config_submits_again(tmp_path, count_sbatch):
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"
    fewer_samples = [*DRY_KEY, "evaluation.nemo_evaluator_config.config.params.limit_samples=2"]
    assert steps(watch(run, out).output, "submitted") == [1000, 2000]
    changed = watch(run, out, config=fewer_samples)
    assert changed.exit_code == 0 and steps(changed.output, "submitted") == [1000, 2000], changed.output
    assert count_sbatch.count() == 2
    found = evaluations(out)
    assert all(len(dirs) == 2 and dirs[0].name != dirs[1].name for dirs in found.values()), (
        found
    )  # a new config hash dir
    for config in (DRY_KEY, fewer_samples):
        again = watch(run, out, config=config)
        assert again.exit_code == 0 and actions(again.output) == [], again.output
    assert count_sbatch.count() == 2


# ------------------------------------------------------------------ retries


@pytest.fixture
def slow_real_eval(monkeypatch, start_stub, real_docker, count_calls):
    """(config args, sbatch counter) for a real bfcl evaluation that outlives a one-minute time
    limit (add slurm.time): a stub model answering each of the 4 samples after 30 s, the real
    private docker daemon."""
    stub = start_stub(reply=BFCL_REPLY, delay_s=30)
    monkeypatch.setenv("STUB_URL", stub.url)
    sbatch = count_calls("sbatch")
    return [
        "-c",
        str(CONFIGS / "bfcl_stub.yaml"),
        "slurm.cpus_per_task=1",
        "slurm.gpus_per_node=0",
        "slurm.max_requeues=0",
    ], sbatch


def wait_until_task_left_queue(task: str, timeout: float = 60.0) -> None:
    """Wait until squeue no longer lists this job or array task (sacct has the state before that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", task.split("_")[0]], capture_output=True, text=True
        ).stdout
        if task not in out.split():
            return
        time.sleep(0.3)
    raise AssertionError(f"{task} still in squeue after {timeout}s")


def status_of(out: Path, step: int) -> dict:
    result = hpc_eval("status", out, "--json")
    assert result.exit_code == 0, result.output
    (row,) = [row for row in json.loads(result.output) if row["iteration"] == step]
    return row


@pytest.mark.slow
def test_a_timed_out_evaluation_is_resubmitted_and_a_cancelled_one_is_not(tmp_path, slow_real_eval):
    """One real evaluation at a time (two on one node would share the evaluator's fixed adapter
    port 3825 under --network host). The time limit is a Slurm setting, not part of the config
    hash, so passes with different limits share the evaluation directories."""
    real, sbatch = slow_real_eval
    long_limit, short_limit = [*real, "slurm.time=10"], [*real, "slurm.time=1"]
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"

    first = watch(run, out, "--max-submit", "1", "--oldest-first", config=long_limit)
    assert first.exit_code == 0 and steps(first.output, "submitted") == [1000], first.output
    cancelled = task_of(first.output, 1000)
    wait_for_state(cancelled, {"RUNNING"}, timeout=120)
    time.sleep(3)
    subprocess.run(["scancel", cancelled], check=True)  # the user cancels it while it runs
    assert wait_for_state(cancelled, timeout=60) == "CANCELLED"
    wait_until_task_left_queue(cancelled)  # sacct says CANCELLED while squeue still shows it COMPLETING
    assert status_of(out, 1000)["state"] == "CANCELLED"

    second = watch(run, out, config=short_limit)
    assert second.exit_code == 0, second.output
    assert [(verb, step) for verb, step, _, _ in actions(second.output)] == [("skipped", 1000), ("submitted", 2000)], (
        second.output
    )
    timed_out = task_of(second.output, 2000)
    # the time limit ends it: submitit's USR2 (summary TIMEOUT, sacct FAILED) or Slurm's kill (sacct TIMEOUT)
    wait_for_state(timed_out, timeout=180)
    wait_until_task_left_queue(timed_out)
    assert status_of(out, 2000)["state"] == "TIMEOUT"
    (eval_dir,) = evaluations(out)[2000]

    third = watch(run, out, config=short_limit)
    assert third.exit_code == 0, third.output
    ((verb, step, where, detail),) = [act for act in actions(third.output) if act[0] != "skipped"]
    assert (verb, step, where) == ("resubmitted", 2000, str(eval_dir)) and "ended TIMEOUT" in detail, third.output
    assert sbatch.count() == 3
    assert [len(attempts(dirs[0])) for _, dirs in sorted(evaluations(out).items())] == [1, 2]
    assert attempts(eval_dir)[1]["slurm_job_id"] == task_of(third.output, 2000) != timed_out

    fourth = watch(run, out, "--retry-failed", config=short_limit)
    assert fourth.exit_code == 0, fourth.output
    ((verb, step, _, detail),) = [act for act in actions(fourth.output) if act[0] != "skipped"]
    assert (verb, step) == ("resubmitted", 1000) and "CANCELLED" in detail and "--retry-failed" in detail
    assert sbatch.count() == 4
    assert [len(attempts(dirs[0])) for _, dirs in sorted(evaluations(out).items())] == [2, 2]


@pytest.mark.slow
def test_an_evaluation_killed_by_slurms_time_limit_is_resubmitted(tmp_path, slow_real_eval):
    """No USR2 before the limit (signal_delay_s=0): Slurm's SIGTERM looks like scancel to the
    payload (summary CANCELLED), but sacct says TIMEOUT, and that is what counts."""
    real, sbatch = slow_real_eval
    run = make_run(tmp_path / "train" / "checkpoints", [1000])
    make_quiet(run)
    out = tmp_path / "out"
    real = [*real, "slurm.time=1", "slurm.signal_delay_s=0"]
    first = watch(run, out, config=real)
    assert first.exit_code == 0 and steps(first.output, "submitted") == [1000], first.output
    task = task_of(first.output, 1000)
    assert wait_for_state(task, timeout=240) == "TIMEOUT"
    wait_until_task_left_queue(task)
    assert status_of(out, 1000)["state"] == "TIMEOUT"
    second = watch(run, out, config=real)
    ((verb, step, _, detail),) = actions(second.output)
    assert (verb, step) == ("resubmitted", 1000) and "ended TIMEOUT" in detail, second.output
    assert sbatch.count() == 2


def test_a_claim_whose_sbatch_never_happened_is_submitted_again(tmp_path, count_sbatch):
    from hpc_eval import config as config_lib
    from hpc_eval import submit as submit_lib

    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000, 3000, 4000, 5000])
    make_quiet(run)
    out = tmp_path / "out"
    config = config_lib.load_config(DRY_KEY[1], DRY_KEY[2:], checkpoint=run, output_dir=out)

    def claim_and_die(step: int) -> Path:
        """What a pass leaves when it dies between mkdir (and request.json) and sbatch."""
        checkpoint = run / iter_name(step)
        (planned,) = submit_lib.plan(config, [(checkpoint, step)])
        assert submit_lib.prepare(config.for_checkpoint(checkpoint), planned)
        return planned.paths.root

    stale, fresh = claim_and_die(1000), claim_and_die(2000)
    request = json.loads((stale / "request.json").read_text())
    request["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - 600))
    (stale / "request.json").write_text(json.dumps(request))
    bare_stale, bare_fresh = claim_and_die(3000), claim_and_die(4000)  # died right after mkdir: no files yet
    for bare in (bare_stale, bare_fresh):
        for child in bare.iterdir():
            child.unlink()
    make_quiet(bare_stale)

    result = watch(run, out)
    assert result.exit_code == 0, result.output
    acted = {step: (verb, where, detail) for verb, step, where, detail in actions(result.output)}
    assert sorted(acted) == [1000, 2000, 3000, 4000, 5000], result.output
    assert acted[2000][0] == acted[4000][0] == "skipped", result.output  # fresh claims are left alone, each said so
    for step, eval_dir in ((1000, stale), (3000, bare_stale)):
        verb, where, detail = acted[step]
        assert (verb, where) == ("resubmitted", str(eval_dir)) and "never submitted" in detail, result.output
    assert acted[5000][0] == "submitted"
    assert count_sbatch.count() == 1
    assert not (fresh / "slurm.json").exists() and not (bare_fresh / "slurm.json").exists()
    for step, eval_dir in ((1000, stale), (3000, bare_stale)):
        (attempt,) = attempts(eval_dir)
        assert wait_for_state(attempt["slurm_job_id"], timeout=240) == "COMPLETED"
        summary = json.loads((eval_dir / "summary.json").read_text())
        assert summary["state"] == "COMPLETED", summary
        assert json.loads((eval_dir / "request.json").read_text())["checkpoint"] == str(run / iter_name(step))


def claim_as_a_dying_pass(run: Path, out: Path, step: int, *, age_s: float = 0, zone: str | None = None) -> Path:
    """Claim (mkdir + request.json + launcher config) as a pass does, made `age_s` ago in time zone
    `zone` (default: this machine's), and no sbatch."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from hpc_eval import config as config_lib
    from hpc_eval import submit as submit_lib

    config = config_lib.load_config(DRY_KEY[1], DRY_KEY[2:], checkpoint=run, output_dir=out)
    checkpoint = run / iter_name(step)
    (planned,) = submit_lib.plan(config, [(checkpoint, step)])
    assert submit_lib.prepare(config.for_checkpoint(checkpoint), planned)
    request = json.loads(planned.paths.request.read_text())
    made = datetime.now(ZoneInfo(zone) if zone else None).astimezone(ZoneInfo(zone) if zone else None) - timedelta(
        seconds=age_s
    )
    request["created_at"] = made.strftime("%Y-%m-%dT%H:%M:%S%z")  # as store.now_iso() writes it there
    planned.paths.request.write_text(json.dumps(request))
    return planned.paths.root


def test_claim_ages_are_right_in_any_time_zone(tmp_path, count_sbatch):
    """created_at carries its UTC offset: west of UTC a claim made now must not look hours old
    (and be submitted twice), east of UTC a dead claim must not look fresh for hours."""
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"
    for calls, zone in enumerate(("America/New_York", "Asia/Tokyo"), start=1):
        fresh = claim_as_a_dying_pass(run, out, 1000, zone=zone)  # made now, by a pass in that zone
        stale = claim_as_a_dying_pass(run, out, 2000, zone=zone, age_s=600)
        proc = subprocess.run(
            [str(HPC_EVAL), "watch", str(run), *DRY_KEY, "--output-dir", str(out), "--quiet-seconds", "0"],
            env={**os.environ, "TZ": zone},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ((verb, step, _, detail),) = [act for act in actions(proc.stdout) if act[0] != "skipped"] or [
            ("", 0, "", f"nothing acted on:\n{proc.stdout}")
        ]
        assert (verb, step) == ("resubmitted", 2000) and "claimed 60" in detail, f"TZ={zone}: {detail}"
        assert count_sbatch.count() == calls and not (fresh / "slurm.json").exists()
        shutil.rmtree(fresh)
        shutil.rmtree(stale)


def test_a_retry_whose_own_pass_died_is_retried_later(tmp_path, count_sbatch):
    """The pass that retried a dead claim died too (its .attempt-1 claim has no sbatch): not stuck forever."""
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"
    stale = claim_as_a_dying_pass(run, out, 1000, age_s=1200)
    (stale / ".attempt-1").mkdir()
    make_quiet(stale / ".attempt-1")  # that retry was 10 minutes ago
    busy = claim_as_a_dying_pass(run, out, 2000, age_s=1200)
    (busy / ".attempt-1").mkdir()  # a pass is retrying 2000 right now
    result = watch(run, out)
    assert result.exit_code == 0, result.output
    acted = {step: (verb, where, detail) for verb, step, where, detail in actions(result.output)}
    assert acted[1000][:2] == ("resubmitted", str(stale)) and "never submitted" in acted[1000][2], result.output
    assert acted[2000] == ("skipped", str(busy), "claimed by another pass"), result.output
    assert count_sbatch.count() == 1 and len(attempts(stale)) == 1 and not (busy / "slurm.json").exists()


def test_a_pass_without_sbatch_claims_nothing(tmp_path):
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": str(HPC_EVAL.parent)}  # cron's classic: Slurm's bin dir is not on PATH
    proc = subprocess.run(
        [str(HPC_EVAL), "watch", str(run), *DRY_KEY, "--output-dir", str(out), "--quiet-seconds", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: sbatch is not on PATH") and "Traceback" not in proc.stderr
    assert not list(out.glob("*/iter_*")), "a pass that cannot submit claimed checkpoints"


# ------------------------------------------------------------------ stop file, cron


@pytest.mark.parametrize("where", ["output-dir", "option"])
def test_the_stop_file_stops_a_pass(tmp_path, count_sbatch, where):
    run = make_run(tmp_path / "train" / "checkpoints", [1000, 2000])
    make_quiet(run)
    out = tmp_path / "out"
    out.mkdir()
    stop = out / "STOP" if where == "output-dir" else tmp_path / "pause-evals"
    stop.touch()
    extra = ["--stop-file", stop] if where == "option" else []
    stopped = watch(run, out, *extra)
    assert stopped.exit_code == 0, stopped.output
    assert stopped.output.strip() == f"stopped: stop file {stop} exists: remove it to resume watching"
    assert count_sbatch.count() == 0 and evaluations(out) == {}
    stop.unlink()
    resumed = watch(run, out, *extra)
    assert steps(resumed.output, "submitted") == [1000, 2000] and count_sbatch.count() == 1


def test_cron_prints_a_crontab_line_and_a_scrontab_file(tmp_path):
    out, run = tmp_path / "out", tmp_path / "train" / "checkpoints"
    watch_args = [str(run), "-c", str(CONFIGS / "bfcl_stub.yaml"), "--output-dir", str(out), "--max-submit", "4"]
    proc = subprocess.run(
        [
            str(HPC_EVAL),
            "cron",
            "--every",
            "10",
            "--partition",
            "debug",
            "--time",
            "00:05:00",
            "--log",
            str(tmp_path / "watch.log"),
            "--",
            *watch_args,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    crontab, _, scrontab = proc.stdout.partition("# ---- scrontab ----\n")
    assert crontab.startswith("# ---- crontab ----\n")
    (cron_line,) = [line for line in crontab.splitlines() if line.strip() and not line.startswith("#")]
    schedule, _, command = cron_line.partition(" cd ")
    assert schedule == "*/10 * * * *"
    executable = re.search(r"&& PATH=\S+ (\S+) watch ", command).group(1)
    assert os.path.isabs(executable) and Path(executable).name == "hpc-eval" and os.access(executable, os.X_OK)
    assert f" watch {' '.join(watch_args)} >> {tmp_path / 'watch.log'} 2>&1" in command
    assert str(out / "STOP") in crontab  # how to stop it

    scron_lines = scrontab.splitlines()
    assert "#SCRON --partition=debug" in scron_lines and "#SCRON --time=00:05:00" in scron_lines
    (scron_entry,) = [line for line in scron_lines if line.strip() and not line.startswith("#")]
    assert scron_entry.startswith("*/10 * * * * ") and f"{executable} watch {' '.join(watch_args)}" in scron_entry

    if shutil.which("scrontab") is None:
        pytest.skip("no scrontab client on PATH (Debian's slurm-client lacks it: bash scripts/build-scrontab.sh)")
    previous = subprocess.run(["scrontab", "-l"], capture_output=True, text=True)
    (tmp_path / "scrontab.txt").write_text(scrontab)
    try:
        installed = subprocess.run(["scrontab", str(tmp_path / "scrontab.txt")], capture_output=True, text=True)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        listed = subprocess.run(["scrontab", "-l"], capture_output=True, text=True, check=True).stdout
        assert scron_entry in listed.splitlines() and "#SCRON --partition=debug" in listed
    finally:
        subprocess.run(["scrontab", "-r"], input="y\n", capture_output=True, text=True)
        if previous.returncode == 0 and previous.stdout.strip():
            (tmp_path / "previous.txt").write_text(previous.stdout)
            subprocess.run(["scrontab", str(tmp_path / "previous.txt")], capture_output=True, text=True)
