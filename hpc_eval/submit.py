"""Plan evaluations and submit them to Slurm with submitit: one job, or one array for many.

`plan` turns a config and checkpoints into evaluation directories (claimed with mkdir) or skip
reasons; `submit` sends every planned evaluation in one `sbatch` (a job array when there are
several, split only where the cluster's MaxArraySize demands it) and records each attempt.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hpc_eval import __version__
from hpc_eval.config import SLURM_DEFAULTS, EvalConfig, save_launcher_config
from hpc_eval.deployments import check_checkpoints
from hpc_eval.errors import CheckpointError, ConfigError, SlurmUnavailable, SubmitError
from hpc_eval.store import claim_attempt, EvalPaths, claim, eval_dir, now_iso, run_name, write_json

@dataclass
class PlannedEvaluation:
    """One checkpoint (or endpoint) to evaluate: where, and whether it will be submitted."""

    paths: EvalPaths
    run: str
    checkpoint: Path | None
    iteration: int | None
    action: str = "submit"  # or "skip"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval_dir": str(self.paths.root), "run": self.run, "iteration": self.iteration,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None, "action": self.action, "reason": self.reason,
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
        return {"job_id": self.job_id, "submitit_folder": str(self.folder),
                "tasks": [{"slurm_job_id": task, **ev.to_dict(), **self.log_paths(task)}
                          for task, ev in zip(self.task_ids, self.evaluations)]}


def slurm_settings(config: EvalConfig, cli_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `slurm:` section over the defaults, with the command line's shorthands on top."""
    return settings_from(config.slurm, cli_overrides, config.source)


def settings_from(slurm: dict[str, Any], cli_overrides: dict[str, Any] | None, source: Path) -> dict[str, Any]:
    settings = {**SLURM_DEFAULTS, **slurm}
    settings.update({key: value for key, value in (cli_overrides or {}).items() if value is not None})
    settings["time_min"] = time_minutes(settings["time"], source)
    # USR2 must come before the time limit, or a requeued job dies of it before it starts
    settings["signal_delay_s"] = min(settings["signal_delay_s"], settings["time_min"] * 30)
    return settings


def time_minutes(value: Any, source: Path) -> int:
    """Slurm's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", str(value).strip())
    if not match:
        raise ConfigError(f"{source}: slurm.time {value!r} is not a Slurm time; write MINUTES, HH:MM:SS or D-HH:MM:SS")
    days = int(match.group(1) or 0)
    parts = [int(part) for part in match.group(2).split(":")]
    if days:
        hours, minutes, seconds = parts + [0] * (3 - len(parts))
    else:
        hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) == 3 else (0, parts[0], parts[1] if len(parts) == 2 else 0)
    return max(1, days * 1440 + hours * 60 + minutes + (1 if seconds else 0))


def plan(config: EvalConfig, checkpoints: list[tuple[Path, int | None]], *, run: str | None = None, force: bool = False) -> list[PlannedEvaluation]:
    """One planned evaluation per checkpoint (or one for the endpoint when there is none).

    An evaluation directory that already exists means the same config was already submitted for
    that checkpoint: it is skipped unless `force`.
    """
    config_hash = config.config_hash()
    targets: list[tuple[Path | None, int | None]] = list(checkpoints) or [(None, None)]
    planned = []
    for checkpoint, iteration in targets:
        run_label = run or run_name(checkpoint, config.source.stem)
        paths = EvalPaths(eval_dir(config.output_dir, run_label, checkpoint, config_hash))
        entry = PlannedEvaluation(paths, run_label, checkpoint, iteration)
        if paths.root.exists() and not force:
            entry.action, entry.reason = "skip", f"already evaluated with config {config_hash}: {paths.root} (use --force to evaluate again)"
        planned.append(entry)
    return planned


def prepare(config: EvalConfig, evaluation: PlannedEvaluation, *, force: bool = False) -> bool:
    """Claim the evaluation directory and write its request and launcher config.

    Returns False when another pass claimed it first.
    """
    if not claim(evaluation.paths.root) and not force:
        evaluation.action, evaluation.reason = "skip", f"claimed by another submission: {evaluation.paths.root}"
        return False
    write_request(config, evaluation)
    return True


def write_request(config: EvalConfig, evaluation: PlannedEvaluation) -> None:
    config_for_job = config
    if evaluation.checkpoint is not None and config.checkpoint_path != str(evaluation.checkpoint):
        config_for_job = config.for_checkpoint(evaluation.checkpoint)
    save_launcher_config(config_for_job, evaluation.paths.root)
    write_json(evaluation.paths.request, {
        "checkpoint": str(evaluation.checkpoint) if evaluation.checkpoint else None,
        "iteration": evaluation.iteration,
        "run": evaluation.run,
        "config_hash": config.config_hash(),
        "config_source": str(config.source),
        "task_filters": config.task_filters,
        "dry_run": config.dry_run,
        "slurm": config.slurm,  # so that a later resubmission asks for the same resources
        "hpc_eval_version": __version__,
        "created_at": now_iso(),
    })


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise SlurmUnavailable("sbatch is not on PATH: run hpc-eval on a Slurm login node (for a local test cluster: bash scripts/start-slurm.sh)")


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices run 0..MaxArraySize-1)."""
    try:
        output = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1001  # Slurm's default
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", output, re.M)
    return int(match.group(1)) if match else 1001


