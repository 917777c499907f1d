"""Everything hpc-eval asks of Slurm: the typed `slurm:` section, the submitit executor, and every
sbatch / scontrol / scancel call and parse (job_states.py asks squeue and sacct).

`SlurmSettings` is built and checked when a config loads, so a bad value stops the command before
anything is claimed (feasibility.py then asks `sinfo` whether a node can hold the request). The queries never raise: they return None when Slurm cannot
answer, and `status` then says UNKNOWN (never LOST).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_eval.errors import ConfigError, SlurmUnavailable, SubmitError

LIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
}
NO_TIME_LIMIT = 0  # Slurm's `--time=0`: "no time limit be imposed"
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
# Names Slurm lists with commas (partitions) or combines (constraint features): no blanks, quotes or `;`.
NAME = re.compile(r"[\w.,:+-]+")
FEATURES = re.compile(r"[\w.,:&|*!()\[\]-]+")
MEMORY = re.compile(r"\d+[KMGTkmgt]?")
GPU_TYPE_COUNT = re.compile(r"[\w.-]+:\d+")
EXCLUSIVE = ("user", "mcs", "topo")


@dataclass(frozen=True)
class SlurmSettings:
    """The `slurm:` section, checked: what each sbatch asks for.

    Every key can be overridden (slurm.time=...) without a `+`; any other sbatch flag goes in
    additional_parameters. The defaults ask for one single-node GPU evaluation.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | int = "02:00:00"  # as written; `time_min` is what sbatch gets
    nodes: int = 1
    gpus_per_node: int | str = 1  # a count, or TYPE:COUNT (a100:2)
    cpus_per_task: int = 8
    mem: str | int | None = None
    constraint: str | None = None
    exclusive: bool | str | None = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    srun_args: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    signal_delay_s: int = 120
    max_requeues: int = 3
    array_parallelism: int = 32
    max_array_size: int | None = None  # None: the cluster's MaxArraySize (scontrol show config)

    @classmethod
    def from_dict(cls, values: Any, source: Path | str) -> SlurmSettings:
        """The defaults with `values` on top, each checked.

        Raises:
            ConfigError: an unknown key, or a value Slurm would not take (naming the key and what it takes).
        """
        values = dict(values or {})
        check_slurm_keys(values, str(source))
        checked = {key: check_value(key, value, source) for key, value in {**SLURM_DEFAULTS, **values}.items()}
        return cls(**checked)

    def with_overrides(self, overrides: dict[str, Any] | None, source: Path | str) -> SlurmSettings:
        """These settings with the command line's shorthands (None: not given) on top."""
        given = {key: value for key, value in (overrides or {}).items() if value is not None}
        return SlurmSettings.from_dict({**self.as_dict(), **given}, source) if given else self

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as request.json records it (so that a resubmission asks for the same)."""
        return dataclasses.asdict(self)

    @property
    def time_min(self) -> int:
        """The time limit in whole minutes; NO_TIME_LIMIT (0) for none."""
        return time_minutes(self.time, "slurm")

    @property
    def signal_delay(self) -> int:
        # USR2 must come before the time limit, or a requeued job dies of it before it starts
        return self.signal_delay_s if self.time_min == NO_TIME_LIMIT else min(self.signal_delay_s, self.time_min * 30)


SLURM_DEFAULTS: dict[str, Any] = SlurmSettings().as_dict()


def check_slurm_keys(keys: Iterable[str], where: str) -> None:
    """Raise ConfigError for the first key of the `slurm:` section that SlurmSettings does not have."""
    unknown = sorted(set(keys) - set(SLURM_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key slurm.{unknown[0]}; allowed slurm keys are {sorted(SLURM_DEFAULTS)} (any other sbatch flag goes in slurm.additional_parameters)"
        )


def check_value(key: str, value: Any, source: Path | str) -> Any:
    """`value` for slurm.`key` as SlurmSettings keeps it, or ConfigError naming the key and what it takes."""

    def refuse(takes: str) -> ConfigError:
        return ConfigError(f"{source}: slurm.{key}: {value!r} is not valid; it takes {takes}")

    if key == "time":
        time_minutes(value, source)
        return value
    if key in ("nodes", "cpus_per_task", "array_parallelism", "max_array_size"):
        if value is None and key == "max_array_size":
            return None
        return whole_number(value, 1, refuse("a whole number >= 1"))
    if key in ("signal_delay_s", "max_requeues"):
        return whole_number(value, 0, refuse("a whole number >= 0"))
    if key == "gpus_per_node":
        if isinstance(value, str) and GPU_TYPE_COUNT.fullmatch(value):
            return value
        return whole_number(value, 0, refuse("a GPU count >= 0, or TYPE:COUNT such as a100:2"))
    if key in ("partition", "account", "qos", "constraint", "mem"):
        pattern, takes = {
            "constraint": (FEATURES, "Slurm features such as a100&ib (letters, digits and & | * ! [ ] ( ) , . : - _)"),
            "mem": (MEMORY, "a size such as 64G, or a number of megabytes (units K, M, G, T)"),
        }.get(key, (NAME, "a name (letters, digits, and , . : + - _; no blanks or quotes)"))
        if value in (None, "") or (
            key == "mem" and isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            return value
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise refuse(takes)
        return value
    if key == "exclusive":
        if value is None or isinstance(value, bool) or value in EXCLUSIVE:
            return value
        raise refuse(f"true, false or one of {list(EXCLUSIVE)}")
    if key == "additional_parameters":
        if not isinstance(value, dict) or not all(
            isinstance(flag, str) and NAME.fullmatch(flag) and one_line_scalar(item) for flag, item in value.items()
        ):
            raise refuse("a mapping of sbatch flag names to one-line values, e.g. {mail-type: END}")
        return dict(value)
    # srun_args, setup
    if not isinstance(value, list) or not all(isinstance(item, str) and "\n" not in item for item in value):
        raise refuse("a list of one-line strings")
    return list(value)


def whole_number(value: Any, minimum: int, error: ConfigError) -> int:
    """An int (or a string of digits) of at least `minimum`; `true` is not a number here."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error
    return value


