"""How the hpc_eval executor runs one task in each runtime: its plan, commands and driver script.

`plan_task` computes what the local executor computes for a task (image, env-var names, mounts,
the launcher's in-container command, the model server and its health URL) and the one command
line that starts the server and the client in the chosen runtime (templates/runtime-commands.sh.j2);
`render_script` fills templates/runtime-run.sh.j2 with the plans. Nothing here starts anything.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import OmegaConf

from hpc_eval.executor_options import Layout, Options, proxy_on_server_port
from hpc_eval.ports import port_arguments
from hpc_eval.resources import TEMPLATES

ARTIFACTS = "$artifacts_dir"  # the task's artifacts dir as the driver script names it
SHELL_SAFE = re.compile(r"[\w./+,:@%=-]+", re.ASCII)  # a path any shell reads as itself
LINK_DIR = "/tmp"  # on every node; where a path with shell metacharacters gets a safe alias


@dataclass(frozen=True)
class Mount:
    """A bind mount: a host path (or ARTIFACTS) at a container path."""

    source: str
    target: str
    read_only: bool = False

    def spec(self) -> str:
        source = f'"{ARTIFACTS}"' if self.source == ARTIFACTS else shlex.quote(self.source)
        return f"{source}:{shlex.quote(self.target + (':ro' if self.read_only else ''))}"


def host_paths(mounts: list[Mount], artifacts: Path, invocation_id: str) -> dict[str, str]:
    """Container path -> real path, for the host runtime; a path with shell metacharacters as its
    safe alias (`safe_alias`): the harness writes the results path unquoted into its own script."""
    return {m.target: safe_alias(str(artifacts) if m.source == ARTIFACTS else m.source, invocation_id) for m in mounts}


def safe_alias(real: str, invocation_id: str) -> str:
    """`real`, or when a shell would not read it as itself, a symlink name for it under LINK_DIR
    (the driver script makes the link before each task; the payload removes it: `remove_links`)."""
    if SHELL_SAFE.fullmatch(real):
        return real
    return f"{LINK_DIR}/hpc-eval-{os.getuid()}-{invocation_id}-{hashlib.sha256(real.encode()).hexdigest()[:16]}"


def links(mounts: list[Mount], artifacts: Path, invocation_id: str) -> list[tuple[str, str]]:
    """(alias, real path) of every host path that needs a safe alias."""
    reals = {str(artifacts) if m.source == ARTIFACTS else m.source for m in mounts}
    return sorted((safe_alias(real, invocation_id), real) for real in reals if safe_alias(real, invocation_id) != real)


def remove_links(invocation_id: str) -> None:
    """Remove the safe aliases of an invocation's paths (each attempt's scripts make them again)."""
    for link in glob.glob(f"{LINK_DIR}/hpc-eval-{os.getuid()}-{glob.escape(invocation_id)}-*"):
        if os.path.islink(link):
            os.unlink(link)


def map_container_paths(value: Any, paths: dict[str, str]) -> Any:
    """`value` (a string, or lists and dicts of them) with each container path replaced by its real one."""
    if isinstance(value, dict):
        return {key: map_container_paths(item, paths) for key, item in value.items()}
    if isinstance(value, list):
        return [map_container_paths(item, paths) for item in value]
    if not isinstance(value, str):
        return value
    for target, real in paths.items():  # whole path components only: /results/x, not /results2
        value = re.sub(rf"(?<![\w./-]){re.escape(target)}(?![\w.-])", lambda _, real=real: real, value)
    return value


def launch_command(
    runtime: str,
    role: str,
    image: str,
    mounts: list[Mount],
    env_names: list[str],
    options: Options,
    port: Any = None,
    layout: Layout | None = None,
) -> str:
    """The one shell command that starts the model server (role "server") or the client in `runtime`;
    a multi-node server's on the nodes in $nodelist."""
    macros = templates().get_template("runtime-commands.sh.j2").module
    return str(
        macros.launch(
            runtime,
            role,
            image,
            [mount.spec() for mount in mounts],
            env_names,
            options,
            port,
            layout if layout and layout.multi else None,
        )
    )


