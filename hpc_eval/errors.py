"""One exception type per failure a user can act on, each with its exit code.

The CLI turns any `HpcEvalError` into one line `Error: <message>` and exits with `exit_code`;
library code raises these and never prints or exits.
"""


class HpcEvalError(Exception):
    """Base class: a failure explained in one line."""

    exit_code = 1


class ConfigError(HpcEvalError):
    """The config file, an override or a resolved value is wrong."""

    exit_code = 2


class CheckpointError(HpcEvalError):
    """A checkpoint path is not a usable Megatron Bridge iter_* directory."""

    exit_code = 2


class SlurmUnavailable(HpcEvalError):
    """Slurm commands are missing: nothing can be submitted from here."""

    exit_code = 2


class SubmitError(HpcEvalError):
    """sbatch (through submitit) refused or failed the submission."""

    exit_code = 1


class EvaluationFailed(HpcEvalError):
    """Inside the job: the evaluation ended badly (reason in summary.json)."""

    exit_code = 1


class UsageError(HpcEvalError):
    """The command line is inconsistent (a missing or conflicting option)."""

    exit_code = 2
