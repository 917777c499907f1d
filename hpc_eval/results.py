"""Scores per training step: every evaluation's results.yml joined into one table.

An evaluation's scores come from its summary.json once the payload wrote a final one, else (the
job is still running, or died before writing it) from the launcher's own tree, where a task's
results.yml counts only when its logs/stage.exit says 0. Rows are (checkpoint, config) pairs ordered by
run and training step; columns are metric keys as `launcher_tree.read_metrics` names them.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_eval import identity
from hpc_eval.errors import UsageError
from hpc_eval.launcher_tree import launcher_tree_outcomes
from hpc_eval.status import FINAL_SUMMARY_STATES, evaluated_run_dir
from hpc_eval.store import EvalPaths, iter_evaluations

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Progress = Callable[[int, int], None]  # called with (evaluations read, evaluations in all)
Metrics = dict[str, Any]  # metric key -> value (a float, or None when the harness wrote none)


@dataclass
class EvaluationResults:
    """One evaluation directory: its checkpoint and the metrics of each launcher task that succeeded."""

    paths: EvalPaths
    run: str
    iteration: int | None
    created_at: str
    config_hash: str
    task_filters: list[str] | None
    task_metrics: dict[str, Metrics]  # launcher task dir name (bfcl.bfclv3_ast_prompting.0) -> metrics
    run_dir: str | None = None  # the run's real directory (see status.evaluated_run_dir)
    checkpoint_stat: str | None = None  # the checkpoint's fingerprint stat when evaluated (None: not recorded)
    checkpoint_changed: bool = False  # rewritten in place since


@dataclass
class CheckpointScores:
    """One row of the table: a checkpoint evaluated with one config, and its value for each metric key."""

    run: str
    iteration: int | None
    config_hash: str
    scores: Metrics
    run_dir: str | None = None
    checkpoint_changed: bool = False  # the checkpoint was rewritten after these scores were made


@dataclass
class ResultsTable:
    rows: list[CheckpointScores]  # ordered by run, then training step
    metrics: list[str]  # the columns, sorted

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per row: run, iteration, config_hash, [checkpoint,] then every metric (None: missing).

        `run` is the label, or `<label>-<run hash>` where two training runs share the label;
        `checkpoint` ("rewritten" or "") is there only when some row's checkpoint was rewritten since.
        """
        shared = self.shared_labels()
        flagged = any(row.checkpoint_changed for row in self.rows)
        return [
            {
                "run": run_label(row.run, row.run_dir, shared),
                "iteration": row.iteration,
                "config_hash": row.config_hash,
                **({"checkpoint": "rewritten" if row.checkpoint_changed else ""} if flagged else {}),
                **{m: row.scores.get(m) for m in self.metrics},
            }
            for row in self.rows
        ]

    def columns(self) -> list[str]:
        flagged = any(row.checkpoint_changed for row in self.rows)
        return ["run", "iteration", "config_hash", *(["checkpoint"] if flagged else []), *self.metrics]

    def shared_labels(self) -> dict[str, list[str]]:
        return identity.shared_labels([(row.run, row.run_dir) for row in self.rows])

    def select(self, patterns: list[str]) -> ResultsTable:
        """Only the metrics matching a pattern: an exact key, a substring, or a glob such as `bfcl/*`.

        Raises:
            UsageError: a pattern matches no metric (a typo would otherwise print an empty table).
        """
        if not patterns:
            return self
        unmatched = [pattern for pattern in patterns if not any(metric_matches(m, pattern) for m in self.metrics)]
        if unmatched:
            available = ", ".join(self.metrics) or "none"
            wanted = ", ".join(map(repr, unmatched))
            raise UsageError(f"metric {wanted} matches no column; available metrics: {available}")
        chosen = [m for m in self.metrics if any(metric_matches(m, pattern) for pattern in patterns)]
        return ResultsTable(self.rows, chosen)


def run_label(run: str, run_dir: str | None, shared: dict[str, list[str]]) -> str:
    """A row's run: its label, with the run's hash beside it where another run has the same label."""
    return f"{run}-{identity.run_hash(run_dir)}" if run in shared and run_dir else run


@dataclass
class MissingResult:
    """A launcher task of an evaluation that has no successful result."""

    run: str
    iteration: int | None
    task: str
    eval_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_matches(metric: str, pattern: str) -> bool:
    return pattern in metric or fnmatch.fnmatchcase(metric, pattern)


def collect_results(roots: Iterable[Path], progress: Progress | None = None) -> ResultsTable:
    """The scores of every evaluation under the given output dirs (or run dirs, or evaluation dirs)."""
    return build_table(read_evaluations(roots, progress))


def missing(roots: Iterable[Path], progress: Progress | None = None) -> list[MissingResult]:
    """Each checkpoint × launcher task that has no successful result, ordered by run and step.

    The tasks expected are those of the evaluation's launcher_config.yaml, named like the
    launcher's task dirs (name.INDEX).
    """
    found = [
        MissingResult(evaluation.run, evaluation.iteration, task, str(evaluation.paths.root))
        for evaluation in read_evaluations(roots, progress)
        for task in expected_tasks(evaluation)
        if task not in evaluation.task_metrics
    ]
    return sorted(found, key=lambda item: (*step_order(item.run, item.iteration), item.task, item.eval_dir))


def read_evaluations(roots: Iterable[Path], progress: Progress | None) -> list[EvaluationResults]:
    evaluations = [paths for root in roots for paths in iter_evaluations(Path(root))]
    read = []
    for done, paths in enumerate(evaluations, start=1):
        read.append(read_evaluation(paths))
        if progress:
            progress(done, len(evaluations))
    return read