@functools.cache
def templates():
    """The Jinja environment of templates/: strict (a missing value fails), `q` shell-quotes."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["q"] = lambda value: shlex.quote(str(value))
    environment.filters["apptainer_image"] = apptainer_image
    return environment


def apptainer_image(image: str) -> str:
    """A registry image as docker://IMAGE; a .sif (or any path or URI) as given."""
    local = image.endswith(".sif") or image.startswith(("/", "./")) or "://" in image
    return shlex.quote(image if local else f"docker://{image}")


def plan_task(
    cfg,
    task,
    index: int,
    runtime: str,
    mapping: dict,
    task_dir: Path,
    invocation_id: str,
    options: Options,
    *,
    with_command: bool = True,
    layout: Layout = Layout(),
) -> dict[str, Any]:
    """What the driver script needs for one task, computed as the local executor does."""
    from nemo_evaluator_launcher.common.env_vars import collect_eval_env_vars
    from nemo_evaluator_launcher.common.helpers import (
        get_api_key_name,
        get_timestamp_string,
        get_unique_task_name,
        is_local_image_path,
    )
    from nemo_evaluator_launcher.common.mapping import get_task_definition_for_job

    definition = get_task_definition_for_job(
        task_query=task.name,
        base_mapping=mapping,
        container=task.get("container"),
        endpoint_type=task.get("endpoint_type"),
    )
    image = task.get("container") or definition["container"]
    mounts = [Mount(ARTIFACTS, "/results")] + [
        Mount(str(src), str(dst)) for src, dst in options.evaluation_mounts.items()
    ]
    env_names = sorted({*collect_eval_env_vars(cfg, task, get_api_key_name(cfg)), "ADAPTER_PORT"})  # set by the script
    dataset_env = None
    if task.get("dataset_dir"):
        mounts.append(Mount(str(task.dataset_dir), task.get("dataset_mount_path", "/datasets")))
        dataset_env = str(task.dataset_dir) if runtime == "host" else mounts[-1].target
        env_names = sorted({*env_names, "NEMO_EVALUATOR_DATASET_DIR"})
    stamp = get_timestamp_string()
    plan = {
        "name": task.name,
        "uname": get_unique_task_name(task.name, index),
        "job_id": f"{invocation_id}.{index}",
        "dir": str(task_dir),
        "image": image,
        "container": f"client-{task.name}-{stamp}",
        "env_names": env_names,
        "unlisted": bool(definition.get("is_unlisted")) and not is_local_image_path(image),
        "dataset_env": dataset_env,
        "launch": launch_command(runtime, "client", image, [] if runtime == "host" else mounts, env_names, options),
        "server": plan_server(cfg, task, definition, runtime, task_dir, stamp, options, invocation_id, layout)
        if cfg.deployment.type != "none"
        else None,
        "secrets": False,
        "reexport": "",
        "eval_command": "",
        "debug": "",
        "unsafe": False,
        "links": links(mounts, task_dir / "artifacts", invocation_id) if runtime == "host" else [],
    }
    if plan["server"] and runtime == "host":
        plan["links"] = sorted(set(plan["links"]) | set(plan["server"].pop("links")))
    if with_command:
        built, plan["eval_command"] = eval_factory_command(
            cfg, task, definition, runtime, host_paths(mounts, task_dir / "artifacts", invocation_id)
        )
        plan.update(debug=built.debug, unsafe=built.is_potentially_unsafe)
    return plan


