"""The Python API: one function per command, each returning data and raising `HpcEvalError` subclasses.

The CLI (cli*.py) is these functions plus option parsing and formatting (output.py); a notebook or a
training script calls them directly:

    from hpc_eval import api
    submission = api.submit("tiny_chat", ["dry_run=true"], output_dir="evals")
    rows = api.status(["evals"])

Heavy modules (the launcher, submitit) are imported inside the functions that need them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_eval.errors import UsageError

if TYPE_CHECKING:
    from hpc_eval.cancel import CancelResult
    from hpc_eval.checkpoint_rules import Verdict
    from hpc_eval.config import EvalConfig
    from hpc_eval.export import ExportReport
    from hpc_eval.results import MissingResult, ResultsTable
    from hpc_eval.sbatch import SubmittedJob
    from hpc_eval.slurm import SlurmSettings
    from hpc_eval.status import EvaluationStatus
    from hpc_eval.submit import SubmitResult
    from hpc_eval.watch import PassResult, WatchOptions

DEFAULT_ROOT = "./results"
Progress = Callable[[int, int], None]


@dataclass
class Loaded:
    """A resolved config and its Slurm settings: what `submit` and every watch pass start from."""

    config: EvalConfig
    settings: SlurmSettings


def load(
    config: str = "default",
    overrides: Sequence[str] = (),
    *,
    checkpoint: str | Path | None = None,
    tasks: Sequence[str] = (),
    output_dir: str | Path | None = None,
    slurm: dict[str, Any] | None = None,
    placeholder: bool = False,
) -> Loaded:
    """Load a config (a built-in name or a YAML path), apply overrides, and build its Slurm settings.

    `slurm` sets Slurm settings on top of the config's `slurm:` section (any SlurmSettings key:
    partition, time, gpus_per_node, ...; None values are ignored), each checked like the config's.

    Raises:
        ConfigError: the file, an override or a slurm value is wrong.
    """
    from hpc_eval.config import load_config
    from hpc_eval.slurm import slurm_settings

    # --gpus changes the config's GPU count, so that the server command follows the sbatch line
    gpus = (slurm or {}).get("gpus_per_node")
    loaded = load_config(
        config,
        tuple(overrides),
        checkpoint=checkpoint,
        tasks=tuple(tasks),
        output_dir=output_dir,
        gpus=gpus,
        placeholder=placeholder,
    )
    return Loaded(loaded, slurm_settings(loaded, slurm))


@dataclass
class Submission:
    """What `submit` did, with the output dir it wrote under and, for a dry run, the job's commands."""

    result: SubmitResult
    output_dir: Path
    job_commands: str = ""  # dry run: the commands the job would run (execution.type hpc_eval)
    notes: list[str] = field(default_factory=list)  # what was converted from a launcher or Nemotron config

    def follow_up(self) -> dict[str, str]:
        """What to run next after a submission, each a shell-quoted command (empty when nothing was submitted)."""
        from hpc_eval.submit import follow_up_commands

        return follow_up_commands(self.result, self.output_dir)

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "output_dir": str(self.output_dir), "notes": self.notes, **self.follow_up()}


def submit(
    config: str = "default",
    overrides: Sequence[str] = (),
    *,
    checkpoints: Sequence[str] = (),
    select_all: bool = False,
    latest: bool = False,
    every: int | None = None,
    from_step: int | None = None,
    to_step: int | None = None,
    tasks: Sequence[str] = (),
    output_dir: str | Path | None = None,
    slurm: dict[str, Any] | None = None,
    run: str | None = None,
    strict: bool = False,
    force: bool = False,
    dry_run: bool = False,
) -> Submission:
    """Evaluate checkpoints (iter_* dirs, globs, or run dirs with a selection) as one Slurm job or array.

    Raises:
        CheckpointError, ConfigError, SlurmUnavailable, SubmitError.
    """
    from hpc_eval import submit as submit_lib
    from hpc_eval.checkpoint import Selection, choose_checkpoints
    from hpc_eval.preflight import preflight

    selection = Selection(select_all, latest, every, from_step, to_step)
    choice = choose_checkpoints(list(checkpoints), selection, strict=strict)
    first = choice.valid[0][0] if choice.valid else None
    loaded = load(config, overrides, checkpoint=first, tasks=tasks, output_dir=output_dir, slurm=slurm)
    preflight(loaded.config)
    result = submit_lib.submit_evaluations(
        loaded.config, choice, loaded.settings, run=run, force=force, dry_run=dry_run
    )
    submission = Submission(result, loaded.config.output_dir, notes=list(loaded.config.notes))
    if dry_run and result.to_submit:
        from hpc_eval.executor import describe_commands

        submission.job_commands = describe_commands(result.to_submit[0].paths.launcher_config)
    return submission