def one_line_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and "\n" not in str(value)


def time_minutes(value: Any, source: Path | str) -> int:
    """Slurm's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes.

    0 (and UNLIMITED or INFINITE) is Slurm's "no time limit": NO_TIME_LIMIT. Seconds round up.
    """
    if str(value).strip().upper() in ("UNLIMITED", "INFINITE"):
        return NO_TIME_LIMIT
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", str(value).strip())
    if not match or isinstance(value, bool):
        raise ConfigError(
            f"{source}: slurm.time {value!r} is not a Slurm time; write MINUTES, HH:MM:SS or D-HH:MM:SS (0 for no limit)"
        )
    days = int(match.group(1) or 0)
    parts = [int(part) for part in match.group(2).split(":")]
    if days:
        hours, minutes, seconds = parts + [0] * (3 - len(parts))
    else:
        hours, minutes, seconds = (
            ([0] * (3 - len(parts)) + parts) if len(parts) == 3 else (0, parts[0], parts[1] if len(parts) == 2 else 0)
        )
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def slurm_settings(config: Any, cli_overrides: dict[str, Any] | None = None) -> SlurmSettings:
    """A loaded config's `slurm:` section with the command line's shorthands on top."""
    return config.slurm.with_overrides(cli_overrides, config.source)


def settings_from(slurm: dict[str, Any], cli_overrides: dict[str, Any] | None, source: Path) -> SlurmSettings:
    """Settings from a recorded `slurm` dict (request.json), with the command line's shorthands on top."""
    return SlurmSettings.from_dict(slurm, source).with_overrides(cli_overrides, source)


def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise SlurmUnavailable(
            "sbatch is not on PATH: run hpc-eval on a Slurm login node (for a local test cluster: bash scripts/start-slurm.sh)"
        )


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices run 0..MaxArraySize-1)."""
    try:
        output = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", output, re.M)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def cancel(job_ids: list[str]) -> None:
    """scancel our own jobs (one that could not be recorded must not run); never raises."""
    run_quietly(["scancel", *base_job_ids(job_ids)])


def make_executor(folder: Path, settings: SlurmSettings, job_name: str):
    """A submitit SlurmExecutor (never the local fallback of AutoExecutor)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    parameters = {
        "job_name": job_name,
        "time": settings.time_min,
        "nodes": settings.nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": settings.cpus_per_task,
        "signal_delay_s": settings.signal_delay,
        "array_parallelism": settings.array_parallelism,
        "additional_parameters": dict(settings.additional_parameters or {}),
        "srun_args": list(settings.srun_args or []),
        "setup": list(settings.setup or []),
    }
    for key in ("partition", "account", "qos", "mem", "constraint", "exclusive"):
        if getattr(settings, key) not in (None, False, ""):
            parameters[key] = getattr(settings, key)
    if settings.gpus_per_node:
        parameters["gpus_per_node"] = settings.gpus_per_node
    executor.update_parameters(**parameters)
    return executor


@contextlib.contextmanager
def outer_job_hidden() -> Iterator[None]:
    """Hide an enclosing job's SLURM_* variables (cron from scrontab, submit from a job); keep SLURM_CONF."""
    prefixes = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_")
    hidden = {
        name: os.environ.pop(name) for name in list(os.environ) if name.startswith(prefixes) and name != "SLURM_CONF"
    }
    try:
        yield
    finally:
        os.environ.update(hidden)


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


def sbatch_preview(settings: SlurmSettings, folder: Path, job_name: str, count: int) -> str:
    """The sbatch script submitit would write (one job, or an array of `count`), for --dry-run.

    The one use of submitit's private API (pyproject pins submitit's minor version;
    tests/test_slurm_unit.py fails when the signature changes).
    """
    from submitit.slurm.slurm import _make_sbatch_string  # submitit renders its script here

    executor = make_executor(folder, settings, job_name)
    parameters = dict(executor.parameters)
    if count > 1:
        parameters["map_count"] = count
    return _make_sbatch_string(command=executor._submitit_command_str, folder=folder, **parameters)


def base_job_ids(job_ids: Iterable[str]) -> list[str]:
    """Slurm accepts an array's id for all its tasks: `123_4` is asked for as `123`."""
    return sorted({job.split("_")[0] for job in job_ids})


def run_quietly(command: list[str]) -> str | None:
    """A Slurm command's stdout; None when Slurm cannot answer (status then says UNKNOWN).

    squeue fails with "Invalid job id" when none of the ids it is asked about is live: an answer.
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        return None
    return done.stdout


def scancel(job_ids: list[str]) -> None:
    """Cancel jobs (array tasks as A_a) in one scancel call.

    Raises:
        SlurmUnavailable: scancel is not on PATH.
        SubmitError: scancel refused (its message).
    """
    if not job_ids:
        return
    if not shutil.which("scancel"):
        raise SlurmUnavailable("scancel not found on PATH: run this on a Slurm login node")
    done = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise SubmitError(
            f"scancel {' '.join(job_ids)} failed: {' '.join(done.stderr.split()) or f'exit code {done.returncode}'}"
        )
