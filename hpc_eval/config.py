"""Load, compose, override, resolve and strip a NeMo Evaluator Launcher config.

A config is a launcher config plus the tool's own keys (`TOOL_KEYS`). `load_config` returns the
resolved launcher part as plain data with the tool's keys taken out; `preflight` checks it the
way the launcher would, without the launcher's side effects; launcher_yaml.py writes it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpc_eval import deployments, launcher_executors
from hpc_eval.config_checks import MAX_YAML_BYTES, check_yaml_shape, refuse_line_breaks, unset_env_vars
from hpc_eval.errors import ConfigError
from hpc_eval.launcher import cache_file, import_launcher, launcher_key, task_catalogue, write_cache
from hpc_eval.resources import BUILTIN_CONFIGS, RUNTIME_CHOICES
from hpc_eval.slurm import SLURM_DEFAULTS, SlurmSettings, check_slurm_keys

TOOL_KEYS = ("dry_run", "output_dir", "task_filters", "run", "slurm")
# Executors that run the evaluation on the node the payload runs on. A launcher `slurm` executor is
# turned into `hpc_eval` (launcher_executors.py); `lepton` is refused.
IN_JOB_EXECUTORS = ("local", "hpc_eval")


@dataclass
class EvalConfig:
    """A resolved config: the launcher's part, and the tool's own keys taken out of it."""

    source: Path
    launcher: dict[str, Any]
    output_dir: Path
    dry_run: bool = False
    task_filters: list[str] | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    unresolved: DictConfig | None = field(default=None, repr=False, compare=False)  # to resolve again per checkpoint
    notes: list[str] = field(default_factory=list, repr=False, compare=False)  # what was converted, for the dry run
    # True once a second resolution showed the checkpoint path only appears verbatim in the values
    path_is_text: bool | None = field(default=None, repr=False, compare=False)
    # Made once for many checkpoints: launcher_yaml.LauncherTemplate, submit.RequestTemplate
    template: Any = field(default=None, repr=False, compare=False)
    request_template: Any = field(default=None, repr=False, compare=False)

    @property
    def checkpoint_path(self) -> str | None:
        return (self.launcher.get("deployment") or {}).get("checkpoint_path")

    @property
    def serves_checkpoint(self) -> bool:
        """True when the launcher deploys a model server (which mounts /checkpoint)."""
        return (self.launcher.get("deployment") or {}).get("type", "none") != "none"

    def config_hash(self) -> str:
        """A short hash of what changes a score: tasks, params, target, deployment; not paths."""
        scored = {k: v for k, v in self.launcher.items() if k not in ("execution", "user_config_path")}
        data = {"config": scored, "task_filters": self.task_filters, "dry_run": self.dry_run}
        if self.checkpoint_path:  # in the values, not in JSON text, where non-ASCII and quotes are escaped
            data = replace_text(data, self.checkpoint_path, "<checkpoint>")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def for_checkpoint(self, checkpoint: Path) -> EvalConfig:
        """The same config resolved again with another checkpoint (its interpolations follow it).

        A resolution costs milliseconds, seconds for a thousand checkpoints: once the first one
        has shown that swapping the path in the resolved values gives the same config, later
        checkpoints get that swap instead.
        """
        path = deployments.served_path(deployments.deployment_type(self.launcher), checkpoint, self.source)
        if self.path_is_text and self.checkpoint_path:
            return self.with_checkpoint_text(path)
        cfg = self.unresolved.copy()
        deployments.apply_checkpoint(cfg, checkpoint, self.source)
        config = resolve(self.source, cfg, self.task_filters or ())
        if self.path_is_text is None and self.checkpoint_path and path != self.checkpoint_path:
            self.path_is_text = self.with_checkpoint_text(path) == config
        return config

    def with_checkpoint_text(self, path: str) -> EvalConfig:
        """This config with every occurrence of its checkpoint path replaced by `path`."""
        old = self.checkpoint_path

        def swap(value: Any) -> Any:
            return replace_text(value, old, path)

        return EvalConfig(
            self.source,
            swap(self.launcher),
            Path(swap(str(self.output_dir))),
            self.dry_run,
            swap(self.task_filters),
            SlurmSettings(**swap(self.slurm.as_dict())),
            self.unresolved,
            self.path_is_text,
        )


def replace_text(value: Any, old: str, new: str) -> Any:
    """`value` (strings, and dicts and lists of them) with `old` replaced by `new` in every string."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {key: replace_text(item, old, new) for key, item in value.items()}
    return [replace_text(item, old, new) for item in value] if isinstance(value, list) else value


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml"))