def validate(paths: Sequence[str | Path], *, quiet_seconds: float = 0.0) -> list[Verdict]:
    """One verdict per path: is it a complete Megatron Bridge iter_* checkpoint?"""
    from hpc_eval.checkpoint import validate_many

    return validate_many(paths, quiet_seconds=quiet_seconds)


def split_run_dirs(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """`watch DIR... key=value...`: an argument with `=` (or a leading ~) is an override."""
    overrides = [arg for arg in arguments if "=" in arg or arg.startswith("~")]
    return [arg for arg in arguments if arg not in overrides], overrides


def watch(
    run_dirs: Sequence[str | Path],
    config: str = "default",
    overrides: Sequence[str] = (),
    *,
    tasks: Sequence[str] = (),
    output_dir: str | Path | None = None,
    slurm: dict[str, Any] | None = None,
    options: WatchOptions | None = None,
    interval: float | None = None,
) -> Iterator[PassResult]:
    """Watch passes over the runs' checkpoint dirs: one, or with `interval` one every `interval` seconds
    until a stop file appears. The config is loaded once, before the first pass.

    Raises:
        UsageError: a run directory does not exist.  ConfigError: as `load`.
    """
    from hpc_eval import watch as watch_lib
    from hpc_eval.config_checks import refuse_line_breaks

    for path in run_dirs:
        refuse_line_breaks(str(path), "run directory")
    missing = [str(path) for path in run_dirs if not Path(path).is_dir()]
    if missing or not run_dirs:
        raise UsageError(
            f"run directory not found: {missing[0] if missing else '(none given)'}; give a training run's checkpoint directory"
        )
    # the run dir stands for its iterations: an HF server's export is checked per iteration (watch.scan_run)
    loaded = load(
        config, overrides, checkpoint=run_dirs[0], tasks=tasks, output_dir=output_dir, slurm=slurm, placeholder=True
    )
    placeholder = Path(run_dirs[0])

    def config_for(checkpoint: Path) -> EvalConfig:
        return loaded.config if checkpoint == placeholder else loaded.config.for_checkpoint(checkpoint)

    while True:
        result = watch_lib.watch_pass(
            [Path(path) for path in run_dirs],
            config_for,
            loaded.settings,
            options or watch_lib.WatchOptions(),
        )
        yield result
        if interval is None or result.stopped:
            return
        time.sleep(interval)


def watch_pass(
    run_dirs: Sequence[str | Path],
    config: str = "default",
    overrides: Sequence[str] = (),
    *,
    tasks: Sequence[str] = (),
    output_dir: str | Path | None = None,
    slurm: dict[str, Any] | None = None,
    options: WatchOptions | None = None,
) -> PassResult:
    """One watch pass: submit each new complete checkpoint of the runs once, as one array (see `watch`)."""
    return next(watch(run_dirs, config, overrides, tasks=tasks, output_dir=output_dir, slurm=slurm, options=options))


def existing_roots(roots: Iterable[str | Path]) -> list[Path]:
    """The output dirs to read (./results by default); a missing one is a usage error."""
    chosen = [str(root) for root in roots] or [DEFAULT_ROOT]
    missing = [root for root in chosen if not Path(root).exists()]
    if missing:
        raise UsageError(
            f"no such directory: {missing[0]}; give an output dir (the submit's --output-dir), a run folder or an evaluation directory"
        )
    return [Path(root) for root in chosen]


def status(roots: Iterable[str | Path] = ()) -> list[EvaluationStatus]:
    """One row per evaluation under the output dirs (default ./results), run folders or evaluation dirs."""
    from hpc_eval.status import collect_status

    return collect_status(existing_roots(roots))


def results(
    roots: Iterable[str | Path] = (),
    *,
    metrics: Sequence[str] = (),
    plot: str | Path | None = None,
    progress: Progress | None = None,
) -> ResultsTable:
    """Scores per training step; `metrics` keeps matching columns (exact key, substring or glob);
    `plot` also saves a line chart of them against training step (PNG; needs matplotlib)."""
    from hpc_eval import results as results_lib

    table = results_lib.collect_results(existing_roots(roots), progress=progress).select(list(metrics))
    if plot:
        results_lib.plot(table, plot)
    return table


def missing_results(roots: Iterable[str | Path] = (), *, progress: Progress | None = None) -> list[MissingResult]:
    """The checkpoints x launcher tasks without a result."""
    from hpc_eval.results import missing

    return missing(existing_roots(roots), progress=progress)


@dataclass
class Resubmission:
    """What `resubmit_missing` did: evaluations left alone because they still run, and the jobs sent."""

    still_running: list[str] = field(default_factory=list)
    jobs: list[SubmittedJob] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"still_running": self.still_running, "jobs": [job.to_dict() for job in self.jobs]}


