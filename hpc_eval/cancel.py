"""`hpc-eval cancel`: stop evaluations on purpose, in one scancel call, and record that a user did.

Each cancelled evaluation gets `cancelled.json` (written atomically, before scancel, naming the
job it cancels), so `status` says "cancelled by user" rather than a bare CANCELLED that could be
the end of a time limit, and `watch` leaves it alone unless `--retry-failed`. A later attempt
(a new job id) is not covered by an older record.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_eval.errors import UsageError
from hpc_eval.slurm import LIVE_STATES, scancel
from hpc_eval.status import CANCELLED_BY_USER, CANCELLED_RECORD, find_evaluation, reconcile
from hpc_eval.store import EvalPaths, iter_evaluations, now_iso, write_json


@dataclass
class CancelResult:
    cancelled: list[dict[str, Any]] = field(default_factory=list)  # {eval_dir, job_id}
    left: list[dict[str, Any]] = field(default_factory=list)  # {eval_dir, state}: not live, nothing to cancel

    def to_dict(self) -> dict[str, Any]:
        return {"cancelled": self.cancelled, "left": self.left}


def cancel(targets: list[str], roots: list[Path], *, every: bool = False) -> CancelResult:
    """Cancel the live evaluations the targets name: one scancel for all of them.

    A target is an evaluation dir, a run folder, `run:iteration`, a job id (an array's id means
    all its tasks), or with `every` an output dir.

    Raises:
        UsageError: a target names no evaluation, or an output dir without `every`.
        SlurmUnavailable, SubmitError: scancel is missing or refused.
    """
    chosen: dict[Path, EvalPaths] = {}
    for target in targets:
        for paths in evaluations_for(target, roots, every):
            chosen.setdefault(paths.root, paths)
    result, job_ids = CancelResult(), []
    for row in reconcile(list(chosen.values())):
        if row.state in LIVE_STATES and row.job_id:
            job_ids.append(row.job_id)
            result.cancelled.append({"eval_dir": row.eval_dir, "job_id": row.job_id})
        else:
            result.left.append({"eval_dir": row.eval_dir, "state": row.state})
    for item in result.cancelled:  # first: the job's own summary may be written as soon as scancel lands
        write_json(
            Path(item["eval_dir"]) / CANCELLED_RECORD,
            {"slurm_job_id": item["job_id"], "by": getpass.getuser(), "at": now_iso(), "reason": CANCELLED_BY_USER},
        )
    scancel(job_ids)
    return result


def evaluations_for(target: str, roots: list[Path], every: bool) -> list[EvalPaths]:
    path = Path(target)
    if (path / "request.json").exists():
        return [EvalPaths(path)]
    if path.is_dir():
        if any(path.glob("*/*/request.json")):  # one training run's folder
            return list(iter_evaluations(path))
        if any(path.glob("*/*/*/request.json")):
            if not every:
                raise UsageError(f"{target} is an output dir: add --all to cancel every running evaluation under it")
            return list(iter_evaluations(path))
        raise UsageError(
            f"no evaluation under {target}; give an evaluation dir, a run folder, an output dir with --all, a job id or RUN:ITERATION"
        )
    evaluations = [paths for root in roots for paths in iter_evaluations(root)]
    array = [
        paths
        for paths in evaluations
        if target.isdigit()
        and any(attempt["slurm_job_id"].split("_")[0] == target for attempt in paths.read_attempts()[-1:])
    ]
    if array:
        return array
    found = find_evaluation(target, roots)
    if found is None:
        where = ", ".join(map(str, roots)) or "(no output dir)"
        raise UsageError(
            f"no evaluation found for '{target}' under {where}; give an evaluation dir, a job id or RUN:ITERATION (and --output-dir)"
        )
    return [found]
