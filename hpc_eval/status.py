"""Reconcile evaluation records with Slurm: one row per evaluation.

The state of an evaluation comes from its summary.json when the payload wrote a final one for
the latest attempt, else from `squeue` for live jobs, else from `sacct`, else "UNKNOWN". However
many evaluations there are, a call makes at most one `squeue` and one `sacct` call.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hpc_eval import identity
from hpc_eval.launcher_tree import task_logs
from hpc_eval.slurm import SlurmJobState, query_sacct, query_squeue
from hpc_eval.store import EvalPaths, iter_evaluations, read_json

FINAL_SUMMARY_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}
# The payload sees the same SIGTERM for scancel and for Slurm's time limit: ask Slurm before trusting it.
ASK_SLURM_SUMMARY_STATES = {"CANCELLED"}
# Ended by the cluster, not by the evaluation or a user: worth submitting again.
RETRYABLE_STATES = {"TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL"}
UNSUBMITTED = "UNSUBMITTED"  # claimed, but no sbatch recorded (the pass may have died in between)
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
    evaluations = [paths for root in roots for paths in iter_evaluations(Path(root))]
    return reconcile(evaluations)


def reconcile(evaluations: list[EvalPaths]) -> list[EvaluationStatus]:
    records = [(paths, paths.read_request(), paths.read_attempts(), paths.read_summary()) for paths in evaluations]
    pending_ids = [attempts[-1]["slurm_job_id"] for _, _, attempts, summary in records
                   if attempts and not summary_is_final(summary, attempts[-1])]
    live = query_squeue(pending_ids)
    ended = query_sacct([job for job in pending_ids if job not in live])
    rows = [row_for(paths, request, attempts, summary, live, ended) for paths, request, attempts, summary in records]
    rows.sort(key=lambda row: (row.run, row.run_dir or "", row.iteration if row.iteration is not None else -1, row.config_hash))
    return rows


def summary_is_final(summary: dict | None, attempt: dict) -> bool:
    return (summary_is_for(summary, attempt) and summary.get("state") in FINAL_SUMMARY_STATES
            and summary.get("state") not in ASK_SLURM_SUMMARY_STATES)


def summary_is_for(summary: dict | None, attempt: dict) -> bool:
    return bool(summary) and summary.get("slurm_job_id") == attempt["slurm_job_id"]


def row_for(paths: EvalPaths, request: dict, attempts: list[dict], summary: dict | None,
            live: dict[str, SlurmJobState], ended: dict[str, SlurmJobState]) -> EvaluationStatus:
    job_id = attempts[-1]["slurm_job_id"] if attempts else None
    reason, elapsed = "", ""
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
    else:
        state = "UNKNOWN"
    if user_cancelled(paths, job_id) and state not in ("COMPLETED", "FAILED"):  # a cancel that lost a race leaves the outcome
        state, reason = (state, f"{CANCELLED_BY_USER}, stopping") if job_id in live else ("CANCELLED", CANCELLED_BY_USER)
    return EvaluationStatus(
        eval_dir=str(paths.root), run=request.get("run", paths.root.parent.parent.name),
        iteration=request.get("iteration"), config_hash=request.get("config_hash", paths.root.name),
        job_id=job_id, state=state, attempts=len(attempts), elapsed=elapsed, reason=reason,
        created_at=request.get("created_at", ""), run_dir=evaluated_run_dir(request),
        checkpoint_changed=identity.changed_since(request.get("fingerprint"), request.get("checkpoint")),
        invocation_ids=invocation_ids(paths, summary),
    )


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
        if any(attempt["slurm_job_id"] == target for attempt in paths.read_attempts()):
            return paths
    run, _, step = target.partition(":")
    step = step.removeprefix("iter_")
    matches = [paths for paths in evaluations if run in (paths.read_request().get("run"), paths.root.parent.parent.name) and
               (str(paths.read_request().get("iteration")) == step.lstrip("0") or paths.root.parent.name == step)]
    return matches[-1] if matches else None


def log_files(paths: EvalPaths) -> dict[str, list[Path]]:
    """The Slurm stdout/stderr of the latest attempt and the launcher's per-task logs."""
    attempts = paths.read_attempts()
    slurm_logs = [Path(attempts[-1][key]) for key in ("stdout", "stderr")] if attempts else []
    return {"slurm": slurm_logs, "tasks": task_logs(paths.root)}
