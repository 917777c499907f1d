"""Scores where training teams look: W&B and MLflow runs with one point per checkpoint, at its training step.

One tracking run per (training run, config hash). Each finished (COMPLETED) evaluation adds one
point per metric at step = the checkpoint's iteration; the config hash and the checkpoint paths
are the run's metadata. Checkpoints finish in any order: W&B drops a point whose own step is
behind the run's, so points go against a custom step metric `iteration` instead; MLflow takes
explicit steps.

Exporting again adds nothing: each evaluation records what it sent where in `exported.json`
(written atomically), W&B runs are resumed by a deterministic id, MLflow runs are found by tag
and steps already logged are skipped. Settings come from the options, else from the
evaluation's launcher config (the launcher's own `export.wandb.*` / `export.mlflow.*` keys),
else defaults. `export_finished` is the hook the payload calls at the end of a job when
`execution.auto_export.destinations` names wandb or mlflow.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_eval import identity
from hpc_eval.errors import UsageError
from hpc_eval.results import EvaluationResults, read_evaluation
from hpc_eval.store import EvalPaths, iter_evaluations, now_iso, read_json, write_json

DESTINATIONS = ("wandb", "mlflow")
DEFAULT_PROJECT = "hpc-eval"  # W&B project and MLflow experiment when neither option nor config names one
RUN_KEY_TAG = "hpc_eval.run_key"  # MLflow tag that finds the run of a (training run, config hash) again
STEP_METRIC = "iteration"


@dataclass
class Target:
    """Where one destination's runs go (None: from the evaluation's config, else the default)."""

    project: str | None = None  # W&B project / MLflow experiment
    name: str | None = None  # the tracking run's name
    entity: str | None = None  # W&B only
    tracking_uri: str | None = None  # MLflow only


@dataclass
class Group:
    """The finished evaluations of one training run with one config: one tracking run."""

    run: str
    run_dir: str | None
    config_hash: str
    evaluations: list[EvaluationResults] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Stable across exports, label changes and hosts: the run's real directory and the config hash."""
        return f"{identity.run_hash(self.run_dir) if self.run_dir else self.run}-{self.config_hash[:8]}"

    def default_name(self) -> str:
        return f"{self.run}-{self.config_hash[:8]}"


@dataclass
class ExportReport:
    """What one export call did, per destination."""

    logged: dict[str, list[dict[str, Any]]] = field(
        default_factory=dict
    )  # dest -> [{run, iteration, metrics, tracking_run}]
    skipped: list[dict[str, str]] = field(default_factory=list)  # evaluations not exported, and why

    def to_dict(self) -> dict[str, Any]:
        return {"logged": self.logged, "skipped": self.skipped}


def export(
    roots: Iterable[Path | str],
    to: Iterable[str] = DESTINATIONS,
    *,
    project: str | None = None,
    name: str | None = None,
    entity: str | None = None,
    tracking_uri: str | None = None,
) -> ExportReport:
    """Log the scores of every finished evaluation under `roots` that a destination has not got yet.

    Raises:
        UsageError: an unknown destination, or its library is not installed (names the extra).
    """
    destinations = list(dict.fromkeys(to))
    unknown = [dest for dest in destinations if dest not in DESTINATIONS]
    if unknown or not destinations:
        raise UsageError(
            f"export destination {', '.join(unknown) or '(none)'}: choose from {', '.join(DESTINATIONS)} (--to, repeatable)"
        )
    libraries = {dest: import_library(dest) for dest in destinations}
    report = ExportReport()
    groups = finished_groups([paths for root in roots for paths in iter_evaluations(Path(root))], report)
    option = Target(project, name, entity, tracking_uri)
    for dest in destinations:
        report.logged[dest] = []
        for group in groups:
            target = resolve_target(dest, option, group)
            todo = [ev for ev in group.evaluations if not already_exported(ev.paths, dest, target)]
            if not todo:
                continue
            logger = log_wandb if dest == "wandb" else log_mlflow
            tracking_run = logger(libraries[dest], group, todo, target)
            for evaluation in todo:
                record_export(evaluation.paths, dest, target, tracking_run)
                report.logged[dest].append(
                    {
                        "run": group.run,
                        "iteration": evaluation.iteration,
                        "metrics": len(metrics_of(evaluation)),
                        "tracking_run": tracking_run,
                    }
                )
    return report


def export_finished(eval_dir: Path) -> dict[str, Any] | None:
    """The payload's hook: export this evaluation where its config's auto_export says; never raises.

    Returns None when the config asks for no wandb/mlflow export, else what happened (for summary.json).
    """
    destinations = [dest for dest in auto_export_destinations(EvalPaths(eval_dir)) if dest in DESTINATIONS]
    if not destinations:
        return None
    try:
        report = export([eval_dir], destinations)
    except Exception as error:  # noqa: BLE001 - a tracking server being down must not fail the evaluation
        return {"destinations": destinations, "error": f"{type(error).__name__}: {' '.join(str(error).split())}"}
    return {"destinations": destinations, "logged": {dest: len(items) for dest, items in report.logged.items()}}


def import_library(dest: str) -> Any:
    try:
        if dest == "wandb":
            import wandb

            return wandb
        import mlflow

        return mlflow
    except ImportError:
        raise UsageError(f"--to {dest} needs the {dest} package: pip install 'hpc-eval[{dest}]'") from None


