"""Plan evaluations, claim and save them, and submit them to Slurm: one job, or one array for many.

`plan` turns a config and checkpoints into evaluation directories (claimed with mkdir) or skip
reasons; sbatch.py's `submit` sends every planned evaluation in one `sbatch` (a job array when
there are several, split only where the cluster's MaxArraySize demands it) and records each attempt.

Only what is submitted stays claimed: when saving, sbatch or the record fails, every claim without
a recorded sbatch is released (so the same command submits it again) and a job that could not be
recorded is cancelled (so nothing runs unrecorded).
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_eval import __version__, identity
from hpc_eval.checkpoint import CheckpointChoice
from hpc_eval.config import EvalConfig
from hpc_eval.config_checks import refuse_line_breaks
from hpc_eval.deployments import check_checkpoints
from hpc_eval.errors import SubmitError
from hpc_eval.feasibility import check_feasible
from hpc_eval.launcher_yaml import launcher_config_text, save_launcher_config
from hpc_eval.sbatch import PlannedEvaluation, SubmittedJob, batch_label, describe_os_error, release_unsubmitted, submit
from hpc_eval.slurm import (
    SlurmSettings,
    require_slurm,
    sbatch_preview,
)
from hpc_eval.store import (
    EvalPaths,
    RequestTemplate,
    check_output_dir,
    claim,
    eval_dir,
    find_existing,
    now_iso,
    run_name,
    write_json,
)


def plan(
    config: EvalConfig, checkpoints: list[tuple[Path, int | None]], *, run: str | None = None, force: bool = False
) -> list[PlannedEvaluation]:
    """One planned evaluation per checkpoint (or one for the endpoint when there is none).

    An evaluation of the same checkpoint (its real path, as it is now: see `identity`) with the
    same config, under any label or in the old layout, means it was already submitted: it is
    skipped unless `force`.
    """
    config_hash = config.config_hash()
    targets: list[tuple[Path | None, int | None]] = list(checkpoints) or [(None, None)]
    planned = []
    for checkpoint, iteration in targets:
        if checkpoint is None:
            run_label = run or config.source.stem
            paths = EvalPaths(eval_dir(config.output_dir, run_label, None, config_hash))
            entry, existing = (
                PlannedEvaluation(paths, run_label, None, iteration),
                paths if paths.root.exists() else None,
            )
        else:
            run_label = run or run_name(identity.real_path(checkpoint), config.source.stem)
            fingerprint = identity.fingerprint(checkpoint)
            paths = EvalPaths(eval_dir(config.output_dir, run_label, checkpoint, config_hash, fingerprint))
            entry = PlannedEvaluation(paths, run_label, checkpoint, iteration, fingerprint=fingerprint)
            existing = find_existing(
                config.output_dir,
                run_label,
                checkpoint,
                config_hash,
                fingerprint,
                legacy_runs=(run_name(checkpoint, config.source.stem),),
            )
        if existing and not force:
            entry.action, entry.reason = (
                "skip",
                f"already evaluated with config {config_hash}: {existing.root} (use --force to evaluate again)",
            )
        planned.append(entry)
    return planned


def prepare(config: EvalConfig, evaluation: PlannedEvaluation, *, force: bool = False) -> bool:
    """Claim the evaluation directory and write its request and launcher config.

    Returns False when another pass claimed it first. Raises OSError (a full disk...) with the
    claim released.
    """
    if claim(evaluation.paths.root):
        evaluation.claimed = evaluation.paths.root
    elif not force:
        evaluation.action, evaluation.reason = "skip", f"claimed by another submission: {evaluation.paths.root}"
        return False
    try:
        write_request(config, evaluation)
    except OSError:
        release_unsubmitted([evaluation])
        raise
    return True


def prepare_all(config_for, evaluations: list[PlannedEvaluation], *, force: bool = False) -> list[PlannedEvaluation]:
    """`prepare` each (config_for(checkpoint) gives its config); the claimed ones.

    Raises:
        SubmitError: saving failed (a full disk or quota): every claim made here is released.
    """
    ready: list[PlannedEvaluation] = []
    for evaluation in evaluations:
        try:
            if prepare(config_for(evaluation.checkpoint), evaluation, force=force):
                ready.append(evaluation)
        except OSError as error:
            released = release_unsubmitted(ready)
            raise SubmitError(
                f"{describe_os_error(error)} while saving evaluation {len(ready) + 1} of {len(evaluations)}; "
                f"nothing submitted, {released + 1} claim(s) released: free space and run the same command again"
            ) from None
    return ready


def write_request(config: EvalConfig, evaluation: PlannedEvaluation, *, durable: bool = True) -> None:
    """Write the evaluation's launcher_config.yaml and request.json; a dry run's preview (not `durable`) in place."""
    save_launcher_config(
        config, evaluation.paths.root, launcher_config_text(config, evaluation.checkpoint, evaluation.paths.root)
    )
    if config.request_template is None:
        config.request_template = RequestTemplate(request_constants(config))
    varying = {
        "checkpoint": str(evaluation.checkpoint) if evaluation.checkpoint else None,
        "iteration": evaluation.iteration,
        "run": evaluation.run,
        # which checkpoint this is, whatever it is called: see hpc_eval.identity
        "run_dir": str(identity.run_dir_of(evaluation.checkpoint)) if evaluation.checkpoint else None,
        "checkpoint_realpath": str(identity.real_path(evaluation.checkpoint)) if evaluation.checkpoint else None,
        "fingerprint": evaluation.fingerprint,
        "created_at": now_iso(),
    }
    if durable:
        write_json(evaluation.paths.request, {**varying, **config.request_template.constants})
    else:  # a dry run's preview: nothing reads it while it is written
        evaluation.paths.request.write_text(config.request_template.text(varying))


def request_constants(config: EvalConfig) -> dict[str, Any]:
    """The request fields every checkpoint of one config shares."""
    return {
        "config_hash": config.config_hash(),
        "config_source": str(config.source),
        "task_filters": config.task_filters,
        "dry_run": config.dry_run,
        "slurm": config.slurm.as_dict(),  # so that a later resubmission asks for the same resources
        "hpc_eval_version": __version__,
    }


def dry_run_dir() -> Path:
    """Where --dry-run saves launcher configs: a temp dir, so that nothing is claimed."""
    return Path(tempfile.mkdtemp(prefix="hpc-eval-dry-run-"))


@dataclass
class SubmitResult:
    """What a submission did: evaluations (submitted or skipped), invalid checkpoints, sbatch calls."""

    evaluations: list[PlannedEvaluation]
    invalid: list[tuple[str, str]]
    jobs: list[SubmittedJob]
    dry_run: bool
    sbatch_script: str | None = None

    @property
    def to_submit(self) -> list[PlannedEvaluation]:
        return [ev for ev in self.evaluations if ev.action == "submit"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "evaluations": [ev.to_dict() for ev in self.evaluations],
            "invalid_checkpoints": [{"path": path, "reason": reason} for path, reason in self.invalid],
            "jobs": [job.to_dict() for job in self.jobs],
            "launcher_configs": [str(ev.paths.launcher_config) for ev in self.to_submit],
            "sbatch_script": self.sbatch_script,
        }


@identity.resolving_once()  # each checkpoint's and run dir's real path is resolved once
def submit_evaluations(
    config: EvalConfig,
    choice: CheckpointChoice,
    settings: SlurmSettings,
    *,
    run: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> SubmitResult:
    """Plan, claim, save and submit; with dry_run, save under a temp dir and submit nothing.

    Raises:
        ConfigError: the deployment cannot serve what was given (see hpc_eval/deployments.py).
        SlurmUnavailable, SubmitError: as `submit`.
    """
    if run is not None:
        refuse_line_breaks(run, "--run")
    for checkpoint, _ in choice.valid:
        refuse_line_breaks(str(checkpoint), "checkpoint path")
    check_checkpoints(config.launcher, [checkpoint for checkpoint, _ in choice.valid], config.source)
    check_output_dir(config.output_dir)
    evaluations = plan(config, choice.valid, run=run, force=force)
    result = SubmitResult(evaluations, choice.invalid, [], dry_run)
    if dry_run:
        preview_root = dry_run_dir()
        for ev in result.to_submit:
            ev.paths = EvalPaths(preview_root / ev.paths.root.relative_to(config.output_dir))
            ev.paths.root.mkdir(parents=True)
            write_request(config, ev, durable=False)
        folder = (
            result.to_submit[0].paths.submitit if len(result.to_submit) == 1 else preview_root / ".arrays" / "preview"
        )
        result.sbatch_script = sbatch_preview(settings, folder, batch_label(result.to_submit), len(result.to_submit))
        return result
    if result.to_submit:
        require_slurm()
        check_feasible(settings)
    ready = prepare_all(lambda _: config, result.to_submit, force=force)
    if ready:
        result.jobs = submit(ready, settings, array_folder_root=config.output_dir / ".arrays")
    return result


def follow_up_commands(result: SubmitResult, output_dir: Path) -> dict[str, str]:
    """What to run next after a submission, each a shell command line (empty when nothing was submitted)."""
    if not result.jobs:
        return {}

    def command(*args: Any) -> str:
        return shlex.join(["hpc-eval", *(str(arg) for arg in args)])

    return {
        "status_command": command("status", output_dir),
        "logs_command": command("logs", result.jobs[0].evaluations[0].paths.root),
        "results_command": command("results", output_dir),
    }
