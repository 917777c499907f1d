"""One cron pass: scan training runs, claim each new complete checkpoint once, submit one array.

Safe to run every few minutes forever, from crontab or scrontab, on several login nodes:
  * the evaluation directory, created with mkdir, is the claim: two passes never submit the same
    checkpoint twice; a retry claims `.attempt-<k>` inside it the same way;
  * a per-run `.completed-<hash>/` folder lists the checkpoints already evaluated, each with its
    `.metadata` stat (`iter_…@<size>-<mtime_ns>`), so a pass costs one directory scan and one stat
    per checkpoint plus work for the new, rewritten and unfinished checkpoints only;
  * evaluations the cluster ended (TIMEOUT, PREEMPTED, NODE_FAIL, BOOT_FAIL) or that Slurm no
    longer knows (LOST) are submitted again up to `max_attempts`; FAILED and CANCELLED only with
    `retry_failed`; every other ended evaluation gets a `skipped` line saying why;
  * a claim whose sbatch never happened (the pass died in between) is submitted again once it is
    older than STALE_CLAIM_S (a failed sbatch releases its claim at once: see sbatch.submit);
  * a checkpoint or run dir that cannot be read (a symlink loop, no permission) is skipped with
    its reason, and the pass goes on with the rest.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hpc_eval import checkpoint as ckpt
from hpc_eval import deployments, identity
from hpc_eval.config import EvalConfig
from hpc_eval.errors import HpcEvalError
from hpc_eval.feasibility import check_feasible
from hpc_eval.preflight import preflight
from hpc_eval.sbatch import PlannedEvaluation, describe_os_error, release_unsubmitted, submit
from hpc_eval.slurm import LIVE_STATES, require_slurm
from hpc_eval.status import LOST, RETRYABLE_STATES, UNSUBMITTED, reconcile
from hpc_eval.store import (
    STALE_CLAIM_S,
    EvalPaths,
    check_output_dir,
    claim_attempt,
    completed_index,
    eval_dir,
    find_existing,
    forget_warnings,
    index_entry,
    run_folder,
    run_of,
)
from hpc_eval.submit import prepare_all, write_request

EXIT_PASS_RUNNING = 75  # EX_TEMPFAIL: another pass holds the lock, try again next time


@dataclass
class WatchOptions:
    max_submit: int | None = None
    max_attempts: int = 3
    retry_failed: bool = False
    quiet_seconds: float = 60.0
    oldest_first: bool = False
    stop_file: Path | None = None


@dataclass
class Action:
    """One checkpoint the pass acted on (or left), for the one-line-per-checkpoint output."""

    run: str
    iteration: int | None
    eval_dir: str
    action: str  # submitted, resubmitted, skipped, waiting, failed
    detail: str = ""


@dataclass
class PassResult:
    actions: list[Action] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""
    already_running: bool = False
    submit_error: str = ""

    @property
    def exit_code(self) -> int:
        if self.already_running:
            return EXIT_PASS_RUNNING
        return 1 if self.submit_error else 0

    def count(self, action: str) -> int:
        return sum(1 for item in self.actions if item.action == action)


@dataclass
class Candidate:
    paths: EvalPaths
    run: str
    checkpoint: Path
    iteration: int
    retry: bool = False
    detail: str = ""
    fingerprint: dict[str, Any] | None = None


def watch_pass(
    run_dirs: list[Path], config_for: Callable[[Path], EvalConfig], settings: dict[str, Any], options: WatchOptions
) -> PassResult:
    """One pass over `run_dirs`; `config_for(checkpoint)` gives the config resolved for a checkpoint."""
    stop_file = options.stop_file or config_for(run_dirs[0]).output_dir / "STOP"
    if stop_file.exists():
        return PassResult(stopped=f"stop file {stop_file} exists: remove it to resume watching")
    config = config_for(run_dirs[0])
    check_output_dir(config.output_dir)
    forget_warnings()
    with pass_lock(config.output_dir, run_dirs) as locked:
        if not locked:
            return PassResult(already_running=True)
        result = PassResult()
        candidates = []
        for run_dir in run_dirs:
            try:
                candidates += scan_run(run_dir, config, options, result)
            except OSError as error:  # the run dir itself cannot be read: the other runs go on
                result.actions.append(
                    Action(
                        run_of(run_dir, config.source.stem),
                        None,
                        str(run_dir),
                        "skipped",
                        f"cannot read the run dir: {describe_os_error(error)}",
                    )
                )
        candidates.sort(key=lambda item: item.iteration, reverse=not options.oldest_first)
        chosen = candidates[: options.max_submit] if options.max_submit is not None else candidates
        for left in candidates[len(chosen) :]:
            result.actions.append(
                Action(left.run, left.iteration, str(left.paths.root), "waiting", "over --max-submit; next pass")
            )
        if chosen:
            submit_candidates(chosen, config_for, settings, result)
        return result


def scan_run(run_dir: Path, config: EvalConfig, options: WatchOptions, result: PassResult) -> list[Candidate]:
    """New complete checkpoints of one run, and its evaluations that should be submitted again."""
    real_run = identity.real_path(run_dir)
    run = run_of(real_run, config.source.stem)
    config_hash = config.config_hash()
    index = completed_index(config.output_dir, run_folder(run, real_run), config_hash)
    completed = set(os.listdir(index)) if index.is_dir() else set()
    candidates, unfinished = [], []
    for name, iteration in iter_names(run_dir):
        checkpoint = run_dir / name
        try:
            if index_entry(name, identity.stat_key(checkpoint)) in completed:
                continue  # evaluated, and not rewritten since: one stat
            fingerprint = identity.fingerprint(checkpoint)
            existing = find_existing(
                config.output_dir,
                run,
                checkpoint,
                config_hash,
                fingerprint,
                legacy_runs=(run_of(run_dir, config.source.stem),),
            )
            if existing:
                unfinished.append((existing, checkpoint, iteration, fingerprint))
                continue
            paths = EvalPaths(eval_dir(config.output_dir, run, checkpoint, config_hash, fingerprint))
            verdict = ckpt.validate(checkpoint)
        except OSError as error:  # a symlink loop, no permission: this checkpoint only
            result.actions.append(
                Action(run, iteration, str(checkpoint), "skipped", f"cannot read it: {describe_os_error(error)}")
            )
            continue
        busy = quiet_problem(checkpoint, options.quiet_seconds) if verdict.ok else ""
        busy = busy or (hf_export_wait(config, checkpoint) if verdict.ok else "")
        if verdict.ok and not busy:
            candidates.append(Candidate(paths, run, checkpoint, iteration, fingerprint=fingerprint))
        else:
            result.actions.append(Action(run, iteration, str(checkpoint), "waiting", verdict.reason or busy))
    # reconcile() sorts its rows: match them to the evaluations by directory, never by position
    rows = {row.eval_dir: row for row in reconcile([paths for paths, _, _, _ in unfinished])}
    for paths, checkpoint, iteration, fingerprint in unfinished:
        row = rows[str(paths.root)]
        if row.state == "COMPLETED":
            index.mkdir(parents=True, exist_ok=True)
            (index / index_entry(checkpoint.name, fingerprint["stat"])).touch()
            continue
        why = retry_reason(row.state, row.attempts, row.created_at or mtime_iso(paths.root), options)
        if why:
            candidates.append(
                Candidate(paths, run, checkpoint, iteration, retry=True, detail=why, fingerprint=fingerprint)
            )
        elif row.state not in LIVE_STATES:
            result.actions.append(Action(run, iteration, str(paths.root), "skipped", skip_reason(row, options)))
    return candidates


def hf_export_wait(config: EvalConfig, checkpoint: Path) -> str:
    """Why an HF-format server cannot serve this iteration yet (its hf/ export is incomplete), or ""."""
    kind = deployments.deployment_type(config.launcher)
    if kind not in deployments.HF_SERVERS:
        return ""
    problem = deployments.hf_export_problem(checkpoint / "hf")
    return problem and f"deployment.type {kind} serves {checkpoint.name}/hf, not yet a complete HF export: {problem}"


def skip_reason(row, options: WatchOptions) -> str:
    """Why an ended (or unsubmitted) evaluation is left alone this pass."""
    job = f"job {row.job_id} " if row.job_id else ""
    if row.state == UNSUBMITTED:
        return "claimed recently by another pass, not yet submitted; next pass"
    if row.state == "UNKNOWN":
        return f"{job}state unknown (Slurm did not answer, or it was just submitted); next pass"
    if row.attempts >= options.max_attempts and (
        row.state in RETRYABLE_STATES or row.state == LOST or options.retry_failed
    ):
        return f"{job}ended {row.state} after {row.attempts} attempt(s): --max-attempts {options.max_attempts} reached"
    if row.state in ("FAILED", "CANCELLED"):
        return (
            f"{job}ended {row.state}" + (f" ({row.reason})" if row.reason else "") + "; --retry-failed submits it again"
        )
    return f"{job}ended {row.state}" + (f" ({row.reason})" if row.reason else "") + "; not submitted again"


def quiet_problem(checkpoint: Path, quiet_seconds: float) -> str:
    """Why a complete checkpoint is not yet quiet (a file directly in it changed recently), or ""."""
    if quiet_seconds <= 0:
        return ""
    try:
        with os.scandir(checkpoint) as entries:
            newest = max(
                [os.stat(checkpoint).st_mtime] + [entry.stat(follow_symlinks=False).st_mtime for entry in entries]
            )
    except OSError as error:  # a file vanished while we looked: it is still changing
        return f"files are changing ({error.strerror}); next pass"
    age = time.time() - newest
    if age >= quiet_seconds:
        return ""
    return f"files changed {age:.0f} s ago (quiet window {quiet_seconds:g} s): the save may still be running; next pass"


def mtime_iso(path: Path) -> str:
    """When a claim without request.json was made: its directory's mtime (the pass died right after mkdir)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))
    except OSError:
        return ""


