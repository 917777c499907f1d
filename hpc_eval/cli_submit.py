"""The commands that submit: `submit`, `watch`, `cron`, and `config show` that resolves what they would submit."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

from hpc_eval import api, output
from hpc_eval.cli_options import (
    OVERRIDES_HELP,
    config_options,
    selection_options,
    slurm_cli_overrides,
    slurm_options,
    translate_errors,
)
from hpc_eval.output import format_option


@click.command(epilog=OVERRIDES_HELP)
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


@click.group("config")
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


@click.command(epilog=OVERRIDES_HELP)
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


@click.command()
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
