"""Send planned evaluations to Slurm with submitit and record each attempt; submit existing ones again.

One evaluation is one sbatch; many are one job array per MaxArraySize chunk. When sbatch, saving or
the record fails, every claim without a recorded sbatch is released, and a job that could not be
recorded is cancelled (so nothing runs unrecorded).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_eval.errors import HpcEvalError, SubmitError
from hpc_eval.feasibility import check_feasible
from hpc_eval.slurm import (
    SlurmSettings,
    cancel,
    make_executor,
    max_array_size,
    outer_job_hidden,
    require_slurm,
    settings_from,
    submit_errors,
)
from hpc_eval.store import EvalPaths, claim_attempt, now_iso, release, write_json


@dataclass
class PlannedEvaluation:
    """One checkpoint (or endpoint) to evaluate: where, and whether it will be submitted."""

    paths: EvalPaths
    run: str
    checkpoint: Path | None
    iteration: int | None
    action: str = "submit"  # or "skip"
    reason: str = ""
    fingerprint: dict[str, Any] | None = None  # identity.fingerprint of the checkpoint when planned
    claimed: Path | None = None  # what this pass claimed (eval dir or .attempt marker) until its sbatch is recorded

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_dir": str(self.paths.root),
            "run": self.run,
            "iteration": self.iteration,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class SubmittedJob:
    """One sbatch call: a single job or an array, and the evaluations it carries."""

    job_id: str
    task_ids: list[str]
    folder: Path
    evaluations: list[PlannedEvaluation] = field(default_factory=list)

    def log_paths(self, task_id: str) -> dict[str, str]:
        """The Slurm stdout/stderr submitit gives one job or array task."""
        stem = self.folder / f"{task_id}_0_log"
        return {"stdout": f"{stem}.out", "stderr": f"{stem}.err"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "submitit_folder": str(self.folder),
            "tasks": [
                {"slurm_job_id": task, **ev.to_dict(), **self.log_paths(task)}
                for task, ev in zip(self.task_ids, self.evaluations)
            ],
        }


def release_unsubmitted(evaluations: list[PlannedEvaluation]) -> int:
    """Release the claims of evaluations with no recorded sbatch; how many were released."""
    released = 0
    for evaluation in evaluations:
        if evaluation.claimed is not None:
            release(evaluation.claimed)
            evaluation.claimed, released = None, released + 1
    return released


def describe_os_error(error: OSError) -> str:
    return f"{error.filename}: {error.strerror}" if error.filename else (error.strerror or str(error))


def submit(
    evaluations: list[PlannedEvaluation], settings: SlurmSettings, *, array_folder_root: Path
) -> list[SubmittedJob]:
    """Submit the evaluations: one sbatch for one, one array per MaxArraySize chunk for many.

    Raises:
        SlurmUnavailable: sbatch is not on PATH.
        SubmitError: sbatch, saving or recording failed; every claim without a recorded sbatch is
            released, and a job that could not be recorded is cancelled.
    """
    require_slurm()
    submitted: list[SubmittedJob] = []
    try:
        send(evaluations, settings, array_folder_root, submitted)
    except (HpcEvalError, OSError) as error:
        released = release_unsubmitted(evaluations)
        reason = describe_os_error(error) if isinstance(error, OSError) else str(error)
        done = sum(len(batch.task_ids) for batch in submitted)
        raise SubmitError(
            f"{reason}; {done} evaluation(s) submitted"
            + (f" (job {', '.join(b.job_id for b in submitted)})" if submitted else "")
            + (f", {released} claim(s) released: the same command submits them again" if released else "")
        ) from None
    return submitted


def send(
    evaluations: list[PlannedEvaluation],
    settings: SlurmSettings,
    array_folder_root: Path,
    submitted: list[SubmittedJob],
) -> None:
    """sbatch and record each batch; `submitted` holds the recorded ones when this raises."""
    from hpc_eval.payload import Evaluation

    if len(evaluations) == 1:
        only = evaluations[0]
        executor = make_executor(only.paths.submitit, settings, job_label(only))
        with outer_job_hidden(), submit_errors():
            job = executor.submit(Evaluation(), str(only.paths.root))
        record_attempts(SubmittedJob(job.job_id, [job.job_id], only.paths.submitit, [only]), job_label(only), submitted)
        return
    cluster_limit = max_array_size()
    chunk = min(settings.max_array_size or cluster_limit, cluster_limit)
    for start in range(0, len(evaluations), chunk):
        part = evaluations[start : start + chunk]
        array_folder_root.mkdir(parents=True, exist_ok=True)  # mkdtemp: unique even for two submissions in one second
        folder = Path(
            tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{start}-", dir=array_folder_root)
        )
        executor = make_executor(folder, settings, array_label(part))
        write_json_manifest(folder, part)
        with outer_job_hidden(), submit_errors():
            jobs = executor.map_array(Evaluation(), [str(ev.paths.root) for ev in part])
        batch = SubmittedJob(jobs[0].job_id.split("_")[0], [job.job_id for job in jobs], folder, part)
        record_attempts(batch, array_label(part), submitted)


def write_json_manifest(folder: Path, part: list[PlannedEvaluation]) -> None:
    """Array index -> evaluation, fixed at submit time (submitit pickles the same mapping)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "manifest.json", [{"index": index, **ev.to_dict()} for index, ev in enumerate(part)])


