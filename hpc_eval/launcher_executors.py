"""Configs written for `nel run` or Nemotron's eval step, turned into what hpc-eval runs.

hpc-eval submits from this machine and runs the launcher inside the allocation, so:
  - a launcher `slurm` executor becomes our in-allocation executor (`execution.type: hpc_eval`,
    its runtime `auto`), and its sbatch settings become the `slurm:` section;
  - Nemotron's `run.env` (account, partition, time, gpus_per_node, nodes) fills what neither the
    `slurm:` section nor the executor sets, and `container_image` the deployment's image;
  - `execution.env_vars` (which launcher 0.2.6 rejects) moves as `nel migrate-config` moves it;
  - `execution.output_dir` is the output root when the config has no `output_dir` of ours.
Everything works on the unresolved config, after the command line's overrides, so an override of
`execution.account` (or `run.env.time`) reaches the sbatch line. The `slurm:` section produced is
plain data in its existing keys; whatever validates slurm settings checks it as any other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpc_eval.errors import ConfigError
from hpc_eval.slurm import SlurmSettings

# launcher slurm executor key -> slurm: key
EXECUTION_TO_SLURM = {
    "account": "account",
    "partition": "partition",
    "walltime": "time",
    "num_nodes": "nodes",
    "gpus_per_node": "gpus_per_node",
}
RUN_ENV_TO_SLURM = {
    "account": "account",
    "partition": "partition",
    "time": "time",
    "gpus_per_node": "gpus_per_node",
    "nodes": "nodes",
}
# execution keys that stay when a launcher slurm executor becomes ours (the local executor's, which ours reads)
KEPT_EXECUTION_KEYS = (
    "output_dir",
    "mode",
    "mounts",
    "endpoint_readiness_timeout",
    "auto_export",
    "runtime",
    "extra_docker_args",
    "num_nodes",
    "num_instances",
    "deployment",
    "proxy",
)  # the last four: the server's layout across nodes
SSH_ONLY_KEYS = ("hostname", "username")
SBATCH_KEYS = ("constraint", "exclusive", "qos", "mem", "cpus_per_task")  # sbatch_extra_flags that are slurm: keys
GRES_GPUS = re.compile(r"gpu(?::[\w.-]+)?:(\d+)")


def adopt(cfg: DictConfig, explicit_slurm: set[str], source: Path) -> list[str]:
    """Turn a launcher/Nemotron config's executor settings into ours, in place; the notes to show.

    `explicit_slurm`: the slurm: keys the file or an override set (they win over the rest).
    """
    notes = migrate_env_vars(cfg, source)
    execution = cfg.get("execution")
    if not isinstance(execution, DictConfig):
        return notes
    kind = OmegaConf.select(cfg, "execution.type", throw_on_missing=False)
    filled = set(explicit_slurm)
    if kind == "slurm":
        filled |= slurm_from_execution(cfg, execution, filled)
    filled |= slurm_from_run_env(cfg, filled)
    if OmegaConf.is_missing(execution, "output_dir"):
        execution.output_dir = None  # the root is used (see config.resolve); the saved config gets its evaluation dir
    if kind == "slurm":
        unused = [key for key in SSH_ONLY_KEYS if key in execution.keys()]  # noqa: SIM118 (`in` misses a `???` value)
        kept = {key: execution._get_node(key) for key in KEPT_EXECUTION_KEYS if key in execution.keys()}  # noqa: SIM118
        # the slurm executor runs tasks one after the other; without `mode` the local one would run them in parallel
        cfg.execution = {"type": "hpc_eval", "runtime": "auto", "mode": "sequential", **kept}
        notes.append(
            f"note: execution.type slurm runs here as execution.type hpc_eval (runtime {OmegaConf.select(cfg, 'execution.runtime')}) inside the job hpc-eval submits; "
            f"its sbatch settings went to the slurm: section"
            + (
                f"; {', '.join('execution.' + k for k in unused)} (SSH submission) are neither required nor used"
                if unused
                else ""
            )
        )
    return notes


def value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at `key`, None when absent, `???` or not resolvable yet."""
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation to a `???`: the key is unset as far as sbatch is concerned
        return None


def slurm_from_execution(cfg: DictConfig, execution: DictConfig, filled: set[str]) -> set[str]:
    """The launcher slurm executor's sbatch settings, for the slurm: keys not already given."""
    added = set()
    for their, ours in EXECUTION_TO_SLURM.items():
        given = value(cfg, f"execution.{their}")
        if ours not in filled and given is not None:
            cfg.slurm[ours] = given  # a value, not an interpolation: the executor's keys are rewritten below
            added.add(ours)
    extra = dict(cfg.slurm.get("additional_parameters") or {})
    gres = value(cfg, "execution.gres")
    if gres is not None:
        match = GRES_GPUS.fullmatch(str(gres))
        if match and "gpus_per_node" not in filled | added:
            cfg.slurm.gpus_per_node = int(match.group(1))
            added.add("gpus_per_node")
        elif not match:
            extra.setdefault("gres", str(gres))
    comment = value(cfg, "execution.sbatch_comment")
    if comment is not None:
        extra.setdefault("comment", str(comment))
    for flag, setting in (value(cfg, "execution.sbatch_extra_flags") or {}).items():
        if setting is None or setting is False:
            continue  # the launcher omits a null or false flag
        if flag in SBATCH_KEYS and flag not in filled:
            cfg.slurm[flag] = setting
        else:
            extra.setdefault(flag, setting)
    cfg.slurm.additional_parameters = extra
    return added


