"""The launcher's own acceptance checks, run on the config hpc-eval will save, before anything is claimed.

`run_eval` refuses inside the job what these refuse here, after the job waited for a GPU node:
a `???` left, a key its config models forbid (`execution.env_vars` among them), a url/model_id next
to a deployment, an unprefixed env var value; and, in the executor, every `host:` variable (an
api key by name, `env_vars`) that the submitting environment lacks. The model checks pass once per
distinct config and launcher version (cached); the environment is checked every time (it changes).
"""

from __future__ import annotations

import json
import os
from typing import Any

from hpc_eval.errors import ConfigError
from hpc_eval.launcher import cache_file, import_launcher, launcher_key, write_cache

REFUSED_EXPORTS = {"wandb", "mlflow"}


def check_auto_export(launcher: dict[str, Any], source) -> None:
    """auto_export is never dropped silently: wandb and mlflow wait for our exporter (step = training
    iteration); the local executor runs the others itself, the hpc_eval executor runs none yet."""
    destinations = list(((launcher.get("execution") or {}).get("auto_export") or {}).get("destinations") or [])
    if not destinations:
        return
    ours = sorted(REFUSED_EXPORTS & set(destinations))
    if ours:
        raise ConfigError(
            f"{source}: execution.auto_export to {', '.join(ours)} is not run by hpc-eval; its exporter at step = training "
            f"iteration is coming (issue 17): remove the key (~execution.auto_export) and export with `nel export` meanwhile"
        )
    if (launcher.get("execution") or {}).get("type") == "local":
        return  # the launcher's local executor runs these exporters at the end of each task's script
    raise ConfigError(
        f"{source}: execution.auto_export to {', '.join(map(str, destinations))} is not run inside the hpc-eval job; "
        f"remove the key (~execution.auto_export) and run `nel export INVOCATION --dest {destinations[0]}` after the job"
    )


def check_acceptance(launcher: dict[str, Any], source) -> None:
    """The launcher's checks on `launcher` (the config as saved, execution.output_dir set).

    Raises:
        ConfigError: one `Error:` line per refusal or missing variable.
    """
    passed = cache_file("accepted", json.dumps([launcher_key(), launcher], sort_keys=True, default=str))
    if not passed.exists():
        launcher_checks(launcher, source)
        write_cache(passed, {"passed": True})  # the name is a hash: no config text (or secret) is stored
    missing = [
        f"{source}: environment variable {name} ({where}) is not set here; the launcher reads it on the node: export {name}=... before submitting"
        for name, where in host_variables(launcher).items()
        if name not in os.environ
    ]
    if missing:
        raise ConfigError("\nError: ".join(missing))


def launcher_checks(launcher: dict[str, Any], source) -> None:
    import_launcher()
    from nemo_evaluator_launcher.api import functional
    from nemo_evaluator_launcher.common.env_vars import collect_deployment_env_vars, parse_env_var_value
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.create(launcher)
    try:
        functional._validate_no_missing_values(cfg)
        functional._validate_config_sections(cfg)
        functional._check_api_endpoint_when_deployment_is_configured(cfg)
        if (launcher.get("deployment") or {}).get("type", "none") != "none":
            collect_deployment_env_vars(cfg)
        for section in env_sections(launcher).values():
            for raw in section.values():
                parse_env_var_value(str(raw))
    except (ValueError, OmegaConfBaseException) as error:
        text = " ".join(str(error).split())
        if "migrate-config" in text:
            text += f" (nel migrate-config {source} rewrites the file)"
        raise ConfigError(f"{source}: NeMo Evaluator Launcher rejects the config hpc-eval would save: {text}") from None


def env_sections(launcher: dict[str, Any]) -> dict[str, dict]:
    """Every env_vars mapping the launcher reads, by where it sits."""
    sections = {
        "env_vars": launcher.get("env_vars") or {},
        "evaluation.env_vars": (launcher.get("evaluation") or {}).get("env_vars") or {},
        "deployment.env_vars": (launcher.get("deployment") or {}).get("env_vars") or {},
    }
    for index, task in enumerate((launcher.get("evaluation") or {}).get("tasks") or []):
        sections[f"evaluation.tasks.{index}.env_vars"] = task.get("env_vars") or {}
    return sections


def host_variables(launcher: dict[str, Any]) -> dict[str, str]:
    """Variable name -> the key that needs it: api_key_name and every `host:VAR`."""
    needed, declared = {}, set()
    for where, section in env_sections(launcher).items():
        for name, raw in section.items():
            declared.add(str(name))
            if str(raw).startswith("host:"):
                needed.setdefault(str(raw)[len("host:") :], f"{where}.{name}")
    api_key = ((launcher.get("target") or {}).get("api_endpoint") or {}).get("api_key_name")
    if api_key and str(api_key) not in declared:  # the launcher adds it as host:NAME unless declared
        needed.setdefault(str(api_key), "target.api_endpoint.api_key_name")
    return needed