def record_attempts(batch: SubmittedJob, job_name: str, submitted: list[SubmittedJob]) -> None:
    """Record each task in its slurm.json; when one cannot be written, cancel the whole batch.

    `job_name` is recorded so that status trusts Slurm's answer for this id only while it names
    our job (ids start again at 1 after a controller reset).
    """
    try:
        for task_id, evaluation in zip(batch.task_ids, batch.evaluations):
            evaluation.paths.record_attempt(
                {
                    "slurm_job_id": task_id,
                    "submitted_at": now_iso(),
                    "submitit_folder": str(batch.folder),
                    "job_name": job_name,
                    **batch.log_paths(task_id),
                }
            )
    except OSError as error:
        cancel([batch.job_id])
        raise SubmitError(
            f"could not record job {batch.job_id}: {describe_os_error(error)}; cancelled it so that nothing runs unrecorded"
        ) from None
    for evaluation in batch.evaluations:
        evaluation.claimed = None
    submitted.append(batch)


def job_label(evaluation: PlannedEvaluation) -> str:
    return f"hpc-eval:{evaluation.run}:{evaluation.paths.root.parent.name}"


def array_label(part: list[PlannedEvaluation]) -> str:
    return f"hpc-eval:{part[0].run}:{len(part)}ckpts"


def batch_label(evaluations: list[PlannedEvaluation]) -> str:
    return (
        job_label(evaluations[0]) if len(evaluations) == 1 else array_label(evaluations) if evaluations else "hpc-eval"
    )


def resubmit(evaluations: list[EvalPaths], cli_overrides: dict[str, Any] | None = None) -> list[SubmittedJob]:
    """Submit existing evaluations again, as one array; each resumes its launcher invocation.

    Tasks that already succeeded replay from the launcher's response cache, so only the missing
    ones cost model time. An evaluation another pass is resubmitting right now is left out.

    Raises:
        SlurmUnavailable, SubmitError: as `submit`.
    """
    require_slurm()
    if not evaluations:
        return []
    first = evaluations[0]
    settings = settings_from(first.read_request().get("slurm") or {}, cli_overrides, first.request)
    check_feasible(settings)
    planned = []
    for paths in evaluations:
        marker = claim_attempt(paths)
        if marker is None:
            continue
        request = paths.read_request()
        checkpoint = Path(request["checkpoint"]) if request.get("checkpoint") else None
        planned.append(
            PlannedEvaluation(
                paths,
                request.get("run", paths.root.parent.parent.name),
                checkpoint,
                request.get("iteration"),
                claimed=marker,
            )
        )
    if not planned:
        return []
    return submit(planned, settings, array_folder_root=first.root.parent.parent.parent / ".arrays")
