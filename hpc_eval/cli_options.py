"""What the command modules share: the option groups, the overrides help, and errors shown as one line."""

from __future__ import annotations

import functools

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
