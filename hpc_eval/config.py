"""Load, compose, override, resolve and strip a NeMo Evaluator Launcher config.

A config is a launcher config plus the tool's own keys (`TOOL_KEYS`). `load_config` returns the
resolved launcher part as plain data with the tool's keys taken out; `preflight` checks it the
way the launcher would (preflight.py), without the launcher's side effects; overrides.py applies `key=value`;
launcher_yaml.py writes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpc_eval import deployments, launcher_executors
from hpc_eval.config_checks import MAX_YAML_BYTES, check_yaml_shape, refuse_line_breaks, unset_env_vars
from hpc_eval.errors import ConfigError
from hpc_eval.launcher import import_launcher
from hpc_eval.overrides import apply_override, missing_keys
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


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def saved_form(launcher: dict[str, Any], eval_dir: Path) -> dict[str, Any]:
    """The launcher config as saved for one evaluation: its output pointed at `eval_dir`."""
    return {**launcher, "execution": {**launcher.get("execution", {}), "output_dir": str(eval_dir)}}
