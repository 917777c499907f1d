"""The launcher's own files under an evaluation directory: the one place that knows their names.

    <eval_dir>/<YYYYmmdd_HHMMSS>-<invocation id>/     an invocation (one run_eval or resume_eval)
        <task>.<i>/logs/stage.pre-start, stage.running, stage.exit ('<ISO time> <code>')
        <task>.<i>/logs/client_stdout.log, *.log
        <task>.<i>/artifacts/results.yml, .nemo_evaluator_interrupted
        <task>.<i>/hpc_eval_metrics.json                   ours: read_metrics of results.yml, cached

The launcher is pinned below 0.3; when it moves one of these files, only this module changes.
Used by the payload and the executor (in the job) and by status and results (on the login node).
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

INVOCATION_GLOB = "????????_??????-*"  # the launcher's <YYYYmmdd_HHMMSS>-<invocation id> folders
STAGE_FILES = ("stage.pre-start", "stage.running", "stage.exit")  # in the order a task's script writes them
METRICS_CACHE = "hpc_eval_metrics.json"


def new_invocation_dir(output_dir: Path | str, timestamp: str, invocation_id: str) -> Path:
    """Where an invocation started at `timestamp` (YYYYmmdd_HHMMSS) keeps its task dirs."""
    return Path(output_dir).absolute() / f"{timestamp}-{invocation_id}"


def find_invocation_dir(output_dir: Path | str, invocation_id: str) -> Path | None:
    found = sorted(Path(output_dir).glob(f"*-{invocation_id}"))
    return found[0] if found else None


def task_logs(eval_dir: Path) -> list[Path]:
    """Every launcher task's log files, over all invocations."""
    return sorted(eval_dir.glob(f"{INVOCATION_GLOB}/*/logs/*.log"))


def stage_file(task_dir: Path, stage: str) -> Path:
    return task_dir / "logs" / stage


def clear_stages(task_dir: Path) -> None:
    """Forget a task's stages, so that a resumed script starts it afresh."""
    for stage in STAGE_FILES:
        stage_file(task_dir, stage).unlink(missing_ok=True)


def is_running(task_dir: Path) -> bool:
    return stage_file(task_dir, "stage.running").exists()


def was_interrupted(task_dir: Path) -> bool:
    """nemo-evaluator marks a run it stopped on a signal."""
    return (task_dir / "artifacts" / ".nemo_evaluator_interrupted").exists()


def launcher_tree_outcomes(eval_dir: Path) -> dict[str, dict[str, Any]]:
    """Each launcher task's outcome, read from its stage.exit and results.yml like the payload does.

    With several invocations (a forced re-run), a task's newest success wins and a later failure
    does not hide an earlier success.
    """
    outcomes: dict[str, dict[str, Any]] = {}
    for invocation in sorted(subdirs(eval_dir, INVOCATION_GLOB)):
        for task_dir in sorted(subdirs(invocation)):
            outcome = task_outcome(task_dir)
            if outcome["status"] == "success" or task_dir.name not in outcomes:
                outcomes[task_dir.name] = outcome
    return outcomes


def subdirs(directory: Path, pattern: str = "*") -> list[Path]:
    """The directories in `directory` whose names match `pattern`: one listing, no stat (`results` reads thousands)."""
    try:
        with os.scandir(directory) as entries:
            return [
                Path(entry.path) for entry in entries if fnmatch.fnmatchcase(entry.name, pattern) and entry.is_dir()
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


def task_outcome(task_dir: Path) -> dict[str, Any]:
    exit_code = read_stage_exit(task_dir)
    outcome: dict[str, Any] = {"dir": str(task_dir), "exit_code": exit_code, "metrics": {}}
    metrics = ended_task_metrics(task_dir) if exit_code == 0 else None
    if metrics is not None:
        outcome.update(status="success", metrics=metrics)
    elif exit_code is None:
        outcome.update(status="killed", reason="ended without stage.exit (killed or interrupted)")
    else:
        detail = "no artifacts/results.yml" if exit_code == 0 else f"exit code {exit_code}"
        client_log = task_dir / "logs" / "client_stdout.log"
        reason = server_failure(task_dir) or f"{detail}; see {client_log}: {log_tail(client_log)}"
        outcome.update(status="failed", reason=reason)
    return outcome


# What the launcher's local executor prints (to logs/stdout.log) when its server fails
LOCAL_SERVER_FAILURES = ("Server process", "Health check timeout")


def server_failure(task_dir: Path) -> str | None:
    """Why the task's model server failed, quoting its log; None when it did not.

    Our driver script writes logs/server.failed; the local executor's says so in stdout.log."""
    logs = task_dir / "logs"
    try:
        said = (logs / "server.failed").read_text().strip()
    except OSError:
        said = log_tail(logs / "stdout.log", lines=1)
        if not said.startswith(LOCAL_SERVER_FAILURES):
            return None
        said = f"model server: {said}"
    return f"{said}; see {logs / 'server_stdout.log'}: {log_tail(logs / 'server_stdout.log')}"


def read_stage_exit(task_dir: Path) -> int | None:
    """The task's exit code from logs/stage.exit ('<ISO time> <code>'), None when absent."""
    try:
        return int((task_dir / "logs" / "stage.exit").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def log_tail(log: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log, on one line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"(no {log.name})"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else f"({log.name} is empty)"


def ended_task_metrics(task_dir: Path) -> dict[str, float] | None:
    """`read_metrics` of an ended task's results.yml (None without one), cached beside it.

    `results` reads every unfinished evaluation's tree on every call, and parsing YAML costs
    milliseconds a file: the metrics are kept in the task dir, keyed by results.yml's size and
    mtime (a resumed task rewrites it). A cache that cannot be read is rebuilt; one that cannot
    be written (someone else's output dir) is skipped.
    """
    results = task_dir / "artifacts" / "results.yml"
    try:
        stat = os.stat(results)
    except FileNotFoundError:
        return None
    key = f"{stat.st_size}-{stat.st_mtime_ns}"
    cache = task_dir / METRICS_CACHE
    try:
        cached = json.loads(cache.read_bytes())
        if cached["results_yml"] == key:
            return cached["metrics"]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    metrics = read_metrics(results)
    temporary = cache.with_name(f".{METRICS_CACHE}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps({"results_yml": key, "metrics": metrics}))
        os.replace(temporary, cache)
    except OSError:
        temporary.unlink(missing_ok=True)
    return metrics


def read_metrics(results_yml: Path) -> dict[str, float]:
    """`{task/metric[/score]: value}` from results.yml's `results.tasks` and `results.groups`."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ten times the pure-Python loader
    results = (yaml.load(results_yml.read_text(), Loader=loader) or {}).get("results") or {}
    metrics: dict[str, float] = {}
    for kind in ("groups", "tasks"):  # tasks win where both name the same metric
        for task, body in (results.get(kind) or {}).items():
            for metric, scores in ((body or {}).get("metrics") or {}).items():
                for score, value in ((scores or {}).get("scores") or {}).items():
                    name = f"{task}/{metric}" if score == metric else f"{task}/{metric}/{score}"
                    metrics[name] = (value or {}).get("value")
    return metrics