def finished_groups(evaluations: list[EvalPaths], report: ExportReport) -> list[Group]:
    """The COMPLETED evaluations grouped by (training run, config hash), each group by training step."""
    groups: dict[tuple, Group] = {}
    for paths in evaluations:
        summary = paths.read_summary() or {}
        if summary.get("state") != "COMPLETED" or summary.get("dry_run") or "tasks" not in summary:
            report.skipped.append(
                {"eval_dir": str(paths.root), "why": f"not finished ({summary.get('state') or 'no summary.json'})"}
            )
            continue
        evaluation = read_evaluation(paths)
        request = paths.read_request()
        if evaluation.iteration is None:
            report.skipped.append({"eval_dir": str(paths.root), "why": "no training step (a hosted endpoint)"})
            continue
        config_hash = request.get("config_hash") or paths.root.name.split("-")[0]
        group = groups.setdefault(
            (evaluation.run_dir or evaluation.run, config_hash), Group(evaluation.run, evaluation.run_dir, config_hash)
        )
        group.evaluations.append(evaluation)
    for group in groups.values():
        group.evaluations.sort(key=lambda ev: (ev.iteration, ev.created_at))
    return list(groups.values())


def metrics_of(evaluation: EvaluationResults) -> dict[str, float]:
    """One evaluation's numeric scores, named as `hpc-eval results` names its columns."""
    counts = Counter(key for metrics in evaluation.task_metrics.values() for key in metrics)
    flat = {}
    for task, metrics in sorted(evaluation.task_metrics.items()):
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{task}/{key}" if counts[key] > 1 else key] = float(value)
    return flat


def auto_export_destinations(paths: EvalPaths) -> list[str]:
    """request.json's `export.to` (where submit records destinations taken from the launcher's
    view), else the launcher config's `execution.auto_export.destinations`."""
    recorded = (paths.read_request().get("export") or {}).get("to")
    if recorded:
        return list(recorded)
    return list(((launcher_config(paths).get("execution") or {}).get("auto_export") or {}).get("destinations") or [])


def launcher_config(paths: EvalPaths) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(paths.launcher_config.read_text()) or {}
    except FileNotFoundError:
        return {}


def resolve_target(dest: str, option: Target, group: Group) -> Target:
    """Options first, then the launcher's `export.<dest>` keys of the group's newest evaluation, then defaults."""
    section = (launcher_config(group.evaluations[-1].paths).get("export") or {}).get(dest) or {}
    configured_project = section.get("project") if dest == "wandb" else section.get("experiment_name")
    return Target(
        project=option.project or configured_project or DEFAULT_PROJECT,
        name=option.name or section.get("name") or group.default_name(),
        entity=option.entity or section.get("entity") if dest == "wandb" else None,
        tracking_uri=option.tracking_uri or section.get("tracking_uri") if dest == "mlflow" else None,
    )


def target_key(dest: str, target: Target) -> str:
    """Which W&B project or MLflow store+experiment an export went to (exporting elsewhere is new)."""
    where = target.entity if dest == "wandb" else target.tracking_uri
    return f"{dest}:{where or ''}:{target.project}"


def already_exported(paths: EvalPaths, dest: str, target: Target) -> bool:
    return target_key(dest, target) in (read_json(paths.root / "exported.json") or {})


def record_export(paths: EvalPaths, dest: str, target: Target, tracking_run: str) -> None:
    record = read_json(paths.root / "exported.json") or {}
    record[target_key(dest, target)] = {"tracking_run": tracking_run, "exported_at": now_iso()}
    write_json(paths.root / "exported.json", record)


def run_metadata(group: Group, todo: list[EvaluationResults]) -> dict[str, Any]:
    return {
        "hpc_eval.run": group.run,
        "hpc_eval.run_dir": group.run_dir or "",
        "hpc_eval.config_hash": group.config_hash,
        **{f"checkpoint.{ev.iteration}": ev.paths.read_request().get("checkpoint") or "" for ev in todo},
    }


def log_wandb(wandb: Any, group: Group, todo: list[EvaluationResults], target: Target) -> str:
    """Resume (or start) the group's W&B run by its deterministic id and log each checkpoint at its iteration."""
    run_id = "hpc-eval-" + hashlib.sha256(f"{target.project}/{group.key}".encode()).hexdigest()[:16]
    run = wandb.init(
        project=target.project,
        entity=target.entity,
        id=run_id,
        name=target.name,
        resume="allow",
        config=run_metadata(group, todo),
        reinit="create_new",
        settings=wandb.Settings(silent=True),
    )
    try:
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
        for evaluation in todo:
            run.log({STEP_METRIC: evaluation.iteration, **metrics_of(evaluation)})
    finally:
        run.finish()
    return run_id


def log_mlflow(mlflow: Any, group: Group, todo: list[EvaluationResults], target: Target) -> str:
    """Find (or create) the group's MLflow run by tag and log each checkpoint at step = iteration."""
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri)
    experiment = client.get_experiment_by_name(target.project)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(target.project)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{group.key}'", max_results=1)
    run_id = (
        found[0].info.run_id
        if found
        else client.create_run(experiment_id, run_name=target.name, tags={RUN_KEY_TAG: group.key}).info.run_id
    )
    now = int(time.time() * 1000)
    metrics = []
    for evaluation in todo:
        for key, value in metrics_of(evaluation).items():
            # an export that died before it wrote exported.json must not log the point twice
            if evaluation.iteration not in {m.step for m in client.get_metric_history(run_id, key)}:
                metrics.append(Metric(key, value, now, evaluation.iteration))
    tags = {key: str(value) for key, value in run_metadata(group, todo).items()}
    client.log_batch(run_id, metrics=metrics, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    return run_id
