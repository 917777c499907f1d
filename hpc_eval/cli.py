"""The `hpc-eval` command line: parse options, call one function of the API (api.py), format its result (output.py).

Heavy modules (the launcher, submitit) are imported inside the API's functions, so that
`hpc-eval --help` stays fast.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from pathlib import Path

import click

from hpc_eval import api, output
from hpc_eval.errors import HpcEvalError
from hpc_eval.output import format_option


class CliError(click.ClickException):
    """A library error shown as one line, with the library's exit code."""

    def __init__(self, error: HpcEvalError):
        super().__init__(str(error))
        self.exit_code = error.exit_code


def translate_errors(command):
    """Show HpcEvalError as `Error: ...` (no traceback) unless --debug was given."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HpcEvalError as error:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise CliError(error) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="hpc-eval")
def main(debug: bool) -> None:
    """Evaluate LLM checkpoints on a Slurm cluster with NeMo Evaluator Launcher."""


# ---- commands below; each one calls a library function and formats what it returns ----


def config_options(command):
    """The options every command that loads a config shares (submit, watch, config show)."""
    options = [
        click.option(
            "-c",
            "--config",
            "config_name",
            default="default",
            show_default=True,
            help="A built-in config name (default, tiny_chat) or a YAML path.",
        ),
        click.argument("overrides", nargs=-1),
        click.option(
            "-t",
            "--task",
            "tasks",
            multiple=True,
            help="Run only this task (name or name.INDEX); repeatable; wins over task_filters.",
        ),
        click.option(
            "--output-dir",
            type=click.Path(file_okay=False),
            help="Root of all evaluation directories (the output_dir key).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def slurm_options(command):
    options = [
        click.option("--partition", help="Slurm partition (slurm.partition)."),
        click.option("--account", help="Slurm account (slurm.account)."),
        click.option("--time", "time_limit", help="Time limit, e.g. 04:00:00 (slurm.time)."),
        click.option("--gpus", type=int, help="GPUs per node (slurm.gpus_per_node)."),
        click.option("--parallel", type=int, help="At most N array tasks at once (slurm.array_parallelism)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def slurm_cli_overrides(partition, account, time_limit, gpus, parallel) -> dict:
    return {
        "partition": partition,
        "account": account,
        "time": time_limit,
        "gpus_per_node": gpus,
        "array_parallelism": parallel,
    }


def selection_options(command):
    options = [
        click.option("--all", "select_all", is_flag=True, help="Every valid checkpoint of a run directory."),
        click.option("--latest", is_flag=True, help="The latest valid checkpoint of a run directory (tracker first)."),
        click.option("--every", type=int, help="Checkpoints whose step is a multiple of N."),
        click.option("--from-step", type=int, help="Checkpoints at or after this step."),
        click.option("--to-step", type=int, help="Checkpoints at or before this step."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


OVERRIDES_HELP = """\b
Overrides (OVERRIDES, after the options):
  key=value          set a key the config has, `???` ones included
                     (deployment.port=8001, deployment.checkpoint_path=/runs/a/iter_0000100)
  +key=value         add a key the config does not have (+evaluation.nemo_evaluator_config.config.params.extra.seed=1)
  ~key               delete a key (~target.api_endpoint.api_key_name)
  slurm.key=value    a Slurm setting, checked (slurm.time=02:00:00, slurm.gpus_per_node=4; with a +
                     for any other sbatch flag: +slurm.additional_parameters.reservation=r1)
