"""Issue 15 (part A): unreadable checkpoints and records that cannot be written (real file system, real Slurm).

A symlink loop and a directory without permission inside a run dir: `submit --all` and `watch`
skip that checkpoint with its reason and go on with the rest. The permission cases run as an
unprivileged user (root reads everything). A job whose record cannot be written is cancelled.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from slurm_helpers import hpc_eval, sacct_state, wait_for_state
from support.fakeckpt import make_run
from test_watch import DRY_KEY, actions, make_quiet, watch

pytestmark = pytest.mark.slurm
HOLD = "+slurm.additional_parameters.hold=true"
USER = "hpcevaltest"


@pytest.fixture(autouse=True)
def _config_env(monkeypatch):
    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")


@pytest.fixture
def unprivileged():
    """(user name, a world-traversable scratch dir): pytest's tmp_path is root-only (mode 700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/bin/sh", USER], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot create an unprivileged user: {done.stderr.strip()}")
    scratch = Path(tempfile.mkdtemp(prefix="hpc-eval-faults-"))
    scratch.chmod(0o755)
    yield USER, scratch
    subprocess.run(["chmod", "-R", "u+rwX", str(scratch)], check=False)
    out = subprocess.run(["squeue", "-h", "-o", "%i|%o"], capture_output=True, text=True).stdout
    ids = {line.split("|")[0].split("_")[0] for line in out.splitlines() if str(scratch) in line}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False)
    shutil.rmtree(scratch, ignore_errors=True)


def broken_run(root: Path) -> Path:
    """iter_100 good, iter_200 unreadable (mode 000), iter_300 a symlink to itself."""
    run = make_run(root / "run" / "checkpoints", [100, 200])
    make_quiet(run)
    (run / "iter_0000300").symlink_to("iter_0000300")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    (run / "iter_0000200").chmod(0o000)
    return run


def drop_log_files() -> None:
    """The launcher, imported by the parent, logs to a file in one of root's private dirs (its temp
    HOME, or an evaluation's launcher-state under pytest's mode-700 tmp): the child, once another
    user, could not even stat it. It needs no log file: close them."""
    import logging

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()