def make_executor(folder: Path, settings: dict[str, Any], job_name: str):
    """A submitit SlurmExecutor (never the local fallback of AutoExecutor)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings["max_requeues"])
    parameters = {
        "job_name": job_name,
        "time": settings["time_min"],
        "nodes": settings["nodes"],
        "ntasks_per_node": 1,
        "cpus_per_task": settings["cpus_per_task"],
        "signal_delay_s": settings["signal_delay_s"],
        "array_parallelism": settings["array_parallelism"],
        "additional_parameters": dict(settings["additional_parameters"] or {}),
        "srun_args": list(settings["srun_args"] or []),
        "setup": list(settings["setup"] or []),
    }
    for key in ("partition", "account", "qos", "mem", "constraint", "exclusive"):
        if settings[key] not in (None, False, ""):
            parameters[key] = settings[key]
    if settings["gpus_per_node"]:
        parameters["gpus_per_node"] = settings["gpus_per_node"]
    executor.update_parameters(**parameters)
    return executor


@contextlib.contextmanager
def outer_job_hidden() -> Iterator[None]:
    """Hide an enclosing job's SLURM_* variables (cron from scrontab, submit from a job); keep SLURM_CONF."""
    prefixes = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_")
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith(prefixes) and name != "SLURM_CONF"}
    try:
        yield
    finally:
        os.environ.update(hidden)


def submit(evaluations: list[PlannedEvaluation], settings: dict[str, Any], *, array_folder_root: Path) -> list[SubmittedJob]:
    """Submit the evaluations: one sbatch for one, one array per MaxArraySize chunk for many.

    Raises:
        SlurmUnavailable: sbatch is not on PATH.
        SubmitError: sbatch failed.
    """
    require_slurm()
    from hpc_eval.payload import Evaluation

    if len(evaluations) == 1:
        only = evaluations[0]
        executor = make_executor(only.paths.submitit, settings, job_label(only))
        with outer_job_hidden(), submit_errors():
            job = executor.submit(Evaluation(), str(only.paths.root))
        submitted = [SubmittedJob(job.job_id, [job.job_id], only.paths.submitit, [only])]
    else:
        submitted = []
        cluster_limit = max_array_size()
        chunk = min(settings["max_array_size"] or cluster_limit, cluster_limit)
        for start in range(0, len(evaluations), chunk):
            part = evaluations[start:start + chunk]
            array_folder_root.mkdir(parents=True, exist_ok=True)  # mkdtemp: unique even for two submissions in one second
            folder = Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{start}-", dir=array_folder_root))
            executor = make_executor(folder, settings, array_label(part))
            write_json_manifest(folder, part)
            with outer_job_hidden(), submit_errors():
                jobs = executor.map_array(Evaluation(), [str(ev.paths.root) for ev in part])
            submitted.append(SubmittedJob(jobs[0].job_id.split("_")[0], [job.job_id for job in jobs], folder, part))
    for batch in submitted:
        record_attempts(batch)
    return submitted


def write_json_manifest(folder: Path, part: list[PlannedEvaluation]) -> None:
    """Array index -> evaluation, fixed at submit time (submitit pickles the same mapping)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "manifest.json", [{"index": index, **ev.to_dict()} for index, ev in enumerate(part)])


@contextlib.contextmanager
def submit_errors() -> Iterator[None]:
    import submitit

    try:
        yield
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as error:
        detail = getattr(error, "stderr", None) or getattr(error, "output", None) or error
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise SubmitError(f"sbatch failed: {' '.join(str(detail).split())}") from None


def record_attempts(batch: SubmittedJob) -> None:
    for task_id, evaluation in zip(batch.task_ids, batch.evaluations):
        evaluation.paths.record_attempt({
            "slurm_job_id": task_id, "submitted_at": now_iso(), "submitit_folder": str(batch.folder),
            **batch.log_paths(task_id),
        })


def job_label(evaluation: PlannedEvaluation) -> str:
    return f"hpc-eval:{evaluation.run}:{evaluation.paths.root.parent.name}"


def array_label(part: list[PlannedEvaluation]) -> str:
    return f"hpc-eval:{part[0].run}:{len(part)}ckpts"


def dry_run_dir() -> Path:
    """Where --dry-run saves launcher configs: a temp dir, so that nothing is claimed."""
    return Path(tempfile.mkdtemp(prefix="hpc-eval-dry-run-"))


def sbatch_preview(settings: dict[str, Any], evaluations: list[PlannedEvaluation], folder: Path) -> str:
    """The sbatch script submitit would write (one job, or the array), for --dry-run."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit renders its script here

    label = job_label(evaluations[0]) if len(evaluations) == 1 else array_label(evaluations) if evaluations else "hpc-eval"
    executor = make_executor(folder, settings, label)
    parameters = dict(executor.parameters)
    if len(evaluations) > 1:
        parameters["map_count"] = len(evaluations)
    return _make_sbatch_string(command=executor._submitit_command_str, folder=folder, **parameters)


