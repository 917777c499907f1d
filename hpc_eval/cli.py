"""The `hpc-eval` command line: the group; its commands are in cli_submit.py and cli_read.py, their options in cli_options.py.

Each command parses options, calls one function of the API (api.py) and formats its result (output.py).

Heavy modules (the launcher, submitit) are imported inside the API's functions, so that
`hpc-eval --help` stays fast.
"""

from __future__ import annotations

import click

from hpc_eval.cli_read import cancel_command, export_command, logs, results, status, validate_command
from hpc_eval.cli_submit import config_group, cron, submit, watch


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="hpc-eval")
def main(debug: bool) -> None:
    """Evaluate LLM checkpoints on a Slurm cluster with NeMo Evaluator Launcher."""


# Each command lives in the module of its concern; they are added here so that none imports this group.
for command in (
    submit,
    config_group,
    watch,
    cron,
    validate_command,
    status,
    logs,
    results,
    export_command,
    cancel_command,
):
    main.add_command(command)