def resubmit_missing(missing: Iterable[MissingResult]) -> Resubmission:
    """Send the evaluations with missing results again as one array (live ones are left alone).

    Raises:
        SlurmUnavailable, SubmitError.
    """
    from hpc_eval.sbatch import resubmit
    from hpc_eval.slurm import LIVE_STATES
    from hpc_eval.status import collect_status
    from hpc_eval.store import EvalPaths

    eval_dirs = sorted({item.eval_dir for item in missing})
    live = {row.eval_dir for row in collect_status([Path(d) for d in eval_dirs]) if row.state in LIVE_STATES}
    jobs = resubmit([EvalPaths(Path(d)) for d in eval_dirs if d not in live])
    return Resubmission(sorted(live), jobs)


def logs(target: str, roots: Iterable[str | Path] = ()) -> dict[str, list[Path]]:
    """The log files of an evaluation: {"slurm": [stdout, stderr], "tasks": [...]}.

    `target` is an evaluation directory, a Slurm job id (123 or 123_4), or RUN:ITERATION.

    Raises:
        UsageError: no evaluation matches.
    """
    from hpc_eval.status import find_evaluation, log_files

    search = [] if (Path(target) / "request.json").exists() else [str(root) for root in roots] or [DEFAULT_ROOT]
    paths = find_evaluation(target, existing_roots(search) if search else [])  # a directory needs no search
    if paths is None:
        raise UsageError(
            f"no evaluation found for '{target}' under {', '.join(search)}; give an evaluation directory, a job id or RUN:ITERATION (and --output-dir)"
        )
    return log_files(paths)


def show_config(
    config: str = "default",
    overrides: Sequence[str] = (),
    *,
    checkpoint: str | Path | None = None,
    tasks: Sequence[str] = (),
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The resolved launcher config (the tool's own keys removed; secrets by name only)."""
    from hpc_eval.config import load_config

    return load_config(
        config, tuple(overrides), checkpoint=checkpoint, tasks=tuple(tasks), output_dir=output_dir
    ).launcher


def export(
    roots: Iterable[str | Path] = (),
    to: Sequence[str] = ("wandb", "mlflow"),
    *,
    project: str | None = None,
    name: str | None = None,
    entity: str | None = None,
    tracking_uri: str | None = None,
) -> ExportReport:
    """Log finished evaluations' scores to W&B / MLflow at step = training iteration (see hpc_eval.export)."""
    from hpc_eval.export import export as export_scores

    return export_scores(
        existing_roots(roots), list(to), project=project, name=name, entity=entity, tracking_uri=tracking_uri
    )


def cancel(targets: Sequence[str], roots: Iterable[str | Path] = (), *, every: bool = False) -> CancelResult:
    """Cancel evaluations in one scancel (see hpc_eval.cancel); their records say "cancelled by user"."""
    from hpc_eval.cancel import cancel as cancel_evaluations

    searched = [Path(root) for root in roots] or ([Path(DEFAULT_ROOT)] if Path(DEFAULT_ROOT).is_dir() else [])
    return cancel_evaluations(list(targets), searched, every=every)
