"""The `hpc-eval` command line: parse options, call one library function, format its result.

Heavy modules (the launcher, submitit) are imported inside the commands that need them, so that
`hpc-eval --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import click

from hpc_eval.errors import HpcEvalError


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


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="hpc-eval")
def main(debug: bool) -> None:
    """Evaluate LLM checkpoints on a Slurm cluster with NeMo Evaluator Launcher."""


# ---- commands below; each one calls a library function and formats what it returns ----


def config_options(command):
    """The options every command that loads a config shares (submit, watch, config show)."""
    options = [
        click.option("-c", "--config", "config_name", default="default", show_default=True,
                     help="A built-in config name (default, tiny_chat) or a YAML path."),
        click.argument("overrides", nargs=-1),
        click.option("-t", "--task", "tasks", multiple=True, help="Run only this task (name or name.INDEX); repeatable; wins over task_filters."),
        click.option("--output-dir", type=click.Path(file_okay=False), help="Root of all evaluation directories (the output_dir key)."),
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
    return {"partition": partition, "account": account, "time": time_limit, "gpus_per_node": gpus, "array_parallelism": parallel}


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


@main.command()
@config_options
@click.option("--checkpoint", "checkpoints", multiple=True,
              help="An iter_* directory, a glob, or a run's checkpoint directory with --all/--latest/...; repeatable.")
@selection_options
@slurm_options
@click.option("--run", "run_label", help="Name of the training run in the output tree (default: from the checkpoint path).")
@click.option("--strict", is_flag=True, help="Refuse the whole submission when any selected checkpoint is invalid.")
@click.option("--force", is_flag=True, help="Evaluate again checkpoints already evaluated with the same config.")
@click.option("--dry-run", is_flag=True,
              help="Resolve, validate and save everything under a temp dir and show the sbatch script; submit nothing. "
                   "(The `dry_run` config key is different: the launcher's own dry run, inside the job.)")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@translate_errors
def submit(config_name, overrides, tasks, output_dir, checkpoints, select_all, latest, every, from_step, to_step,
           partition, account, time_limit, gpus, parallel, run_label, strict, force, dry_run, as_json):
    """Submit evaluations of checkpoints as one Slurm job or one job array.

    \b
    Examples:
      hpc-eval submit -c default --checkpoint /runs/a/checkpoints/iter_0002000
      hpc-eval submit -c my.yaml --checkpoint /runs/a/checkpoints --all --parallel 4
      hpc-eval submit -c tiny_chat --dry-run
    """
    from hpc_eval import config as config_lib
    from hpc_eval import submit as submit_lib
    from hpc_eval.slurm import slurm_settings

    selection = submit_lib.Selection(select_all, latest, every, from_step, to_step)
    choice = submit_lib.choose_checkpoints(list(checkpoints), selection, strict=strict)
    first = choice.valid[0][0] if choice.valid else None
    config = config_lib.load_config(config_name, overrides, checkpoint=first, tasks=tasks, output_dir=output_dir)
    config_lib.preflight(config)
    settings = slurm_settings(config, slurm_cli_overrides(partition, account, time_limit, gpus, parallel))
    result = submit_lib.submit_evaluations(config, choice, settings, run=run_label, force=force, dry_run=dry_run)
    if as_json:
        emit_json({**result.to_dict(), "output_dir": str(config.output_dir), **follow_up_commands(result, config.output_dir)})
    else:
        print_submit_result(result, config.output_dir)


def follow_up_commands(result, output_dir) -> dict[str, str]:
    """What to run next after a submission (empty when nothing was submitted)."""
    if not result.jobs:
        return {}
    return {"status_command": f"hpc-eval status {output_dir}",
            "logs_command": f"hpc-eval logs {result.jobs[0].evaluations[0].paths.root}",
            "results_command": f"hpc-eval results {output_dir}"}


def print_submit_result(result, output_dir) -> None:
    for path, reason in result.invalid:
        click.echo(f"skip (invalid): {path}: {reason}")
    for evaluation in result.evaluations:
        if evaluation.action == "skip":
            click.echo(f"skip: {evaluation.checkpoint or evaluation.run}: {evaluation.reason}")
    for evaluation in result.to_submit:
        if result.dry_run:
            click.echo(f"submit: {evaluation.checkpoint or evaluation.run}")
        click.echo(f"launcher_config: {evaluation.paths.launcher_config}")
    if result.dry_run:
        count = len(result.to_submit)
        click.echo(f"dry run: would submit {count} evaluation(s)" + (f" as one array of {count}" if count > 1 else "") + "; nothing submitted")
        if result.sbatch_script and count:
            click.echo("sbatch script:\n" + result.sbatch_script)
        if count:
            from hpc_eval.executor import describe_commands

            first = result.to_submit[0]
            commands = describe_commands(first.paths.launcher_config)
            if commands:
                click.echo(f"commands in the job (execution.type hpc_eval; {first.checkpoint.name if first.checkpoint else 'the endpoint'}):\n{commands}")
        return
    if not result.jobs:
        click.echo("nothing to submit")
        return
    if len(result.jobs) > 1:
        click.echo(f"split into {len(result.jobs)} arrays: {len(result.to_submit)} evaluations exceed the array size limit")
    for job in result.jobs:
        kind = f"array job {job.job_id} ({len(job.task_ids)} tasks)" if len(job.task_ids) > 1 else f"job {job.job_id}"
        click.echo(f"submitted {kind}")
        for task_id, evaluation in zip(job.task_ids, job.evaluations):
            click.echo(f"  {task_id}  {evaluation.paths.root}")
            click.echo(f"    stdout: {job.log_paths(task_id)['stdout']}")
    for name, command in follow_up_commands(result, output_dir).items():
        click.echo(f"{name}: {command}")


@main.group("config")
def config_group():
    """Inspect configs."""


@config_group.command("show")
@config_options
@click.option("--checkpoint", help="Set deployment.checkpoint_path (interpolations follow it).")
@translate_errors
def config_show(config_name, overrides, tasks, output_dir, checkpoint):
    """Print the resolved launcher config (the tool's own keys removed; secrets by name only)."""
    from omegaconf import OmegaConf

    from hpc_eval.config import load_config

    config = load_config(config_name, overrides, checkpoint=checkpoint, tasks=tasks, output_dir=output_dir)
    click.echo(OmegaConf.to_yaml(OmegaConf.create(config.launcher)), nl=False)


@main.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of verdicts.")
@click.option(
    "--quiet-seconds", type=click.FloatRange(min=0), default=0.0, show_default=True,
    help="Warn when files changed within this many seconds (a save may still be running).",
)
@translate_errors
def validate_command(paths: tuple[str, ...], as_json: bool, quiet_seconds: float) -> None:
    """Check that each PATH is a complete Megatron Bridge iter_* checkpoint (exit 1 if any is not)."""
    from hpc_eval import checkpoint

    verdicts = checkpoint.validate_many(paths, quiet_seconds=quiet_seconds)
    if as_json:
        emit_json([verdict.to_dict() for verdict in verdicts])
    else:
        for verdict in verdicts:
            if verdict.ok:
                click.echo(f"OK  {verdict.path}  iter {verdict.iteration}  {verdict.format}")
            else:
                click.echo(f"INVALID  {verdict.path}: {verdict.reason}")
            for warning in verdict.warnings:
                click.echo(f"  warning: {warning}")
    if not all(verdict.ok for verdict in verdicts):
        sys.exit(1)


def render(rows: list[dict], columns: list[str], fmt: str) -> str:
    """Rows as an aligned table, CSV, JSON or Markdown: the one renderer every listing uses."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    cells = [[("" if row.get(column) is None else str(row.get(column))) for column in columns] for row in rows]
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return buffer.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in [columns] + cells]
    return "\n".join(lines)


def default_roots(roots: tuple[str, ...]) -> list[str]:
    """The output dirs to read (./results by default); a missing one is a usage error."""
    from hpc_eval.errors import UsageError

    chosen = list(roots) or ["./results"]
    missing = [root for root in chosen if not Path(root).exists()]
    if missing:
        raise UsageError(f"no such directory: {missing[0]}; give an output dir (the submit's --output-dir), a run folder or an evaluation directory")
    return chosen


STATUS_COLUMNS = ["run", "iteration", "config_hash", "job_id", "state", "attempts", "elapsed", "reason"]


def status_columns(rows: list[dict], as_json: bool) -> list[str]:
    """The table's columns; as a table, runs that share a label show their run hash (and a note says so)."""
    from hpc_eval.identity import shared_labels
    from hpc_eval.results import run_label

    shared = shared_labels([(row["run"], row["run_dir"]) for row in rows])
    note_shared_labels(shared)
    if as_json:
        return STATUS_COLUMNS
    for row in rows:
        row["run"] = run_label(row["run"], row["run_dir"], shared)
        row["checkpoint"] = "rewritten" if row["checkpoint_changed"] else ""
    flagged = any(row["checkpoint_changed"] for row in rows)
    if flagged:
        note_rewritten()
    return STATUS_COLUMNS[:2] + (["checkpoint"] if flagged else []) + STATUS_COLUMNS[2:]


def note_shared_labels(shared: dict[str, list[str]]) -> None:
    """Say on stderr which training runs carry the same label (their rows show `<label>-<run hash>`)."""
    from hpc_eval.identity import run_hash

    for label, run_dirs in sorted(shared.items()):
        runs = ", ".join(f"{label}-{run_hash(run_dir)} = {run_dir}" if run_dir else f"{label} = an endpoint" for run_dir in run_dirs)
        click.echo(f"note: {len(run_dirs)} training runs share the label {label!r}, shown apart: {runs}", err=True)


def note_rewritten() -> None:
    click.echo("note: checkpoint 'rewritten': the checkpoint was written again in place after it was evaluated;"
               " those scores are of the earlier weights", err=True)


@main.command()
@click.argument("roots", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--watch", "watch_seconds", type=float, default=None, metavar="SECONDS", help="Refresh in place every SECONDS.")
@translate_errors
def status(roots, as_json, watch_seconds):
    """One row per evaluation under OUTPUT_DIR (default ./results), a run folder or an evaluation.

    State comes from summary.json, else squeue, else sacct: one call of each, however many jobs.
    """
    from hpc_eval.status import collect_status

    while True:
        rows = [row.to_dict() for row in collect_status([Path(root) for root in default_roots(roots)])]
        text = render(rows, status_columns(rows, as_json), "json" if as_json else "table")
        if watch_seconds is None:
            click.echo(text)
            return
        click.clear()
        click.echo(f"{time.strftime('%H:%M:%S')}  (every {watch_seconds:g}s, Ctrl-C to stop)\n{text}")
        time.sleep(watch_seconds)


@main.command()
@click.argument("target")
@click.option("--output-dir", "roots", multiple=True, type=click.Path(), help="Where to look for job ids (default ./results).")
@click.option("--follow", "-f", is_flag=True, help="Follow the logs (tail -F) until Ctrl-C.")
@translate_errors
def logs(target, roots, follow):
    """Paths of an evaluation's Slurm stdout/stderr and the launcher's per-task logs.

    TARGET is an evaluation directory, a Slurm job id (123 or 123_4), or RUN:ITERATION.
    """
    from hpc_eval.errors import UsageError
    from hpc_eval.status import find_evaluation, log_files

    search = [] if (Path(target) / "request.json").exists() else default_roots(roots)  # a directory needs no search
    paths = find_evaluation(target, [Path(root) for root in search])
    if paths is None:
        raise UsageError(f"no evaluation found for '{target}' under {', '.join(search)}; give an evaluation directory, a job id or RUN:ITERATION (and --output-dir)")
    files = log_files(paths)
    for kind, found in files.items():
        for path in found:
            click.echo(f"{kind}: {path}")
    if follow:
        existing = [str(path) for found in files.values() for path in found]
        os.execvp("tail", ["tail", "-F", *existing])


def split_dirs_and_overrides(arguments: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """`watch DIR... key=value...`: an argument with `=` (or a leading ~) is an override."""
    overrides = [arg for arg in arguments if "=" in arg or arg.startswith("~")]
    return [arg for arg in arguments if arg not in overrides], overrides


@main.command()
@click.argument("arguments", nargs=-1, required=True, metavar="RUN_DIR... [KEY=VALUE...]")
@click.option("-c", "--config", "config_name", default="default", show_default=True, help="A built-in config name or a YAML path.")
@click.option("-t", "--task", "tasks", multiple=True, help="Run only this task; repeatable.")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Root of all evaluation directories.")
@slurm_options
@click.option("--max-submit", type=int, help="Submit at most K checkpoints per pass (newest first).")
@click.option("--max-attempts", type=int, default=3, show_default=True, help="Submissions per evaluation, retries included.")
@click.option("--retry-failed", is_flag=True, help="Also retry evaluations that FAILED or were CANCELLED.")
@click.option("--quiet-seconds", type=float, default=60.0, show_default=True, help="Skip checkpoints with a file changed this recently (a save may be running).")
@click.option("--oldest-first", is_flag=True, help="Submit the oldest new checkpoints first.")
@click.option("--stop-file", type=click.Path(dir_okay=False), help="Exit at once without submitting while this file exists (default OUTPUT_DIR/STOP).")
@click.option("--loop", is_flag=True, help="Run a pass every --interval seconds instead of once (for tmux; cron needs no loop).")
@click.option("--interval", type=float, default=300.0, show_default=True, help="Seconds between passes with --loop.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per pass.")
@translate_errors
def watch(arguments, config_name, tasks, output_dir, partition, account, time_limit, gpus, parallel,
          max_submit, max_attempts, retry_failed, quiet_seconds, oldest_first, stop_file, loop, interval, as_json):
    """One pass: submit each new complete checkpoint of the runs once, as one array.

    \b
    Exit codes: 0 nothing to do or all submitted; 1 a submission failed; 2 usage or config
    error; 75 another pass is still running.
    """
    from hpc_eval import config as config_lib
    from hpc_eval import watch as watch_lib
    from hpc_eval.slurm import slurm_settings
    from hpc_eval.errors import UsageError

    run_dirs, overrides = split_dirs_and_overrides(arguments)
    missing = [path for path in run_dirs if not Path(path).is_dir()]
    if missing or not run_dirs:
        raise UsageError(f"run directory not found: {missing[0] if missing else '(none given)'}; give a training run's checkpoint directory")
    base = config_lib.load_config(config_name, overrides, checkpoint=run_dirs[0], tasks=tasks, output_dir=output_dir)
    settings = slurm_settings(base, slurm_cli_overrides(partition, account, time_limit, gpus, parallel))
    options = watch_lib.WatchOptions(max_submit, max_attempts, retry_failed, quiet_seconds, oldest_first, Path(stop_file) if stop_file else None)
    while True:
        result = watch_lib.watch_pass([Path(path) for path in run_dirs], base.for_checkpoint, settings, options)
        print_pass(result, as_json)
        if not loop or result.stopped:
            break
        time.sleep(interval)
    sys.exit(result.exit_code)


def print_pass(result, as_json: bool) -> None:
    if as_json:
        emit_json({"actions": [vars(action) for action in result.actions], "jobs": result.jobs, "stopped": result.stopped,
                   "already_running": result.already_running, "submit_error": result.submit_error, "exit_code": result.exit_code})
        return
    for action in result.actions:
        click.echo(f"{action.action:<11} {action.run} {action.iteration}  {action.eval_dir}  {action.detail}".rstrip())
    if result.stopped:
        click.echo(f"stopped: {result.stopped}")
    elif result.already_running:
        click.echo("another pass is running for these directories; nothing done")
    else:
        counts = ", ".join(f"{result.count(name)} {name}" for name in ("submitted", "resubmitted", "waiting", "skipped", "failed"))
        click.echo(f"pass: {counts}" + (f"; error: {result.submit_error}" if result.submit_error else ""))


@main.command()
@click.argument("watch_args", nargs=-1, required=True)
@click.option("--every", "minutes", type=int, default=15, show_default=True, help="Minutes between passes.")
@click.option("--partition", default="cpu", show_default=True, help="Partition for the scrontab job (a CPU one).")
@click.option("--time", "time_limit", default="00:10:00", show_default=True, help="Time limit of each scrontab run.")
@click.option("--log", type=click.Path(dir_okay=False), default="hpc-eval-watch.log", show_default=True, help="Where passes append their output.")
def cron(watch_args, minutes, partition, time_limit, log):
    """Print a crontab line and a scrontab file that run `hpc-eval watch WATCH_ARGS...`; installs nothing.

    \b
    Example:
      hpc-eval cron --every 10 -- /runs/a/checkpoints -c my.yaml --output-dir /evals
    """
    from hpc_eval.watch import render_cron

    executable = shutil.which("hpc-eval") or os.path.abspath(sys.argv[0])
    output_dir = next((watch_args[i + 1] for i, arg in enumerate(watch_args[:-1]) if arg == "--output-dir"), "./results")
    texts = render_cron(list(watch_args), executable=executable, cwd=Path.cwd(), path_env=os.environ.get("PATH", ""),
                        minutes=minutes, partition=partition, time_limit=time_limit, log=Path(log).absolute(),
                        stop_file=Path(output_dir).absolute() / "STOP")
    click.echo("# ---- crontab ----\n" + texts["crontab"] + "\n# ---- scrontab ----\n" + texts["scrontab"], nl=False)


RESULTS_FORMATS = ["table", "csv", "json", "markdown"]
MISSING_COLUMNS = ["run", "iteration", "task", "eval_dir"]
MISSING_CELL = "-"  # what a table or markdown shows where a checkpoint has no score


@main.command()
@click.argument("roots", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(RESULTS_FORMATS), default="table", show_default=True)
@click.option("--metric", "metric_patterns", multiple=True,
              help="Only matching columns: an exact key, a substring or a glob (bfcl/*); repeatable.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also save a line chart of the scores against training step (PNG).")
@click.option("--missing", "list_missing", is_flag=True, help="List the checkpoints × launcher tasks without a result instead.")
@click.option("--resubmit", is_flag=True, help="With --missing: submit those evaluations again as one array (finished tasks replay from the cache).")
@translate_errors
def results(roots, fmt, metric_patterns, plot_path, list_missing, resubmit):
    """Scores per training step of every evaluation under OUTPUT_DIR (default ./results) or a run folder.

    \b
    Examples:
      hpc-eval results results/ --metric 'bfcl/*' --format markdown
      hpc-eval results results/my-run --plot scores.png
      hpc-eval results --missing
    """
    from hpc_eval import results as results_lib

    root_paths = [Path(root) for root in default_roots(roots)]
    progress = show_scan_progress if sys.stderr.isatty() else None  # quiet when piped or logged
    if resubmit and not list_missing:
        raise click.UsageError("--resubmit goes with --missing")
    if list_missing:
        rows = [item.to_dict() for item in results_lib.missing(root_paths, progress=progress)]
        click.echo(render(rows, MISSING_COLUMNS, fmt))
        if resubmit:
            resubmit_missing(rows)
        return
    table = results_lib.collect_results(root_paths, progress=progress).select(list(metric_patterns))
    if plot_path:
        results_lib.plot(table, plot_path)
        click.echo(f"plot: {plot_path}", err=True)  # stderr, so that stdout stays one clean table
    note_shared_labels(table.shared_labels())
    if any(row.checkpoint_changed for row in table.rows):
        note_rewritten()
    click.echo(render(displayed_scores(table.records(), fmt), table.columns(), fmt))


def resubmit_missing(rows: list[dict]) -> None:
    """Send the evaluations with missing results again as one array (live ones are left alone)."""
    from hpc_eval.slurm import LIVE_STATES
    from hpc_eval.status import collect_status
    from hpc_eval.store import EvalPaths
    from hpc_eval.submit import resubmit

    eval_dirs = sorted({row["eval_dir"] for row in rows})
    live = {row.eval_dir for row in collect_status([Path(d) for d in eval_dirs]) if row.state in LIVE_STATES}
    for eval_dir in sorted(live):
        click.echo(f"skip (still running): {eval_dir}")
    jobs = resubmit([EvalPaths(Path(d)) for d in eval_dirs if d not in live])
    for job in jobs:
        click.echo(f"resubmitted {len(job.task_ids)} evaluation(s) as job {job.job_id}")
        for task_id, evaluation in zip(job.task_ids, job.evaluations):
            click.echo(f"  {task_id}  {evaluation.paths.root}")
    if not jobs:
        click.echo("nothing resubmitted")


def displayed_scores(records: list[dict], fmt: str) -> list[dict]:
    """Make missing cells visible in a table or markdown; CSV leaves them empty and JSON null."""
    if fmt not in ("table", "markdown"):
        return records
    return [{key: MISSING_CELL if value is None else f"{value:.6g}" if isinstance(value, float) else value
             for key, value in record.items()} for record in records]


def show_scan_progress(done: int, total: int) -> None:
    """`reading evaluations N/M`, rewritten in place on stderr and erased when the scan ends."""
    line = f"\rreading evaluations {done}/{total}" if done < total else "\r\033[K"
    click.echo(line, err=True, nl=False)


@main.command("export")
@click.argument("roots", nargs=-1, type=click.Path())
@click.option("--to", "destinations", multiple=True, required=True, type=click.Choice(["wandb", "mlflow"]),
              help="Where to log the scores; repeatable.")
@click.option("--project", help="W&B project / MLflow experiment (default: export.<dest> in the config, else hpc-eval).")
@click.option("--name", help="The tracking run's name (default: the run's label and its config hash).")
@click.option("--entity", help="W&B entity (team).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: export.mlflow.tracking_uri, else MLFLOW_TRACKING_URI).")
@click.option("--json", "as_json", is_flag=True, help="Print what was logged as JSON.")
@translate_errors
def export_command(roots, destinations, project, name, entity, tracking_uri, as_json):
    """Log finished evaluations' scores to W&B / MLflow at step = training iteration (again: adds nothing).

    \b
    Examples:
      hpc-eval export results/ --to wandb --project my-team
      hpc-eval export results/ --to mlflow --tracking-uri http://mlflow:5000
    """
    from hpc_eval.export import export

    report = export([Path(root) for root in default_roots(roots)], destinations, project=project, name=name,
                    entity=entity, tracking_uri=tracking_uri)
    if as_json:
        emit_json(report.to_dict())
        return
    for dest, logged in report.logged.items():
        runs = sorted({item["tracking_run"] for item in logged})
        click.echo(f"{dest}: {len(logged)} checkpoint(s) logged" + (f" to run {', '.join(runs)}" if runs else " (nothing new)"))


@main.command("cancel")
@click.argument("targets", nargs=-1, required=True)
@click.option("--all", "every", is_flag=True, help="A TARGET that is an output dir means every running evaluation under it.")
@click.option("--output-dir", "roots", multiple=True, type=click.Path(), help="Where to look for job ids and RUN:ITERATION (default ./results).")
@click.option("--json", "as_json", is_flag=True, help="Print what was cancelled as JSON.")
@translate_errors
def cancel_command(targets, every, roots, as_json):
    """Cancel running or pending evaluations in one scancel; status then says "cancelled by user".

    TARGET is an evaluation dir, a run folder, RUN:ITERATION, a job id (an array id: all its
    tasks) or, with --all, an output dir. `watch` does not submit them again unless --retry-failed.
    """
    from hpc_eval.cancel import cancel

    searched = [Path(root) for root in (roots or (["./results"] if Path("./results").is_dir() else []))]
    result = cancel(list(targets), searched, every=every)
    if as_json:
        emit_json(result.to_dict())
        return
    for item in result.cancelled:
        click.echo(f"cancelled {item['job_id']}  {item['eval_dir']}")
    for item in result.left:
        click.echo(f"not running ({item['state']}): {item['eval_dir']}")
    if not result.cancelled:
        click.echo("nothing to cancel")