def retry_reason(state: str, attempts: int, created_at: str, options: WatchOptions) -> str:
    """Why an existing evaluation should be submitted again, or "" to leave it."""
    if state == UNSUBMITTED:
        age = time.time() - parse_time(created_at)
        return f"claimed {int(age)} s ago but never submitted" if age > STALE_CLAIM_S else ""
    if attempts >= options.max_attempts:
        return ""
    if state in RETRYABLE_STATES:
        return f"ended {state} (attempt {attempts} of {options.max_attempts})"
    if state == LOST:
        return f"Slurm no longer knows its job (attempt {attempts} of {options.max_attempts})"
    if options.retry_failed and state in ("FAILED", "CANCELLED"):
        return f"ended {state}, --retry-failed (attempt {attempts} of {options.max_attempts})"
    return ""


def parse_time(text: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (ValueError, TypeError):
        return 0.0  # no request.json: a claim that died before it wrote one


def submit_candidates(chosen: list[Candidate], config_for, settings: dict[str, Any], result: PassResult) -> None:
    """Claim every candidate, then submit the claimed ones as one array; release the claims on failure."""
    preflight(config_for(chosen[0].checkpoint))
    require_slurm()  # before any claim: a pass that cannot submit must not claim
    check_feasible(settings)
    ready: list[PlannedEvaluation] = []
    try:
        fresh = [
            PlannedEvaluation(item.paths, item.run, item.checkpoint, item.iteration, fingerprint=item.fingerprint)
            for item in chosen
            if not item.retry
        ]
        ready += prepare_all(config_for, fresh)
        for item in chosen:
            planned = next((ev for ev in fresh if ev.paths.root == item.paths.root), None)
            if planned is None:
                planned = PlannedEvaluation(
                    item.paths,
                    item.run,
                    item.checkpoint,
                    item.iteration,
                    fingerprint=item.fingerprint,
                    claimed=claim_attempt(item.paths),
                )
                if planned.claimed is not None:
                    ready.append(planned)
                    if not (item.paths.request.exists() and item.paths.launcher_config.exists()):
                        write_request(
                            config_for(item.checkpoint), planned
                        )  # the claiming pass died before writing them
            if planned not in ready:
                result.actions.append(
                    Action(item.run, item.iteration, str(item.paths.root), "skipped", "claimed by another pass")
                )
    except (HpcEvalError, OSError) as error:
        release_unsubmitted(ready)
        result.submit_error = describe_os_error(error) if isinstance(error, OSError) else str(error)
        return
    if not ready:
        return
    config = config_for(chosen[0].checkpoint)
    try:
        jobs = submit(ready, settings, array_folder_root=config.output_dir / ".arrays")
    except HpcEvalError as error:
        result.submit_error = str(error)
        for planned in ready:
            result.actions.append(Action(planned.run, planned.iteration, str(planned.paths.root), "failed", str(error)))
        return
    retried = {item.paths.root: item.detail for item in chosen if item.retry}
    for job in jobs:
        result.jobs.append(job.to_dict())
        for task_id, planned in zip(job.task_ids, job.evaluations):
            verb = "resubmitted" if planned.paths.root in retried else "submitted"
            detail = f"job {task_id}" + (f"; {retried[planned.paths.root]}" if planned.paths.root in retried else "")
            result.actions.append(Action(planned.run, planned.iteration, str(planned.paths.root), verb, detail))


def iter_names(run_dir: Path) -> list[tuple[str, int]]:
    """(name, step) of the iter_* entries directly under a run dir: one directory scan."""
    with os.scandir(run_dir) as entries:
        found = [(entry.name, ckpt.ITER_NAME.match(entry.name)) for entry in entries]
    return [(name, int(match.group(1))) for name, match in found if match]


class pass_lock:
    """A non-blocking lock per (output dir, run dirs): a second pass exits at once."""

    def __init__(self, output_dir: Path, run_dirs: list[Path]):
        key = hashlib.sha256("\n".join(sorted(str(p.absolute()) for p in run_dirs)).encode()).hexdigest()[:12]
        self.path = output_dir / f".watch-{key}.lock"

    def __enter__(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def __exit__(self, *_):
        self.handle.close()


def render_cron(
    watch_args: list[str],
    *,
    executable: str,
    cwd: Path,
    path_env: str,
    minutes: int,
    partition: str,
    time_limit: str,
    log: Path,
    stop_file: Path,
) -> dict[str, str]:
    """A crontab line and a scrontab file for `hpc-eval watch <watch_args>`, from templates/."""
    import shlex
    from string import Template

    from hpc_eval.resources import TEMPLATES as templates

    values = {
        "minutes": minutes,
        "cwd": shlex.quote(str(cwd)),
        "path": shlex.quote(path_env),
        "partition": partition,
        "time": time_limit,
        "log": shlex.quote(str(log)),
        "stop_file": stop_file,
        "busy_exit": EXIT_PASS_RUNNING,
        "command": " ".join(shlex.quote(part) for part in [executable, "watch", *watch_args]),
    }
    return {
        name: Template((templates / f"{name}.txt").read_text()).substitute(values) for name in ("crontab", "scrontab")
    }
