"""Preflight: the launcher's own checks of the tasks and the `evaluation` section, before anything is claimed."""

from __future__ import annotations

import difflib
import json

from omegaconf import OmegaConf

from hpc_eval.config import EvalConfig, one_line, saved_form
from hpc_eval.errors import ConfigError
from hpc_eval.launcher import cache_file, import_launcher, launcher_key, task_catalogue, write_cache


def preflight(config: EvalConfig) -> None:
    """Check the tasks and the `evaluation` section the way the launcher will, without its side effects.

    Passing checks are remembered per launcher version in the cache (see `cache_file`).

    Then the launcher's own acceptance checks on the config as it will be saved (acceptance.py).

    Raises:
        ConfigError: an unknown or ambiguous task, a bad evaluation key, a filter that matches
            nothing, a config the launcher rejects, or a variable it needs that is not set.
    """
    from hpc_eval.acceptance import check_acceptance

    check_tasks(config)
    check_acceptance(saved_form(config.launcher, config.output_dir), config.source)


def check_tasks(config: EvalConfig) -> None:
    evaluation = config.launcher.get("evaluation") or {}
    # A cron pass checks the same config every few minutes: once this launcher accepted these
    # tasks, skip the launcher's import (0.4 s) and the checks.
    passed = cache_file(
        "preflight", json.dumps([launcher_key(), evaluation, config.task_filters], sort_keys=True, default=str)
    )
    if passed.exists():
        return
    import_launcher()
    from nemo_evaluator_launcher.api.functional import filter_tasks
    from nemo_evaluator_launcher.common.config_models import EvaluationModel
    from nemo_evaluator_launcher.common.mapping import get_task_from_mapping
    from pydantic import ValidationError

    try:
        EvaluationModel.model_validate(evaluation)
    except ValidationError as error:
        first = error.errors()[0]
        where = "evaluation." + ".".join(str(part) for part in first["loc"])
        raise ConfigError(
            f"{config.source}: {where}: {first['msg']}; allowed evaluation keys are {sorted(EvaluationModel.model_fields)}"
        ) from None
    tasks = evaluation.get("tasks") or []
    if not tasks:
        raise ConfigError(f"{config.source}: evaluation.tasks is empty; list at least one task (see `nel ls tasks`)")
    mapping = dict.fromkeys(task_catalogue())  # get_task_from_mapping only looks at the keys
    for index, task in enumerate(tasks):
        if task.get("container"):
            continue  # a custom image brings its own task list; the launcher checks it in the job
        try:
            get_task_from_mapping(task["name"], mapping)
        except ValueError as error:
            hint = "" if any(key[1] == task["name"] for key in mapping) else unknown_task_hint(task["name"], mapping)
            raise ConfigError(f"{config.source}: evaluation.tasks.{index}.name: {one_line(error)}{hint}") from None
    if config.task_filters:
        try:
            filter_tasks(OmegaConf.create(config.launcher), config.task_filters)
        except ValueError as error:
            raise ConfigError(f"task filter: {one_line(error)}; use a configured task name or name.INDEX") from None
    write_cache(passed, {"passed": True})  # the name is a hash: no config text (or secret) is stored


def unknown_task_hint(name: str, mapping: dict) -> str:
    names = sorted({task for _, task in mapping} | {f"{harness}.{task}" for harness, task in mapping})
    close = difflib.get_close_matches(name, names, n=3)
    return (
        f" (did you mean {', '.join(close)}?)" if close else ""
    ) + "; use a task name from `nel ls tasks` (or harness.task)"