def plan_server(
    cfg,
    task,
    definition: dict,
    runtime: str,
    task_dir: Path,
    stamp: str,
    options: Options,
    invocation_id: str,
    layout: Layout = Layout(),
) -> dict[str, Any]:
    """The model server: the local executor's mounts and env, its health URL; the Slurm layout's /results."""
    from nemo_evaluator_launcher.common.env_vars import collect_deployment_env_vars
    from nemo_evaluator_launcher.common.helpers import get_endpoint_url, get_health_url

    deployment = cfg.deployment
    mounts = [Mount(ARTIFACTS, "/results")] if runtime in ("pyxis", "apptainer") else []
    if deployment.get("checkpoint_path"):
        mounts.append(Mount(str(deployment.checkpoint_path), "/checkpoint", read_only=True))
    if deployment.get("cache_path"):
        mounts.append(Mount(str(deployment.cache_path), "/cache"))
    mounts += [Mount(str(src), str(dst)) for src, dst in options.deployment_mounts.items()]
    env_names = sorted(collect_deployment_env_vars(cfg))
    command, host_mounts = str(deployment.command), mounts + [Mount(ARTIFACTS, "/results")]
    if runtime == "host":
        command = map_container_paths(command, host_paths(host_mounts, task_dir / "artifacts", invocation_id))
    health_url = get_health_url(cfg, get_endpoint_url(cfg, {}, definition["endpoint_type"]))
    if layout.multi:
        command, env_names = (
            multi_node_command(command, deployment.port, runtime, layout),
            sorted({*env_names, *MULTI_NODE_ENV}),
        )
    return {
        "image": str(deployment.get("image")),
        "port": deployment.port,
        "env_names": env_names,
        "command": command,
        "links": links(host_mounts, task_dir / "artifacts", invocation_id) if runtime == "host" else [],
        "container": f"server-{task.name}-{stamp}",
        "reexport": "",
        "health_url": health_url,
        "launch": launch_command(
            runtime,
            "server",
            str(deployment.get("image")),
            [] if runtime == "host" else mounts,
            env_names,
            options,
            deployment.port,
            layout,
        ),
        "layout": layout if layout.multi else None,
        "health_path": layout.health_check_path or urlsplit(health_url).path,
        "proxy_launch": launch_proxy(runtime, layout) if layout.instances > 1 else "",
    }


MULTI_NODE_ENV = ("MASTER_IP", "ALL_NODE_IPS", "INSTANCE_PORT")  # set by the driver script for every server task


def multi_node_command(command: str, port: int, runtime: str, layout: Layout) -> str:
    """The deployment command as each task of a multi-node server runs it: with the launcher's
    PROC_ID (rank in its instance) and NODES_PER_INSTANCE, and its port the instance's own."""
    if runtime == "docker":
        raise ValueError(
            "execution.runtime docker cannot start one server across nodes or servers on other nodes "
            "(docker run starts a container on this node only); use execution.runtime pyxis, apptainer or host"
        )
    matches = port_arguments(command, port)  # one, or none where the port goes in by env (a NIM's)
    if len(matches) == 1:
        command = f"{command[: matches[0].start()]}{matches[0]['flag']}${{INSTANCE_PORT}}{command[matches[0].end() :]}"
    return f"export PROC_ID=${{SLURM_PROCID:-0}} NODES_PER_INSTANCE={layout.nodes_per_instance}; {command}"


def launch_proxy(runtime: str, layout: Layout) -> str:
    """The command that runs haproxy with $proxy_cfg, on this node (the first of the job)."""
    macros = templates().get_template("runtime-commands.sh.j2").module
    return str(macros.proxy(runtime, layout.proxy_image))


