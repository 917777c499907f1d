"""Reconcile evaluation records with Slurm: one row per evaluation.

The state of an evaluation comes from its summary.json when the payload wrote a final one for
the latest attempt, else from `squeue` for live jobs, else from `sacct`. Slurm's answer counts only
while it names our job (the job name recorded at submission): after a controller reset ids start
again at 1 and may name someone else's job. A job Slurm answered about but does not know (or knows
as another job) is LOST, once its submission is LOST_GRACE_S old; without an answer it is UNKNOWN.
However many evaluations there are, a call makes at most one `squeue` and one `sacct` call.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hpc_eval import identity
from hpc_eval.job_states import SlurmJobState, query_sacct, query_squeue
from hpc_eval.launcher_tree import task_logs
from hpc_eval.store import EvalPaths, forget_warnings, iter_evaluations, read_json

FINAL_SUMMARY_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}
# The payload sees the same SIGTERM for scancel and for Slurm's time limit: ask Slurm before trusting it.
ASK_SLURM_SUMMARY_STATES = {"CANCELLED"}
# Ended by the cluster, not by the evaluation or a user: worth submitting again.
RETRYABLE_STATES = {"TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}
UNSUBMITTED = "UNSUBMITTED"  # claimed, but no sbatch recorded (the pass may have died in between)
LOST = "LOST"  # Slurm answered and knows no job of ours by the recorded id: `watch` submits it again
LOST_GRACE_S = 60  # sacct can lag a submission; squeue forgets an ended job before sacct has it
CANCELLED_RECORD = "cancelled.json"  # written by `hpc-eval cancel` (hpc_eval.cancel) before its scancel
CANCELLED_BY_USER = "cancelled by user"


@dataclass
class EvaluationStatus:
    """One row of `hpc-eval status`."""

    eval_dir: str
    run: str
    iteration: int | None
    config_hash: str
    job_id: str | None
    state: str
    attempts: int
    elapsed: str
    reason: str
    created_at: str
    run_dir: str | None = None  # the training run's real directory: two runs may share a label
    checkpoint_changed: bool = False  # rewritten in place since it was evaluated
    invocation_ids: list[str] = field(default_factory=list)  # the launcher's, for `nel status/info/export`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_status(roots: Iterable[Path]) -> list[EvaluationStatus]:
    """Every evaluation under the given output dirs (or run dirs, or evaluation dirs), reconciled."""
    forget_warnings()
    evaluations = [paths for root in roots for paths in iter_evaluations(Path(root))]
    return reconcile(evaluations)


def reconcile(evaluations: list[EvalPaths]) -> list[EvaluationStatus]:
    records = [(paths, paths.read_request(), paths.read_attempts(), paths.read_summary()) for paths in evaluations]
    pending_ids = [
        attempts[-1]["slurm_job_id"]
        for _, _, attempts, summary in records
        if attempts and not summary_is_final(summary, attempts[-1])
    ]
    live = query_squeue(pending_ids)
    ended = query_sacct([job for job in pending_ids if job not in (live or {})])
    answered = live is not None and ended is not None
    rows = [
        row_for(paths, request, attempts, summary, live or {}, ended or {}, answered)
        for paths, request, attempts, summary in records
    ]
    rows.sort(
        key=lambda row: (
            row.run,
            row.run_dir or "",
            row.iteration if row.iteration is not None else -1,
            row.config_hash,
        )
    )
    return rows


def summary_is_final(summary: dict | None, attempt: dict) -> bool:
    return (
        summary_is_for(summary, attempt)
        and summary.get("state") in FINAL_SUMMARY_STATES
        and summary.get("state") not in ASK_SLURM_SUMMARY_STATES
    )


def summary_is_for(summary: dict | None, attempt: dict) -> bool:
    return bool(summary) and summary.get("slurm_job_id") == attempt["slurm_job_id"]


def row_for(
    paths: EvalPaths,
    request: dict,
    attempts: list[dict],
    summary: dict | None,
    live: dict[str, SlurmJobState],
    ended: dict[str, SlurmJobState],
    answered: bool = True,
) -> EvaluationStatus:
    job_id = attempts[-1]["slurm_job_id"] if attempts else None
    reason, elapsed = "", ""
    foreign = [
        where[job_id].name for where in (live, ended) if job_id in where and not is_ours(where[job_id], attempts[-1])
    ]
    if foreign:
        live, ended = {}, {}  # the id names another job now: Slurm knows nothing of ours
    if not attempts:
        state = UNSUBMITTED
    elif summary_is_final(summary, attempts[-1]):
        state, reason = summary["state"], summary.get("reason", "")
        elapsed = format_seconds(summary.get("duration_s"))
    elif job_id in live:
        state, elapsed, reason = live[job_id].state, live[job_id].elapsed, live[job_id].reason
    elif job_id in ended:
        state, elapsed, reason = ended[job_id].state, ended[job_id].elapsed, ended[job_id].reason
        if summary and summary.get("slurm_job_id") == job_id and summary.get("reason"):
            reason = summary["reason"]
    elif summary_is_for(summary, attempts[-1]) and summary.get("state") in ASK_SLURM_SUMMARY_STATES:
        state, reason = summary["state"], summary.get("reason", "")  # Slurm no longer knows the job
        elapsed = format_seconds(summary.get("duration_s"))
    elif answered and age_s(attempts[-1].get("submitted_at")) > LOST_GRACE_S:
        state = LOST
        reason = (
            f"job id {job_id} now names another job ({foreign[0]})"
            if foreign
            else f"Slurm knows no job {job_id} (purged, or the controller was reset)"
        )
    else:
        state = "UNKNOWN"
    if user_cancelled(paths, job_id) and state not in (
        "COMPLETED",
        "FAILED",
    ):  # a cancel that lost a race leaves the outcome
        state, reason = (
            (state, f"{CANCELLED_BY_USER}, stopping") if job_id in live else ("CANCELLED", CANCELLED_BY_USER)
        )
    return EvaluationStatus(
        eval_dir=str(paths.root),
        run=request.get("run", paths.root.parent.parent.name),
        iteration=request.get("iteration"),
        config_hash=request.get("config_hash", paths.root.name),
        job_id=job_id,
        state=state,
        attempts=len(attempts),
        elapsed=elapsed,
        reason=reason,
        created_at=request.get("created_at", ""),
        run_dir=evaluated_run_dir(request),
        checkpoint_changed=identity.changed_since(request.get("fingerprint"), request.get("checkpoint")),
        invocation_ids=invocation_ids(paths, summary),
    )


def is_ours(job: SlurmJobState, attempt: dict) -> bool:
    """Whether the job Slurm reports under a recorded id is the one we submitted (by its name).

    Records from before job_name was kept accept any hpc-eval job name.
    """
    if job.name in ("", "allocation"):
        return True  # no name to compare; sacct says "allocation" for a second or two after a cancel
    recorded = attempt.get("job_name")
    return job.name == recorded if recorded else job.name.startswith("hpc-eval")


def age_s(timestamp: str | None) -> float:
    """Seconds since a recorded `now_iso` time; 0 when there is none (never old enough to be LOST)."""
    try:
        return time.time() - datetime.strptime(timestamp or "", "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return 0.0


def user_cancelled(paths: EvalPaths, job_id: str | None) -> bool:
    """Whether `hpc-eval cancel` cancelled this job (an older attempt's record does not count)."""
    record = read_json(paths.root / CANCELLED_RECORD)
    return bool(record and job_id and record.get("slurm_job_id") == job_id)


def invocation_ids(paths: EvalPaths, summary: dict | None) -> list[str]:
    """The launcher invocation(s) of this evaluation: the latest attempt's, and the one a resume continues."""
    found = [(summary or {}).get("invocation_id"), (read_json(paths.payload_state) or {}).get("invocation_id")]
    return list(dict.fromkeys(item for item in found if item))


def evaluated_run_dir(request: dict) -> str | None:
    """The real directory of the run an evaluation's checkpoint belongs to (None for an endpoint).

    Requests written before run_dir was recorded get it from their checkpoint path.
    """
    if request.get("run_dir"):
        return request["run_dir"]
    return str(identity.run_dir_of(request["checkpoint"])) if request.get("checkpoint") else None


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%H:%M:%S", time.gmtime(int(seconds)))


def find_evaluation(target: str, roots: Iterable[Path]) -> EvalPaths | None:
    """An evaluation named by its directory, a Slurm job id (`123` or `123_4`), or `run:iteration`.

    `run` is the label or, where runs share one, the run's folder (`run1-3fa2c1d0`).
    """
    path = Path(target)
    if (path / "request.json").exists():
        return EvalPaths(path)
    evaluations = [paths for root in roots for paths in iter_evaluations(Path(root))]
    for paths in evaluations:
        if any(attempt.get("slurm_job_id") == target for attempt in paths.read_attempts()):
            return paths
    run, _, step = target.partition(":")
    step = step.removeprefix("iter_")
    matches = [
        paths
        for paths in evaluations
        if run in (paths.read_request().get("run"), paths.root.parent.parent.name)
        and (str(paths.read_request().get("iteration")) == step.lstrip("0") or paths.root.parent.name == step)
    ]
    return matches[-1] if matches else None


def log_files(paths: EvalPaths) -> dict[str, list[Path]]:
    """The Slurm stdout/stderr of the latest attempt and the launcher's per-task logs."""
    attempts = paths.read_attempts()
    slurm_logs = [Path(attempts[-1][key]) for key in ("stdout", "stderr")] if attempts else []
    return {"slurm": slurm_logs, "tasks": task_logs(paths.root)}