Values are YAML (true, 3, [a, b]); quote them for the shell."""


@main.command(epilog=OVERRIDES_HELP)
@config_options
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    help="An iter_* directory, a glob, or a run's checkpoint directory with --all/--latest/...; repeatable.",
)
@selection_options
@slurm_options
@click.option(
    "--run", "run_label", help="Name of the training run in the output tree (default: from the checkpoint path)."
)
@click.option("--strict", is_flag=True, help="Refuse the whole submission when any selected checkpoint is invalid.")
@click.option("--force", is_flag=True, help="Evaluate again checkpoints already evaluated with the same config.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Resolve, validate and save everything under a temp dir and show the sbatch script; submit nothing. "
    "(The `dry_run` config key is different: the launcher's own dry run, inside the job.)",
)
@format_option
@translate_errors
def submit(
    config_name,
    overrides,
    tasks,
    output_dir,
    checkpoints,
    select_all,
    latest,
    every,
    from_step,
    to_step,
    partition,
    account,
    time_limit,
    gpus,
    parallel,
    run_label,
    strict,
    force,
    dry_run,
    fmt,
):
    """Submit evaluations of checkpoints as one Slurm job or one job array.

    \b
    Examples:
      hpc-eval submit -c default --checkpoint /runs/a/checkpoints/iter_0002000
      hpc-eval submit -c my.yaml --checkpoint /runs/a/checkpoints --all --parallel 4
      hpc-eval submit -c tiny_chat --dry-run slurm.time=00:30:00 +deployment.extra_args=--foo
    """
    submission = api.submit(
        config_name,
        overrides,
        checkpoints=checkpoints,
        select_all=select_all,
        latest=latest,
        every=every,
        from_step=from_step,
        to_step=to_step,
        tasks=tasks,
        output_dir=output_dir,
        slurm=slurm_cli_overrides(partition, account, time_limit, gpus, parallel),
        run=run_label,
        strict=strict,
        force=force,
        dry_run=dry_run,
    )
    output.show_submission(submission, fmt)


@main.group("config")
def config_group():
    """Inspect configs."""


@config_group.command("show", epilog=OVERRIDES_HELP)
@config_options
@click.option("--checkpoint", help="Set deployment.checkpoint_path (interpolations follow it).")
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True, help="Output format."
)
@translate_errors
def config_show(config_name, overrides, tasks, output_dir, checkpoint, fmt):
    """Print the resolved launcher config (the tool's own keys removed; secrets by name only)."""
    launcher = api.show_config(config_name, overrides, checkpoint=checkpoint, tasks=tasks, output_dir=output_dir)
    if fmt == "json":
        output.emit_json(launcher)
        return
    from omegaconf import OmegaConf

    click.echo(OmegaConf.to_yaml(OmegaConf.create(launcher)), nl=False)


@main.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@format_option
@click.option(
    "--quiet-seconds",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Warn when files changed within this many seconds (a save may still be running).",
)
@translate_errors
def validate_command(paths: tuple[str, ...], fmt: str, quiet_seconds: float) -> None:
    """Check that each PATH is a complete Megatron Bridge iter_* checkpoint (exit 1 if any is not)."""
    verdicts = api.validate(paths, quiet_seconds=quiet_seconds)
    output.show_verdicts(verdicts, fmt)
    if not all(verdict.ok for verdict in verdicts):
        sys.exit(1)


@main.command()
@click.argument("roots", nargs=-1, type=click.Path())
@format_option
@click.option(
    "--watch", "watch_seconds", type=float, default=None, metavar="SECONDS", help="Refresh in place every SECONDS."
)
@translate_errors
def status(roots, fmt, watch_seconds):
    """One row per evaluation under OUTPUT_DIR (default ./results), a run folder or an evaluation.

    State comes from summary.json, else squeue, else sacct: one call of each, however many jobs.
    """
    while True:
        text = output.status_text([row.to_dict() for row in api.status(roots)], fmt)
        if watch_seconds is None:
            click.echo(text)
            return
        click.clear()
        click.echo(f"{time.strftime('%H:%M:%S')}  (every {watch_seconds:g}s, Ctrl-C to stop)\n{text}")
        time.sleep(watch_seconds)


@main.command()
@click.argument("target")
@click.option(
    "--output-dir", "roots", multiple=True, type=click.Path(), help="Where to look for job ids (default ./results)."
)
@click.option("--follow", "-f", is_flag=True, help="Follow the logs (tail -F) until Ctrl-C.")
@format_option
@translate_errors
def logs(target, roots, follow, fmt):
    """Paths of an evaluation's Slurm stdout/stderr and the launcher's per-task logs.

    TARGET is an evaluation directory, a Slurm job id (123 or 123_4), or RUN:ITERATION.
    """
    files = api.logs(target, roots)
    output.show_logs(files, fmt)
    if follow:
        existing = [str(path) for found in files.values() for path in found]
        os.execvp("tail", ["tail", "-F", *existing])


@main.command(epilog=OVERRIDES_HELP)
@click.argument("arguments", nargs=-1, required=True, metavar="RUN_DIR... [KEY=VALUE...]")
@click.option(
    "-c", "--config", "config_name", default="default", show_default=True, help="A built-in config name or a YAML path."
)
@click.option("-t", "--task", "tasks", multiple=True, help="Run only this task; repeatable.")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Root of all evaluation directories.")
@slurm_options
@click.option("--max-submit", type=int, help="Submit at most K checkpoints per pass (newest first).")
@click.option(
    "--max-attempts", type=int, default=3, show_default=True, help="Submissions per evaluation, retries included."
)
@click.option("--retry-failed", is_flag=True, help="Also retry evaluations that FAILED or were CANCELLED.")
@click.option(
    "--quiet-seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="Skip checkpoints with a file changed this recently (a save may be running).",
)
@click.option("--oldest-first", is_flag=True, help="Submit the oldest new checkpoints first.")
@click.option(
    "--stop-file",
    type=click.Path(dir_okay=False),
    help="Exit at once without submitting while this file exists (default OUTPUT_DIR/STOP).",
)
@click.option(
    "--loop", is_flag=True, help="Run a pass every --interval seconds instead of once (for tmux; cron needs no loop)."
)
@click.option("--interval", type=float, default=300.0, show_default=True, help="Seconds between passes with --loop.")
@format_option
@click.option(
    "--quiet", "-q", is_flag=True, help="Hide the `skipped` lines (ended, cancelled, unreadable, claimed elsewhere)."
)
@translate_errors
def watch(
    arguments,
    config_name,
    tasks,
    output_dir,
    partition,
    account,
    time_limit,
    gpus,
    parallel,
    max_submit,
    max_attempts,
    retry_failed,
    quiet_seconds,
    oldest_first,
    stop_file,
    loop,
    interval,
    fmt,
    quiet,
):
    """One pass: submit each new complete checkpoint of the runs once, as one array.

    Evaluations Slurm no longer knows (state LOST: purged from accounting, or the controller was
    reset) are submitted again like TIMEOUT ones, up to --max-attempts; each evaluation left alone
    gets one `skipped` line with the reason.

    \b
    Exit codes: 0 nothing to do or all submitted; 1 a submission failed; 2 usage or config
    error; 75 another pass is still running.
    """
    from hpc_eval.watch import WatchOptions

    run_dirs, overrides = api.split_run_dirs(arguments)
    options = WatchOptions(
        max_submit, max_attempts, retry_failed, quiet_seconds, oldest_first, Path(stop_file) if stop_file else None
    )
    for result in api.watch(
        run_dirs,
        config_name,
        overrides,
        tasks=tasks,
        output_dir=output_dir,
        options=options,
        slurm=slurm_cli_overrides(partition, account, time_limit, gpus, parallel),
        interval=interval if loop else None,
    ):
        output.show_pass(result, fmt, quiet)
    sys.exit(result.exit_code)


@main.command()
@click.argument("watch_args", nargs=-1, required=True)
@click.option("--every", "minutes", type=int, default=15, show_default=True, help="Minutes between passes.")
@click.option("--partition", default="cpu", show_default=True, help="Partition for the scrontab job (a CPU one).")
@click.option("--time", "time_limit", default="00:10:00", show_default=True, help="Time limit of each scrontab run.")
@click.option(
    "--log",
    type=click.Path(dir_okay=False),
    default="hpc-eval-watch.log",
    show_default=True,
    help="Where passes append their output.",
)
def cron(watch_args, minutes, partition, time_limit, log):
    """Print a crontab line and a scrontab file that run `hpc-eval watch WATCH_ARGS...`; installs nothing.

    \b
    Example:
      hpc-eval cron --every 10 -- /runs/a/checkpoints -c my.yaml --output-dir /evals
    """
    from hpc_eval.watch import render_cron

    executable = shutil.which("hpc-eval") or os.path.abspath(sys.argv[0])
    output_dir = next(
        (watch_args[i + 1] for i, arg in enumerate(watch_args[:-1]) if arg == "--output-dir"), "./results"
    )
    texts = render_cron(
        list(watch_args),
        executable=executable,
        cwd=Path.cwd(),
        path_env=os.environ.get("PATH", ""),
        minutes=minutes,
        partition=partition,
        time_limit=time_limit,
        log=Path(log).absolute(),
        stop_file=Path(output_dir).absolute() / "STOP",
    )
    click.echo("# ---- crontab ----\n" + texts["crontab"] + "\n# ---- scrontab ----\n" + texts["scrontab"], nl=False)


@main.command()
@click.argument("roots", nargs=-1, type=click.Path())
@format_option
@click.option(
    "--metric",
    "metric_patterns",
    multiple=True,
    help="Only matching columns: an exact key, a substring or a glob (bfcl/*); repeatable.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Also save a line chart of the scores against training step (PNG).",
)
@click.option(
    "--missing", "list_missing", is_flag=True, help="List the checkpoints × launcher tasks without a result instead."
)
@click.option(
    "--resubmit",
    is_flag=True,
    help="With --missing: submit those evaluations again as one array (finished tasks replay from the cache).",
)
@translate_errors
def results(roots, fmt, metric_patterns, plot_path, list_missing, resubmit):
    """Scores per training step of every evaluation under OUTPUT_DIR (default ./results) or a run folder.

    \b
    Examples:
      hpc-eval results results/ --metric 'bfcl/*' --format markdown
      hpc-eval results results/my-run --plot scores.png
      hpc-eval results --missing
    """
    progress = output.show_scan_progress if sys.stderr.isatty() else None  # quiet when piped or logged
    if resubmit and not list_missing:
        api.existing_roots(roots)
        raise click.UsageError("--resubmit goes with --missing")
    if list_missing:
        missing = api.missing_results(roots, progress=progress)
        click.echo(output.render([item.to_dict() for item in missing], output.MISSING_COLUMNS, fmt))
        if resubmit:
            output.show_resubmission(api.resubmit_missing(missing))
        return
    table = api.results(roots, metrics=metric_patterns, plot=plot_path, progress=progress)
    if plot_path:
        click.echo(f"plot: {plot_path}", err=True)  # stderr, so that stdout stays one clean table
    output.show_results(table, fmt)


@main.command("export")
@click.argument("roots", nargs=-1, type=click.Path())
@click.option(
    "--to",
    "destinations",
    multiple=True,
    required=True,
    type=click.Choice(["wandb", "mlflow"]),
    help="Where to log the scores; repeatable.",
)
@click.option(
    "--project", help="W&B project / MLflow experiment (default: export.<dest> in the config, else hpc-eval)."
)
@click.option("--name", help="The tracking run's name (default: the run's label and its config hash).")
@click.option("--entity", help="W&B entity (team).")
@click.option(
    "--tracking-uri", help="MLflow tracking URI (default: export.mlflow.tracking_uri, else MLFLOW_TRACKING_URI)."
)
@format_option
@translate_errors
def export_command(roots, destinations, project, name, entity, tracking_uri, fmt):
    """Log finished evaluations' scores to W&B / MLflow at step = training iteration (again: adds nothing).

    \b
    Examples:
      hpc-eval export results/ --to wandb --project my-team
      hpc-eval export results/ --to mlflow --tracking-uri http://mlflow:5000
    """
    report = api.export(roots, destinations, project=project, name=name, entity=entity, tracking_uri=tracking_uri)
    output.show_export(report, fmt)


@main.command("cancel")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--all", "every", is_flag=True, help="A TARGET that is an output dir means every running evaluation under it."
)
@click.option(
    "--output-dir",
    "roots",
    multiple=True,
    type=click.Path(),
    help="Where to look for job ids and RUN:ITERATION (default ./results).",
)
@format_option
@translate_errors
def cancel_command(targets, every, roots, fmt):
    """Cancel running or pending evaluations in one scancel; status then says "cancelled by user".

    TARGET is an evaluation dir, a run folder, RUN:ITERATION, a job id (an array id: all its
    tasks) or, with --all, an output dir. `watch` does not submit them again unless --retry-failed.
    """
    output.show_cancel(api.cancel(targets, roots, every=every), fmt)