def eval_factory_command(cfg, task, definition: dict, runtime: str, paths: dict[str, str]) -> tuple[Any, str]:
    """The launcher's in-container command (and its readable form), as the runtime runs it.

    On the host, /results and the other mount targets in the evaluation config become real paths,
    and user_config_path is dropped: the launcher would copy the YAML into /results."""
    from nemo_evaluator_launcher.common.helpers import get_eval_factory_command

    if runtime != "host":
        built = get_eval_factory_command(cfg, task, definition)
        # as the local executor: results readable by the user whatever uid the container ran as
        return built, f'{built.cmd} ; exit_code=$?; chmod 777 -R /results; exit "$exit_code"'
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("user_config_path", None)
    evaluation = plain["evaluation"]
    evaluation["nemo_evaluator_config"] = map_container_paths(evaluation.get("nemo_evaluator_config") or {}, paths)
    host_task = map_container_paths(OmegaConf.to_container(task, resolve=True), paths)
    config = host_task.setdefault("nemo_evaluator_config", {}).setdefault("config", {})
    config.setdefault(
        "output_dir", evaluation["nemo_evaluator_config"].get("config", {}).get("output_dir", paths["/results"])
    )
    built = get_eval_factory_command(OmegaConf.create(plain), OmegaConf.create(host_task), definition)
    return built, built.cmd


def add_secrets(cfg, task, plan: dict[str, Any]) -> None:
    """Write .secrets.env (resolved values, mode 600) and the re-export lines, as the local executor."""
    from nemo_evaluator_launcher.common.env_vars import (
        build_reexport_commands,
        collect_deployment_env_vars,
        collect_eval_env_vars,
        collect_exporters_env_vars,
        generate_secrets_env,
    )
    from nemo_evaluator_launcher.common.helpers import get_api_key_name

    groups = {
        plan["uname"]: collect_eval_env_vars(cfg, task, get_api_key_name(cfg)),
        "export": collect_exporters_env_vars(cfg),
    }
    if plan["server"]:
        groups["deployment"] = collect_deployment_env_vars(cfg)
    groups = {name: env for name, env in groups.items() if env}
    if not groups:
        return
    result = generate_secrets_env(groups)
    secrets = Path(plan["dir"]) / ".secrets.env"
    secrets.touch(mode=0o600)
    secrets.write_text(result.secrets_content)
    plan.update(secrets=True, reexport=build_reexport_commands(plan["uname"], result))
    if plan["server"]:
        plan["server"]["reexport"] = build_reexport_commands("deployment", result)


def render_script(tasks: list[dict], runtime: str, reason: str, invocation_id: str, options: Options) -> str:
    """The driver script that runs `tasks` one after another (one task: its run.sh)."""
    return (
        templates()
        .get_template("runtime-run.sh.j2")
        .render(
            tasks=tasks,
            runtime=runtime,
            reason=reason,
            invocation_id=invocation_id,
            readiness_timeout=options.readiness_timeout,
            python=sys.executable,
            python_bin=Path(sys.executable).parent,
        )
    )


def task_commands(launcher: dict[str, Any], runtime: str, layout: Layout = Layout()) -> list[dict[str, Any]]:
    """Per task, the lines the driver script would run in `runtime`; no directory, no secret resolved."""
    from hpc_eval.launcher import import_launcher

    import_launcher()
    from nemo_evaluator_launcher.common.helpers import get_unique_task_name
    from nemo_evaluator_launcher.common.mapping import load_tasks_mapping

    cfg = OmegaConf.create(launcher)
    options, mapping, found = Options.from_config(cfg), load_tasks_mapping(), []
    proxy_on_server_port(cfg, options)
    invocation_dir = Path(cfg.execution.output_dir).absolute() / "<YYYYmmdd_HHMMSS>-<invocation_id>"
    for index, task in enumerate(cfg.evaluation.tasks):
        task_dir = invocation_dir / get_unique_task_name(task.name, index)
        plan = plan_task(
            cfg, task, index, runtime, mapping, task_dir, "<invocation_id>", options, with_command=False, layout=layout
        )
        server = plan["server"] or {}
        found.append(
            {
                "task": task_dir.name,
                "task_dir": str(task_dir),
                "client": plan["launch"],
                "server": server.get("launch"),
                "server_command": server.get("command"),
                "health_url": server.get("health_url"),
            }
        )
    return found