def find_config(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a built-in config."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not path.is_file():
            raise ConfigError(
                f"config file not found: {path}; give a YAML path or one of the built-in names {builtin_names()}"
            )
        return path.resolve()
    builtin = BUILTIN_CONFIGS / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise ConfigError(
            f"unknown config '{name_or_path}': not a file and not a built-in config; built-in names are {builtin_names()}"
        )
    return builtin


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The YAML file's top-level mapping, or a ConfigError that names the file and the line."""
    raw = path.read_bytes()
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: {len(raw)} bytes, over the {MAX_YAML_BYTES} a config may have; is this the right file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {raw[error.start]:#04x} at offset {error.start}); save the file as UTF-8"
        ) from None
    try:
        check_yaml_shape(text, path)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {error.problem or error.context}; fix the file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: YAML error: {error}; fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys (execution:, deployment:, evaluation:, ...), not {type(data).__name__}"
        )
    return data


def compose(path: Path, data: dict[str, Any]) -> DictConfig:
    """The config as the launcher composes it: a Hydra `defaults:` list pulls in its groups."""
    if "defaults" not in data:
        return OmegaConf.create(data)
    import_launcher()
    from nemo_evaluator_launcher.api.types import RunConfig

    try:
        composed = RunConfig.from_hydra(config=str(path))
    except Exception as error:  # Hydra reports a missing group or option with its own types
        raise ConfigError(f"{path}: cannot compose its defaults list: {error}") from None
    plain = OmegaConf.to_container(composed, resolve=False)
    plain.pop("user_config_path", None)
    cfg = OmegaConf.create(plain)
    restore_missing(cfg, {key: value for key, value in data.items() if key != "defaults"})
    return cfg


def restore_missing(cfg: DictConfig, data: dict[str, Any], prefix: str = "") -> None:
    """Put back the file's own `???`: a merge keeps a group's value (e.g. `checkpoint_path: null`) over `???`."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, str) and value == "???":
            OmegaConf.update(cfg, dotted, "???", merge=False, force_add=True)
        elif isinstance(value, dict):
            restore_missing(cfg, value, dotted + ".")


def with_slurm_defaults(cfg: DictConfig, source: Path) -> DictConfig:
    """Fill the `slurm:` section with every known key, so overrides need no `+`."""
    given = cfg.get("slurm") or {}
    check_slurm_keys(given, str(source))
    cfg.slurm = OmegaConf.merge(SLURM_DEFAULTS, given)
    return cfg


def key_exists(cfg: DictConfig, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        # `part in node` is False for a `???` value: OmegaConf reports it as absent
        if isinstance(node, DictConfig) and not (node._is_none() or node._is_missing()) and part in node.keys():  # noqa: SIM118
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def apply_override(cfg: DictConfig, item: str, source: Path) -> None:
    """Apply one `key=value` (existing key), `+key=value` (new key) or `~key` (delete)."""
    if item.startswith("~"):
        key = item[1:]
        if not key_exists(cfg, key):
            raise ConfigError(f"override '{item}': no key '{key}' in {source} to delete")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        del node[int(leaf) if isinstance(node, ListConfig) else leaf]
        return
    if "=" not in item:
        raise ConfigError(
            f"override '{item}' has no '='; write key=value, for example evaluation.nemo_evaluator_config.config.params.limit_samples=5"
        )
    adding = item.startswith("+")
    key, _, _ = item.lstrip("+").partition("=")
    if key.startswith("slurm."):  # `+` would be silently ignored
        check_slurm_keys([key.split(".")[1]], f"override '{item}'")
    if not adding and not key_exists(cfg, key):
        raise ConfigError(
            f"override '{item}': unknown key '{key}' in {source}{suggest(cfg, key)}; write '+{item}' to add a new key"
        )
    try:
        value = OmegaConf.select(OmegaConf.from_dotlist([item.lstrip("+")]), key)
    except OmegaConfBaseException as error:
        raise ConfigError(f"override '{item}': cannot parse the value: {error}") from None
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def suggest(cfg: DictConfig, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1)
    return f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of every `???` left in the config."""
    found = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        dotted = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            found.append(dotted)
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_interpolation():
            found += missing_keys(child, dotted + ".")
    return found


def load_config(
    name_or_path: str,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    checkpoint: str | Path | None = None,
    tasks: tuple[str, ...] | list[str] = (),
    output_dir: str | Path | None = None,
    gpus: int | None = None,
    placeholder: bool = False,
) -> EvalConfig:
    """Load a config, apply overrides and the checkpoint, resolve it, and take out the tool's keys.

    `placeholder`: `checkpoint` is a run dir standing for its iterations (watch), not itself served.

    Raises:
        ConfigError: the file, an override or a resolved value is wrong.
    """
    source = find_config(name_or_path)
    composed = compose(source, read_yaml_mapping(source))
    explicit_slurm = set((composed.get("slurm") or {}).keys())
    cfg = with_slurm_defaults(composed, source)
    for item in overrides:
        apply_override(cfg, item, source)
        if item.lstrip("+").startswith("slurm."):
            explicit_slurm.add(item.lstrip("+").split("=")[0].split(".")[1])
    notes = launcher_executors.adopt(cfg, explicit_slurm, source)
    if gpus is not None:
        launcher_executors.set_gpus(cfg, gpus)
    deployments.serve_configured_model(cfg)
    if checkpoint is not None:
        deployments.apply_checkpoint(cfg, Path(checkpoint), source, check=not placeholder)
    if output_dir is not None:
        OmegaConf.update(cfg, "output_dir", str(output_dir), force_add=True)
    config = resolve(source, cfg, tasks)
    config.notes = notes
    return config