def read_evaluation(paths: EvalPaths) -> EvaluationResults:
    request = paths.read_request()
    summary = paths.read_summary() or {}
    # A requeued job's summary is stale: the next attempt is still adding results to the tree.
    final = summary.get("state") in FINAL_SUMMARY_STATES and "tasks" in summary
    outcomes = summary["tasks"] if final else launcher_tree_outcomes(paths.root)
    successes = {
        task: outcome.get("metrics") or {} for task, outcome in outcomes.items() if outcome.get("status") == "success"
    }
    return EvaluationResults(
        paths=paths,
        run=request.get("run") or paths.root.parent.parent.name,
        iteration=request.get("iteration"),
        created_at=request.get("created_at") or "",
        config_hash=request.get("config_hash") or paths.root.name.split("-")[0],
        task_filters=request.get("task_filters"),
        task_metrics=successes,
        run_dir=evaluated_run_dir(request),
        checkpoint_stat=(request.get("fingerprint") or {}).get("stat"),
        checkpoint_changed=identity.changed_since(request.get("fingerprint"), request.get("checkpoint")),
    )


def build_table(evaluations: list[EvaluationResults]) -> ResultsTable:
    """One row per checkpoint and config; evaluations of both merge, the newest winning a clash.

    A checkpoint is its run's real directory, its step and its content: runs that share a label,
    and the weights before and after a rewrite in place, get rows of their own; so does each config
    (scores of two configs are not comparable, and the newer would hide the other).
    """
    shared = metrics_from_several_tasks(evaluations)
    rows: dict[tuple, CheckpointScores] = {}
    for evaluation in sorted(evaluations, key=lambda item: item.created_at):
        key = (
            evaluation.run,
            evaluation.run_dir,
            evaluation.iteration,
            evaluation.checkpoint_stat,
            evaluation.config_hash,
        )
        row = rows.setdefault(
            key,
            CheckpointScores(
                evaluation.run,
                evaluation.iteration,
                evaluation.config_hash,
                {},
                evaluation.run_dir,
                evaluation.checkpoint_changed,
            ),
        )
        for task, metrics in sorted(evaluation.task_metrics.items()):
            for key, value in metrics.items():
                row.scores[f"{task}/{key}" if key in shared else key] = value
    ordered = sorted(
        rows.values(),
        key=lambda row: (
            row.run,
            row.run_dir or "",
            step_order(row.run, row.iteration)[1],
            not row.checkpoint_changed,
            row.config_hash,
        ),
    )
    return ResultsTable(ordered, sorted({key for row in ordered for key in row.scores}))


def metrics_from_several_tasks(evaluations: list[EvaluationResults]) -> set[str]:
    """Metric keys two launcher tasks of one evaluation both report (two bfcl subsets, say).

    These get the launcher task name as a prefix in every row, so the columns stay the same
    across checkpoints even where one of the tasks failed.
    """
    shared: set[str] = set()
    for evaluation in evaluations:
        counts = Counter(key for metrics in evaluation.task_metrics.values() for key in metrics)
        shared.update(key for key, count in counts.items() if count > 1)
    return shared


def step_order(run: str, iteration: int | None) -> tuple[str, int]:
    return run, -1 if iteration is None else iteration  # an endpoint (no step) comes first


def expected_tasks(evaluation: EvaluationResults) -> list[str]:
    """The launcher's task dir names for this evaluation: its config's tasks as name.INDEX.

    Like `run_eval`, a task filter keeps the tasks named `name` or `name.INDEX` and then indexes
    the kept tasks afresh.
    """
    import yaml

    try:
        config = (
            yaml.load(
                evaluation.paths.launcher_config.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            )
            or {}
        )
    except FileNotFoundError:
        return []
    names = [task.get("name") for task in (config.get("evaluation") or {}).get("tasks") or []]
    if evaluation.task_filters:
        names = [
            name
            for index, name in enumerate(names)
            if name in evaluation.task_filters or f"{name}.{index}" in evaluation.task_filters
        ]
    return [f"{name}.{index}" for index, name in enumerate(names)]


def plot(table: ResultsTable, path: Path | str) -> Figure:
    """Save a PNG line chart of each metric against training step (one line per metric, run and config).

    Checkpoints without a step (hosted endpoints), scores of checkpoints rewritten since and metrics a
    run never reported are left out.

    Raises:
        UsageError: no checkpoint has both a training step and a score.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # headless, and no pyplot global state
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'hpc-eval[plot]' (or pip install matplotlib)") from None

    shared = table.shared_labels()
    stepped = [row for row in table.rows if row.iteration is not None and not row.checkpoint_changed]
    several_configs = len({row.config_hash for row in stepped}) > 1
    row_run = {
        id(row): run_label(row.run, row.run_dir, shared) + (f" [{row.config_hash}]" if several_configs else "")
        for row in stepped
    }
    runs = list(dict.fromkeys(row_run[id(row)] for row in stepped))
    figure = Figure(figsize=(10, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for run in runs:
        run_rows = [row for row in stepped if row_run[id(row)] == run]
        for metric in table.metrics:
            values = [row.scores.get(metric) for row in run_rows]
            if all(value is None for value in values):
                continue
            label = metric if len(runs) == 1 else f"{run}: {metric}"
            axes.plot(
                [row.iteration for row in run_rows],
                [math.nan if v is None else v for v in values],
                marker="o",
                label=label,
            )
    if not axes.lines:
        raise UsageError("nothing to plot: no checkpoint has both a training step and a score")
    axes.set_xlabel("training step")
    axes.set_ylabel("score")
    axes.set_title(", ".join(runs))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return figure