def slurm_from_run_env(cfg: DictConfig, filled: set[str]) -> set[str]:
    """Nemotron's run.env: defaults for the slurm: keys nothing else set; its image for the deployment."""
    added = set()
    for their, ours in RUN_ENV_TO_SLURM.items():
        if ours not in filled and value(cfg, f"run.env.{their}") is not None:
            cfg.slurm[ours] = "${run.env." + their + "}"  # follows it: --gpus sets run.env.gpus_per_node
            added.add(ours)
    image = value(cfg, "run.env.container_image")
    deployment = cfg.get("deployment")
    if (
        image
        and isinstance(deployment, DictConfig)
        and deployment.get("type", "none") != "none"
        and value(cfg, "deployment.image") is None
    ):
        deployment.image = "${run.env.container_image}"
    return added


def set_gpus(cfg: DictConfig, gpus: int) -> None:
    """`--gpus N`: one source for the sbatch line and the server command.

    slurm.gpus_per_node that follows another key (the built-in default's run.env.gpus_per_node,
    which its server command reads) gets N through that key."""
    node = cfg.slurm._get_node("gpus_per_node")
    target = str(node._value())[2:-1] if node._is_interpolation() else ""
    if re.fullmatch(r"[\w.]+", target) and OmegaConf.select(cfg, target, throw_on_missing=False) is not None:
        OmegaConf.update(cfg, target, gpus, merge=False)
    else:
        cfg.slurm.gpus_per_node = gpus
    if OmegaConf.select(cfg, "run.env.gpus_per_node", throw_on_missing=False) is not None:
        OmegaConf.update(cfg, "run.env.gpus_per_node", gpus, merge=False)  # Nemotron's server command reads it


def migrate_env_vars(cfg: DictConfig, source: Path) -> list[str]:
    """Move execution.env_vars as the launcher's `nel migrate-config` does: its deployment part to
    deployment.env_vars, its evaluation part to the top-level env_vars (keys already there win),
    every unprefixed value classified by the launcher's own rule (host:VAR or lit:value)."""
    execution = cfg.get("execution")
    old = execution.get("env_vars") if isinstance(execution, DictConfig) else None
    if old is None:
        return []
    from hpc_eval.launcher import import_launcher

    import_launcher()
    from nemo_evaluator_launcher.cli.migrate_config import classify_value

    moved = []
    for part, target in (("deployment", "deployment.env_vars"), ("evaluation", "env_vars")):
        entries = old.get(part) or {}
        for name in list(entries.keys()):
            raw = entries._get_node(name)._value()
            new = classify_value(raw)
            if new is None:
                raise ConfigError(
                    f"{source}: execution.env_vars.{part}.{name}: {raw!r} cannot be migrated automatically; "
                    f"run `nel migrate-config {source}` and move it by hand"
                )
            if OmegaConf.select(cfg, f"{target}.{name}", throw_on_missing=False) is None:
                OmegaConf.update(cfg, f"{target}.{name}", new, merge=False, force_add=True)
                moved.append(f"{part}.{name}")
    del execution["env_vars"]
    note = (
        f"note: execution.env_vars migrated as `nel migrate-config` does ({', '.join(moved) or 'nothing to move'}): "
        f"deployment entries to deployment.env_vars, evaluation entries to env_vars"
    )
    return [note]


def check_layout(slurm: SlurmSettings, launcher: dict[str, Any], source: Path) -> None:
    """The server's nodes (execution.num_nodes, default slurm.nodes, split into num_instances) fit the job's slurm.nodes."""
    execution = launcher.get("execution") or {}
    nodes, instances = execution.get("num_nodes") or slurm.nodes, execution.get("num_instances", 1)
    instances = 1 if instances is None else instances
    if not isinstance(instances, int) or instances < 1:
        raise ConfigError(
            f"{source}: execution.num_instances is {instances!r}: give a whole number of servers, at least 1"
        )
    if not isinstance(nodes, int) or nodes < 1 or nodes % instances:
        raise ConfigError(
            f"{source}: execution.num_nodes ({nodes!r}) must be a whole number divisible by execution.num_instances ({instances}): "
            f"each server instance gets num_nodes / num_instances nodes"
        )
    if nodes > slurm.nodes:
        raise ConfigError(
            f"{source}: execution.num_nodes is {nodes} but slurm.nodes is {slurm.nodes}: the job must have the server's nodes; "
            f"set slurm.nodes={nodes}"
        )
