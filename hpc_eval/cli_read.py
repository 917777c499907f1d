"""The commands that read and act on what was submitted: status, logs, results, validate, export, cancel."""

from __future__ import annotations

import os
import sys
import time

import click

from hpc_eval import api, output
from hpc_eval.cli_options import translate_errors
from hpc_eval.output import format_option


@click.command("validate")
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


@click.command()
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


@click.command()
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


@click.command()
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


@click.command("export")
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


@click.command("cancel")
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