def resolve(source: Path, cfg: DictConfig, tasks: tuple[str, ...] | list[str]) -> EvalConfig:
    missing = missing_keys(cfg)
    if missing:
        hint = " or --checkpoint" if "deployment.checkpoint_path" in missing else ""
        raise ConfigError(
            f"{source}: no value for {', '.join(missing)} (marked ???); set it with {missing[0]}=VALUE{hint}"
        )
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        unset = unset_env_vars(cfg)
        if unset:
            raise ConfigError(
                "\nError: ".join(
                    f"{source}: environment variable {name} is not set ({key} reads it); export {name}=..."
                    for name, key in unset
                )
            ) from None
        key = getattr(error, "full_key", "") or "?"
        raise ConfigError(f"{source}: cannot resolve '{key}': {one_line(getattr(error, 'msg', error))}") from None
    tool = {key: resolved.pop(key) for key in TOOL_KEYS if key in resolved}
    task_filters = list(tasks) or tool.get("task_filters") or None
    if task_filters is not None and not isinstance(task_filters, list):
        raise ConfigError(f"{source}: task_filters must be a list such as [name, name.0], not {task_filters!r}")
    execution = resolved.get("execution") if isinstance(resolved.get("execution"), dict) else {}
    # the config's own execution.output_dir is the root when it has no output_dir of ours
    output_dir = Path(tool.get("output_dir") or execution.get("output_dir") or "./results").expanduser().absolute()
    refuse_line_breaks(str(output_dir), "output_dir")
    if execution:
        execution["output_dir"] = str(output_dir)  # what `config show` prints is what will be used
    for value, what in [
        (str((resolved.get("deployment") or {}).get("checkpoint_path") or ""), "deployment.checkpoint_path"),
        *((str(name), "task filter") for name in task_filters or []),
        *(
            (str(task.get("name")), "evaluation task name")
            for task in (resolved.get("evaluation") or {}).get("tasks") or []
            if isinstance(task, dict)
        ),
    ]:
        refuse_line_breaks(value, what)
    config = EvalConfig(
        source,
        resolved,
        output_dir,
        bool(tool.get("dry_run")),
        task_filters,
        SlurmSettings.from_dict(tool.get("slurm"), source),
        cfg,
    )
    launcher_executors.check_layout(config.slurm, config.launcher, source)
    check_launcher_shape(config)
    return config


def check_launcher_shape(config: EvalConfig) -> None:
    """Checks that need no launcher import: executor type and the endpoint/deployment pairing."""
    launcher, source = config.launcher, config.source
    execution_type = (launcher.get("execution") or {}).get("type")
    if execution_type == "lepton":
        raise ConfigError(
            f"{source}: execution.type: lepton runs on DGX Cloud Lepton, not in a Slurm allocation; "
            f"hpc-eval submits to Slurm itself, so use execution.type: local (or hpc_eval), or run this config with `nel run`"
        )
    if execution_type not in IN_JOB_EXECUTORS:
        raise ConfigError(
            f"{source}: execution.type: {execution_type!r} is not supported; use one of {list(IN_JOB_EXECUTORS)}"
        )
    if execution_type == "hpc_eval":
        runtime = launcher["execution"].get("runtime", "auto")
        if runtime not in RUNTIME_CHOICES:
            raise ConfigError(f"{source}: execution.runtime: {runtime!r} is not one of {list(RUNTIME_CHOICES)}")
    from hpc_eval.acceptance import check_auto_export

    check_auto_export(launcher, source)
    endpoint = ((launcher.get("target") or {}).get("api_endpoint")) or {}
    if config.serves_checkpoint:
        present = [k for k in ("url", "model_id") if k in endpoint]
        if present:
            raise ConfigError(
                f"{source}: target.api_endpoint.{present[0]} is set while deployment.type is "
                f"{launcher['deployment']['type']}; the launcher points the tasks at its own server, so remove it (~target.api_endpoint.{present[0]})"
            )
        from hpc_eval.ports import PortError, check_port

        try:  # the job moves the server to a port of its own: the command must say where the port goes
            check_port(launcher)
        except PortError as error:
            raise ConfigError(f"{source}: {error}") from None
    else:
        empty = [k for k in ("url", "model_id") if not endpoint.get(k)]
        if empty:
            raise ConfigError(
                f"{source}: target.api_endpoint.{empty[0]} is empty and deployment.type is none; set target.api_endpoint.{empty[0]}=... (tiny_chat reads NEMO_EVALUATOR_MODEL_URL / NEMO_EVALUATOR_MODEL_ID)"
            )


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


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def saved_form(launcher: dict[str, Any], eval_dir: Path) -> dict[str, Any]:
    """The launcher config as saved for one evaluation: its output pointed at `eval_dir`."""
    return {**launcher, "execution": {**launcher.get("execution", {}), "output_dir": str(eval_dir)}}