def as_user(user: str, *args, home: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a forked child that dropped to `user`.

    The interpreter lives under /root (mode 700), so the user cannot exec it: the child keeps the
    parent's, and the parent imports first what the command imports lazily.
    """
    import importlib

    from click.testing import CliRunner

    from hpc_eval.cli import main

    for module in ("fcntl", "submitit", "hpc_eval.payload", "hpc_eval.watch", "traceback"):
        importlib.import_module(module)  # extension and lazy modules the child could not load from /root

    warm = hpc_eval("submit", *DRY_KEY, "--checkpoint", make_run(home / "warm", [1]) / "iter_0000001", "--dry-run")
    assert warm.exit_code == 0, warm.output
    report = home / f"report-{len(list(home.iterdir()))}.json"
    report.write_text('[99, "", "the child wrote no report"]')
    shutil.chown(report, user)
    (home / "home").mkdir(exist_ok=True)
    shutil.chown(home / "home", user)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            entry = pwd.getpwnam(user)
            drop_log_files()
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            mine = home / "home"  # made by the parent, owned by the user
            os.environ.update(
                HOME=str(mine), XDG_CACHE_HOME=str(mine / "cache"), NEMO_EVALUATOR_EXEC_DB_FILE=str(mine / "exec-db")
            )
            os.chdir(mine)
            result = CliRunner().invoke(main, [str(arg) for arg in args])
            trace = (
                "".join(__import__("traceback").format_exception(*result.exc_info))
                if result.exception and not isinstance(result.exception, SystemExit)
                else ""
            )
            report.write_text(json.dumps([result.exit_code, result.stdout, result.stderr + trace]))
        except BaseException as error:
            report.write_text(json.dumps([98, "", repr(error)]))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    code, stdout, stderr = json.loads(report.read_text())
    return subprocess.CompletedProcess(args, code, stdout, stderr)


def test_submit_all_skips_a_symlink_loop_and_an_unreadable_checkpoint_and_goes_on(unprivileged):
    user, scratch = unprivileged
    run = broken_run(scratch)
    result = as_user(
        user,
        "submit",
        *DRY_KEY,
        "--checkpoint",
        run,
        "--all",
        "--output-dir",
        scratch / "out",
        "--dry-run",
        home=scratch,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert (
        f"skip (invalid): {run / 'iter_0000200'}: cannot read {run / 'iter_0000200'}: permission denied; ask its owner for read access (chmod -R a+rX)"
        in lines
    ), lines
    assert (
        f"skip (invalid): {run / 'iter_0000300'}: cannot read {run / 'iter_0000300'}: Too many levels of symbolic links"
        in lines
    ), lines
    assert (
        f"submit: {run / 'iter_0000100'}" in lines
        and "dry run: would submit 1 evaluation(s); nothing submitted" in lines
    ), lines


def test_watch_skips_a_symlink_loop_and_an_unreadable_checkpoint_and_submits_the_rest(unprivileged):
    user, scratch = unprivileged
    run = broken_run(scratch)
    out = scratch / "out"
    out.mkdir()
    shutil.chown(out, user)
    result = as_user(user, "watch", run, *DRY_KEY, HOLD, "--output-dir", out, "--quiet-seconds", 0, home=scratch)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    acted = {step: (verb, detail) for verb, step, _, detail in actions(result.stdout)}
    assert acted[100][0] == "submitted", result.stdout
    # left for the next pass (a chmod or a fixed link makes them valid), each with its reason
    assert acted[200] == (
        "waiting",
        f"cannot read {run / 'iter_0000200'}: permission denied; ask its owner for read access (chmod -R a+rX)",
    )
    assert acted[300] == ("waiting", f"cannot read {run / 'iter_0000300'}: Too many levels of symbolic links"), (
        result.stdout
    )


def test_a_run_dir_watch_cannot_read_is_one_skipped_line_and_the_other_runs_go_on(unprivileged):
    user, scratch = unprivileged
    good = make_run(scratch / "good" / "checkpoints", [100])
    hidden = make_run(scratch / "hidden" / "checkpoints", [100])
    make_quiet(good)
    subprocess.run(["chmod", "-R", "a+rX", str(scratch)], check=True)
    hidden.chmod(0o311)  # can enter, cannot list
    out = scratch / "out"
    out.mkdir()
    shutil.chown(out, user)
    result = as_user(
        user, "watch", good, hidden, *DRY_KEY, HOLD, "--output-dir", out, "--quiet-seconds", 0, home=scratch
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert re.search(
        rf"^skipped\s+hidden None  {re.escape(str(hidden))}  cannot read the run dir: .*Permission denied$",
        result.stdout,
        re.M,
    ), result.stdout
    verbs = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith("pass:")]
    assert sorted(verbs) == ["skipped", "submitted"], result.stdout


def test_a_job_whose_record_cannot_be_written_is_cancelled_and_the_claim_released(tmp_path):
    run = make_run(tmp_path / "run" / "checkpoints", [100])
    make_quiet(run)
    out = tmp_path / "out"
    assert hpc_eval("submit", *DRY_KEY, HOLD, "--checkpoint", run / "iter_0000100", "--output-dir", out).exit_code == 0
    [evaluation] = [record.parent for record in out.glob("*/iter_*/*/slurm.json")]
    first = json.loads((evaluation / "slurm.json").read_text())["slurm_job_id"]
    subprocess.run(["scancel", first], check=True)
    wait_for_state(first, {"CANCELLED"}, timeout=60)
    (evaluation / f".slurm.json.{os.getpid()}.tmp").mkdir()  # where this process writes slurm.json next: it cannot
    retried = watch(run, out, "--retry-failed", HOLD)
    assert retried.exit_code == 1 and "Traceback" not in retried.output, retried.output
    match = re.search(
        r"could not record job (\d+): .*Is a directory; cancelled it so that nothing runs unrecorded", retried.output
    )
    assert match, retried.output
    assert (
        wait_for_state(match.group(1), {"CANCELLED"}, timeout=60) == "CANCELLED" and sacct_state(first) == "CANCELLED"
    )
    assert len((evaluation / "slurm.json").read_text().splitlines()) == 1
    assert not any(
        path.name.startswith(".attempt-") for path in evaluation.iterdir()
    )  # released: the next pass may retry
