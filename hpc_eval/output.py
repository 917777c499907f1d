"""How the CLI shows what the API returns: one renderer and one `--format` option for every listing.

`--format table` (the default) is for people and keeps each command's own layout; `csv`, `json` and
`markdown` are the same rows for programs and reports. `--json` is kept as an alias of `--format json`.
Notes for people (shared labels, rewritten checkpoints, progress) go to stderr, so stdout stays clean.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import click

FORMATS = ["table", "csv", "json", "markdown"]
MISSING_CELL = "-"  # what a table or markdown shows where a checkpoint has no score
STATUS_COLUMNS = ["run", "iteration", "config_hash", "job_id", "state", "attempts", "elapsed", "reason"]
MISSING_COLUMNS = ["run", "iteration", "task", "eval_dir"]
SUBMIT_COLUMNS = ["action", "run", "iteration", "checkpoint", "eval_dir", "job_id", "reason"]
VALIDATE_COLUMNS = ["path", "ok", "iteration", "format", "reason", "warnings"]
WATCH_COLUMNS = ["action", "run", "iteration", "eval_dir", "detail"]
LOGS_COLUMNS = ["kind", "path"]


def format_option(command):
    """`--format table|csv|json|markdown` and its alias `--json`; the command receives `fmt`."""

    @functools.wraps(command)
    def wrapper(*args, fmt: str, as_json: bool, **kwargs):
        return command(*args, fmt="json" if as_json else fmt, **kwargs)

    wrapper = click.option("--json", "as_json", is_flag=True, help="Same as --format json.")(wrapper)
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
    )(wrapper)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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


# ---- submit


def show_submission(submission, fmt: str) -> None:
    result = submission.result
    if fmt == "json":
        emit_json(submission.to_dict())
    elif fmt == "table":
        show_submission_text(submission)
        show_notes(submission)
    else:
        job_of = {id(ev): task_id for job in result.jobs for task_id, ev in zip(job.task_ids, job.evaluations)}
        rows = [{"action": "invalid", "checkpoint": path, "reason": reason} for path, reason in result.invalid]
        rows += [
            {
                "action": ev.action,
                "run": ev.run,
                "iteration": ev.iteration,
                "checkpoint": ev.checkpoint,
                "eval_dir": ev.paths.root,
                "job_id": job_of.get(id(ev)),
                "reason": ev.reason,
            }
            for ev in result.evaluations
        ]
        click.echo(render(rows, SUBMIT_COLUMNS, fmt))


def show_submission_text(submission) -> None:
    result = submission.result
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
        click.echo(
            f"dry run: would submit {count} evaluation(s)"
            + (f" as one array of {count}" if count > 1 else "")
            + "; nothing submitted"
        )
        if result.sbatch_script and count:
            click.echo("sbatch script:\n" + result.sbatch_script)
        if submission.job_commands:
            first = result.to_submit[0]
            click.echo(
                f"commands in the job (execution.type hpc_eval; {first.checkpoint.name if first.checkpoint else 'the endpoint'}):\n{submission.job_commands}"
            )
        return
    if not result.jobs:
        click.echo("nothing to submit")
        return
    if len(result.jobs) > 1:
        click.echo(
            f"split into {len(result.jobs)} arrays: {len(result.to_submit)} evaluations exceed the array size limit"
        )
    for job in result.jobs:
        kind = f"array job {job.job_id} ({len(job.task_ids)} tasks)" if len(job.task_ids) > 1 else f"job {job.job_id}"
        click.echo(f"submitted {kind}")
        for task_id, evaluation in zip(job.task_ids, job.evaluations):
            click.echo(f"  {task_id}  {evaluation.paths.root}")
            click.echo(f"    stdout: {job.log_paths(task_id)['stdout']}")
    for name, command in submission.follow_up().items():
        click.echo(f"{name}: {command}")


def show_notes(submission) -> None:
    for note in submission.notes:  # what was converted from a launcher or Nemotron config, once
        click.echo(note)


# ---- validate


def show_verdicts(verdicts, fmt: str) -> None:
    if fmt == "json":
        emit_json([verdict.to_dict() for verdict in verdicts])
    elif fmt != "table":
        rows = [{**verdict.to_dict(), "warnings": "; ".join(verdict.warnings)} for verdict in verdicts]
        click.echo(render(rows, VALIDATE_COLUMNS, fmt))
    else:
        for verdict in verdicts:
            if verdict.ok:
                click.echo(f"OK  {verdict.path}  iter {verdict.iteration}  {verdict.format}")
            else:
                click.echo(f"INVALID  {verdict.path}: {verdict.reason}")
            for warning in verdict.warnings:
                click.echo(f"  warning: {warning}")


# ---- status


def status_text(rows: list[dict], fmt: str) -> str:
    """The status listing; as a table or markdown, runs that share a label show their run hash."""
    from hpc_eval.identity import shared_labels
    from hpc_eval.results import run_label

    shared = shared_labels([(row["run"], row["run_dir"]) for row in rows])
    note_shared_labels(shared)
    if fmt in ("json", "csv"):
        return render(rows, STATUS_COLUMNS + ["run_dir", "eval_dir"], fmt)
    for row in rows:
        row["run"] = run_label(row["run"], row["run_dir"], shared)
        row["checkpoint"] = "rewritten" if row["checkpoint_changed"] else ""
    flagged = any(row["checkpoint_changed"] for row in rows)
    if flagged:
        note_rewritten()
    return render(rows, STATUS_COLUMNS[:2] + (["checkpoint"] if flagged else []) + STATUS_COLUMNS[2:], fmt)


def note_shared_labels(shared: dict[str, list[str]]) -> None:
    """Say on stderr which training runs carry the same label (their rows show `<label>-<run hash>`)."""
    from hpc_eval.identity import run_hash

    for label, run_dirs in sorted(shared.items()):
        runs = ", ".join(
            f"{label}-{run_hash(run_dir)} = {run_dir}" if run_dir else f"{label} = an endpoint" for run_dir in run_dirs
        )
        click.echo(f"note: {len(run_dirs)} training runs share the label {label!r}, shown apart: {runs}", err=True)


def note_rewritten() -> None:
    click.echo(
        "note: checkpoint 'rewritten': the checkpoint was written again in place after it was evaluated;"
        " those scores are of the earlier weights",
        err=True,
    )


# ---- watch


def show_pass(result, fmt: str, quiet: bool = False) -> None:
    if fmt == "json":
        emit_json(
            {
                "actions": [vars(action) for action in result.actions],
                "jobs": result.jobs,
                "stopped": result.stopped,
                "already_running": result.already_running,
                "submit_error": result.submit_error,
                "exit_code": result.exit_code,
            }
        )
        return
    if fmt != "table":
        click.echo(render([vars(action) for action in result.actions], WATCH_COLUMNS, fmt))
        return
    for action in result.actions:
        if quiet and action.action == "skipped":
            continue
        click.echo(f"{action.action:<11} {action.run} {action.iteration}  {action.eval_dir}  {action.detail}".rstrip())
    if result.stopped:
        click.echo(f"stopped: {result.stopped}")
    elif result.already_running:
        click.echo("another pass is running for these directories; nothing done")
    else:
        counts = ", ".join(
            f"{result.count(name)} {name}" for name in ("submitted", "resubmitted", "waiting", "skipped", "failed")
        )
        click.echo(f"pass: {counts}" + (f"; error: {result.submit_error}" if result.submit_error else ""))


# ---- logs


def show_logs(files: dict[str, list], fmt: str) -> None:
    rows = [{"kind": kind, "path": str(path)} for kind, found in files.items() for path in found]
    if fmt == "table":
        for row in rows:
            click.echo(f"{row['kind']}: {row['path']}")
    else:
        click.echo(render(rows, LOGS_COLUMNS, fmt))


# ---- results


def show_results(table, fmt: str) -> None:
    note_shared_labels(table.shared_labels())
    if any(row.checkpoint_changed for row in table.rows):
        note_rewritten()
    click.echo(render(displayed_scores(table.records(), fmt), table.columns(), fmt))


def displayed_scores(records: list[dict], fmt: str) -> list[dict]:
    """Make missing cells visible in a table or markdown; CSV leaves them empty and JSON null."""
    if fmt not in ("table", "markdown"):
        return records
    return [
        {
            key: MISSING_CELL if value is None else f"{value:.6g}" if isinstance(value, float) else value
            for key, value in record.items()
        }
        for record in records
    ]


def show_resubmission(resubmission) -> None:
    for eval_dir in resubmission.still_running:
        click.echo(f"skip (still running): {eval_dir}")
    for job in resubmission.jobs:
        click.echo(f"resubmitted {len(job.task_ids)} evaluation(s) as job {job.job_id}")
        for task_id, evaluation in zip(job.task_ids, job.evaluations):
            click.echo(f"  {task_id}  {evaluation.paths.root}")
    if not resubmission.jobs:
        click.echo("nothing resubmitted")


def show_scan_progress(done: int, total: int) -> None:
    """`reading evaluations N/M`, rewritten in place on stderr and erased when the scan ends."""
    line = f"\rreading evaluations {done}/{total}" if done < total else "\r\033[K"
    click.echo(line, err=True, nl=False)


# ---- export, cancel


def show_export(report, fmt: str) -> None:
    if fmt == "json":
        emit_json(report.to_dict())
        return
    rows = [{"destination": dest, **item} for dest, logged in report.logged.items() for item in logged]
    if fmt != "table":
        click.echo(
            render(rows, sorted({key for row in rows for key in row}, key=lambda key: key != "destination"), fmt)
        )
        return
    for dest, logged in report.logged.items():
        runs = sorted({item["tracking_run"] for item in logged})
        click.echo(
            f"{dest}: {len(logged)} checkpoint(s) logged" + (f" to run {', '.join(runs)}" if runs else " (nothing new)")
        )


def show_cancel(result, fmt: str) -> None:
    if fmt == "json":
        emit_json(result.to_dict())
        return
    rows = [{"action": "cancelled", **item} for item in result.cancelled] + [
        {"action": "not running", **item} for item in result.left
    ]
    if fmt != "table":
        click.echo(render(rows, ["action", "job_id", "state", "eval_dir"], fmt))
        return
    for item in result.cancelled:
        click.echo(f"cancelled {item['job_id']}  {item['eval_dir']}")
    for item in result.left:
        click.echo(f"not running ({item['state']}): {item['eval_dir']}")
    if not result.cancelled:
        click.echo("nothing to cancel")