@dataclass
class Selection:
    """Which checkpoints of a training run's directory to take (`--all`, `--latest`, ...)."""

    all: bool = False
    latest: bool = False
    every: int | None = None
    from_step: int | None = None
    to_step: int | None = None

    @property
    def given(self) -> bool:
        return self.all or self.latest or any(v is not None for v in (self.every, self.from_step, self.to_step))


@dataclass
class CheckpointChoice:
    valid: list[tuple[Path, int | None]]
    invalid: list[tuple[str, str]]  # (path, reason)


def choose_checkpoints(given: list[str], selection: Selection, *, strict: bool = False, quiet_seconds: float = 0.0) -> CheckpointChoice:
    """Validate explicit checkpoints and expand training-run directories by the selection.

    Raises:
        CheckpointError: a single checkpoint is invalid, none is valid, or --strict and any is invalid.
    """
    from hpc_eval import checkpoint as ckpt

    valid: list[tuple[Path, int | None]] = []
    invalid: list[tuple[str, str]] = []
    for pattern in given:
        paths = sorted(globlib.glob(pattern)) if globlib.has_magic(pattern) else [pattern]
        if not paths:
            invalid.append((pattern, f"no path matches {pattern}"))
        for path in paths:
            if selection.given and ckpt.is_run_dir(path):
                found = ckpt.discover(path, select="latest" if selection.latest else "all", every=selection.every,
                                      from_step=selection.from_step, to_step=selection.to_step, quiet_seconds=quiet_seconds)
                valid += [(verdict.path, verdict.iteration) for verdict in found.valid]
                invalid += [(str(verdict.path), verdict.reason) for verdict in found.invalid]
                continue
            verdict = ckpt.validate(path, quiet_seconds=quiet_seconds)
            if verdict.ok:
                valid.append((verdict.path, verdict.iteration))
            else:
                invalid.append((str(verdict.path), verdict.reason))
    if invalid and (strict or (len(given) == 1 and not selection.given and not valid)):
        raise CheckpointError(f"invalid checkpoint {invalid[0][0]}: {invalid[0][1]}" + (f" (and {len(invalid) - 1} more)" if len(invalid) > 1 else ""))
    if given and not valid:
        reason = invalid[0][1] if invalid else "nothing selected"
        raise CheckpointError(f"no valid checkpoint among {', '.join(given)}: {reason}")
    return CheckpointChoice(valid, invalid)


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


def submit_evaluations(config: EvalConfig, choice: CheckpointChoice, settings: dict[str, Any], *,
                       run: str | None = None, force: bool = False, dry_run: bool = False) -> SubmitResult:
    """Plan, claim, save and submit; with dry_run, save under a temp dir and submit nothing.

    Raises:
        ConfigError: the deployment cannot serve what was given (see hpc_eval/deployments.py).
        SlurmUnavailable, SubmitError: as `submit`.
    """
    check_checkpoints(config.launcher, [checkpoint for checkpoint, _ in choice.valid], config.source)
    evaluations = plan(config, choice.valid, run=run, force=force)
    result = SubmitResult(evaluations, choice.invalid, [], dry_run)
    if dry_run:
        preview_root = dry_run_dir()
        for ev in result.to_submit:
            ev.paths = EvalPaths(preview_root / ev.paths.root.relative_to(config.output_dir))
            ev.paths.root.mkdir(parents=True)
            write_request(config, ev)
        folder = result.to_submit[0].paths.submitit if len(result.to_submit) == 1 else preview_root / ".arrays" / "preview"
        result.sbatch_script = sbatch_preview(settings, result.to_submit, folder)
        return result
    if result.to_submit:
        require_slurm()
    ready = [ev for ev in result.to_submit if prepare(config, ev, force=force)]
    if ready:
        result.jobs = submit(ready, settings, array_folder_root=config.output_dir / ".arrays")
    return result


def resubmit(evaluations: list[EvalPaths], cli_overrides: dict[str, Any] | None = None) -> list[SubmittedJob]:
    """Submit existing evaluations again, as one array; each resumes its launcher invocation.

    Tasks that already succeeded replay from the launcher's response cache, so only the missing
    ones cost model time. An evaluation another pass is resubmitting right now is left out.

    Raises:
        SlurmUnavailable, SubmitError: as `submit`.
    """
    require_slurm()
    claimed = [paths for paths in evaluations if claim_attempt(paths)]
    if not claimed:
        return []
    planned = []
    for paths in claimed:
        request = paths.read_request()
        checkpoint = Path(request["checkpoint"]) if request.get("checkpoint") else None
        planned.append(PlannedEvaluation(paths, request.get("run", paths.root.parent.parent.name), checkpoint, request.get("iteration")))
    first = claimed[0]
    settings = settings_from(first.read_request().get("slurm") or {}, cli_overrides, first.request)
    return submit(planned, settings, array_folder_root=first.root.parent.parent.parent / ".arrays")
