"""The `hpc_eval` launcher executor: the launcher's tasks, run inside the current Slurm allocation.

The launcher's `local` executor needs a docker daemon, which most Slurm GPU nodes lack. This
executor keeps the launcher's task semantics (its in-container command, output layout, env-var
prefixes, readiness check and exec DB records) and lets `execution.runtime` choose how the model
server and the evaluation client run:

  docker     the local executor's `docker run`s, but the server gets the job's GPUs, not all
  pyxis      `srun --overlap --container-image=...` steps, laid out as the launcher's Slurm executor
  apptainer  `apptainer exec` of docker:// images or a .sif file
  host       no container: the launcher's command runs in the job's Python environment, with the
             container paths (/results, /checkpoint, mount targets) mapped to the real ones
  auto       docker when a daemon answers, else pyxis, else apptainer, else host (the default)

`register()` makes `execution.type: hpc_eval` known to `run_eval` (nothing registers at import).
Each task's plan, commands and driver script come from executor_scripts.py and templates/runtime-*;
`preview` shows each runtime's commands for `hpc-eval submit --dry-run`, with no side effects.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hpc_eval.allocation import job_nodes
from hpc_eval.executor_options import Layout, Options, proxy_on_server_port
from hpc_eval.executor_scripts import add_secrets, plan_task, render_script, task_commands
from hpc_eval.launcher_tree import clear_stages, is_running, new_invocation_dir, read_stage_exit, was_interrupted
from hpc_eval.ports import serves
from hpc_eval.resources import RUNTIMES
from hpc_eval.store import write_json

EXECUTOR = "hpc_eval"
PROBE_TIMEOUT_S = 5.0  # `docker info` hangs when a daemon is wedged
STARTUP_CHECK_S = 0.3  # the launcher's check for scripts that fail at once


def register() -> None:
    """Make `execution.type: hpc_eval` known to the launcher's `run_eval` (idempotent)."""
    from hpc_eval.launcher import import_launcher

    import_launcher()
    from nemo_evaluator_launcher.executors.registry import register_executor

    register_executor(EXECUTOR)(executor_class())


@functools.cache
def executor_class() -> type:
    """The BaseExecutor subclass, built on first use so that importing this module imports no launcher."""
    from nemo_evaluator_launcher.executors.base import BaseExecutor

    class HpcEvalExecutor(BaseExecutor):
        execute_eval = staticmethod(execute_eval)
        get_status = staticmethod(get_status)
        kill_job = staticmethod(kill_job)

        @classmethod
        def resume_invocation(cls, invocation_id: str, jobs: dict) -> None:
            resume_invocation(jobs)

    return HpcEvalExecutor


def choose_runtime(requested: str, needs_image: bool = False) -> tuple[str, str]:
    """(runtime, why): the requested one, or with `auto` the first that this node can run.

    A deployment that needs its image (every type but none) never falls back to `host`, which
    cannot run an image: without a container runtime the job fails at once, saying what was tried.
    """
    if requested != "auto":
        return requested, "execution.runtime"
    if shutil.which("docker") and probe(["docker", "info"]) is not None:
        return "docker", "auto: a docker daemon answers `docker info`"
    if shutil.which("srun") and "--container-image" in (probe(["srun", "--help"]) or ""):
        return "pyxis", "auto: no docker daemon; `srun --help` knows --container-image (pyxis)"
    if shutil.which("apptainer"):
        return "apptainer", "auto: no docker daemon, no pyxis; apptainer is on PATH"
    if needs_image:
        raise RuntimeError(
            f"no container runtime on node {os.uname().nodename} for the deployment's image: tried docker (no daemon answers "
            f"`docker info`), pyxis (`srun --help` lists no --container-image), apptainer (not on PATH); "
            f"run on a node that has one, or set execution.runtime"
        )
    return "host", "auto: no docker daemon, no pyxis, no apptainer"


def probe(argv: list[str]) -> str | None:
    """The command's output when it succeeds within PROBE_TIMEOUT_S, else None."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout + done.stderr if done.returncode == 0 else None


def execute_eval(cfg, dry_run: bool = False) -> str:
    """Write the scripts (and .secrets.env), record the jobs, start the driver script(s); return the invocation id.

    A dry run writes everything and starts nothing."""
    from nemo_evaluator_launcher.common.execdb import generate_invocation_id
    from nemo_evaluator_launcher.common.helpers import (
        check_unlisted_tasks_safeguard,
        get_timestamp_string,
        get_unique_task_name,
    )
    from nemo_evaluator_launcher.common.mapping import load_tasks_mapping

    options = Options.from_config(cfg)
    runtime, reason = choose_runtime(options.runtime, cfg.deployment.type != "none")
    print(f"hpc_eval executor: runtime {runtime} ({reason})", flush=True)
    invocation_id = generate_invocation_id()
    invocation_dir = new_invocation_dir(
        cfg.execution.output_dir, get_timestamp_string(include_microseconds=False), invocation_id
    )
    invocation_dir.mkdir(parents=True, exist_ok=True)
    proxy_on_server_port(cfg, options)
    nodes = job_nodes()
    layout = options.layout(len(nodes)) if cfg.deployment.type != "none" else Layout()
    spread = {"nodes": nodes, "layout": dataclasses.asdict(layout)} if layout.multi else {}
    write_json(invocation_dir / "runtime.json", {"runtime": runtime, "reason": reason, **spread})
    mapping, tasks = load_tasks_mapping(), []
    for index, task in enumerate(cfg.evaluation.tasks):
        task_dir = invocation_dir / get_unique_task_name(task.name, index)
        task_dir.mkdir(exist_ok=True)
        tasks.append(plan_task(cfg, task, index, runtime, mapping, task_dir, invocation_id, options, layout=layout))
        add_secrets(cfg, task, tasks[-1])
        (task_dir / "run.sh").write_text(render_script(tasks[-1:], runtime, reason, invocation_id, options))
    if options.sequential:
        (invocation_dir / "run_all.sequential.sh").write_text(
            render_script(tasks, runtime, reason, invocation_id, options)
        )
    check_unlisted_tasks_safeguard([task["name"] for task in tasks if task["unlisted"]], dry_run=dry_run)
    if dry_run:
        print(f"DRY RUN: scripts written to {invocation_dir}; nothing started", flush=True)
        return invocation_id
    if any(task["unsafe"] for task in tasks) and os.environ.get("NEMO_EVALUATOR_TRUST_PRE_CMD") != "1":
        raise AttributeError(
            "Untrusted command found in config, make sure you trust and set NEMO_EVALUATOR_TRUST_PRE_CMD=1."
        )
    record_jobs(cfg, invocation_id, tasks, runtime, reason)
    start_scripts(invocation_dir, [Path(task["dir"]) for task in tasks], options.sequential)
    return invocation_id


def record_jobs(cfg, invocation_id: str, tasks: list[dict], runtime: str, reason: str) -> None:
    """Exec DB records the payload (task dirs) and `nel status` read; container names for docker."""
    from nemo_evaluator_launcher.common.execdb import ExecutionDB, JobData

    db = ExecutionDB()
    for task in tasks:
        data = {"output_dir": task["dir"], "runtime": runtime, "runtime_reason": reason, "eval_image": task["image"]}
        if runtime == "docker":
            data.update(container=task["container"], server_container=(task["server"] or {}).get("container"))
        db.write_job(JobData(invocation_id, task["job_id"], time.time(), EXECUTOR, data, OmegaConf.to_object(cfg)))


def start_scripts(invocation_dir: Path, task_dirs: list[Path], sequential: bool) -> None:
    """Start the driver script(s), each leading its own session, as children of this process.

    The payload finds them as its child sessions, waits for them, and kills them on cancel."""
    targets = (
        [(invocation_dir, "run_all.sequential.sh")] if sequential else [(task_dir, "run.sh") for task_dir in task_dirs]
    )
    started = [subprocess.Popen(["bash", script], cwd=cwd, start_new_session=True) for cwd, script in targets]
    time.sleep(STARTUP_CHECK_S)
    for (cwd, script), process in zip(targets, started):
        if process.poll() not in (None, 0):
            raise RuntimeError(f"Job startup failed | {cwd / script} exited with code {process.returncode}")


def get_status(id: str) -> list:
    """Task states from the stage files, as the local executor reads them."""
    from nemo_evaluator_launcher.common.execdb import ExecutionDB
    from nemo_evaluator_launcher.executors.base import ExecutionState, ExecutionStatus

    db = ExecutionDB()
    if "." not in id:
        return [status for job_id in db.get_jobs(id) for status in get_status(job_id)]
    job = db.get_job(id)
    if job is None or job.executor != EXECUTOR:
        return []
    task_dir = Path(job.data["output_dir"])
    code = read_stage_exit(task_dir)
    if job.data.get("killed") or (code is not None and was_interrupted(task_dir)):
        state = ExecutionState.KILLED
    elif code is not None:
        state = ExecutionState.SUCCESS if code == 0 else ExecutionState.FAILED
    else:
        state = ExecutionState.RUNNING if is_running(task_dir) else ExecutionState.PENDING
    return [ExecutionStatus(id=id, state=state)]


def kill_job(job_id: str) -> None:
    """Mark a job killed; with docker, also kill its containers (they live outside the Slurm job).

    The scripts and every non-docker process live in the job: the payload kills their sessions."""
    from nemo_evaluator_launcher.common.execdb import ExecutionDB

    db = ExecutionDB()
    job = db.get_job(job_id)
    if job is None or job.executor != EXECUTOR:
        raise ValueError(f"Job {job_id} not found")
    for name in filter(None, (job.data.get("container"), job.data.get("server_container"))):
        if shutil.which("docker"):
            subprocess.run(["docker", "kill", name], capture_output=True, timeout=30)
    job.data["killed"] = True
    db.write_job(job)


def resume_invocation(jobs: dict) -> None:
    """Run an invocation's scripts again (a requeued job); the response cache keeps finished requests."""
    from nemo_evaluator_launcher.common.execdb import ExecutionDB

    task_dirs = [Path(job.data["output_dir"]) for job in jobs.values()]
    for task_dir in task_dirs:
        clear_stages(task_dir)
    invocation_dir = task_dirs[0].parent
    start_scripts(invocation_dir, task_dirs, (invocation_dir / "run_all.sequential.sh").exists())
    db = ExecutionDB()
    for job in jobs.values():
        job.data.pop("killed", None)
        job.data["resumed_at"] = time.time()
        db.write_job(job)


def preview(launcher: dict[str, Any]) -> str:
    """`task_commands` of every runtime the job may use, as text for `hpc-eval submit --dry-run`."""
    options = Options.from_config(OmegaConf.create(launcher))
    requested, layout = options.runtime, options.layout(options.num_nodes or options.num_instances)
    lines = [
        f"execution.runtime: {requested}"
        + (" (the job takes the first that works, in this order)" if requested == "auto" else ""),
        "in each task: artifacts_dir=$task_dir/artifacts, and the cwd is work_dir=$task_dir/work",
    ]
    if layout.multi and serves(launcher):
        lines.append(
            f"model server: {layout.instances} instance(s) of {layout.nodes_per_instance} node(s), {layout.tasks_per_node} task(s) per node, "
            f"started with srun on the job's nodes"
            + (
                f"; haproxy in front ({layout.proxy_image} in a container runtime), on the port the job chooses"
                if layout.instances > 1
                else ""
            )
        )
    for runtime in RUNTIMES if requested == "auto" else (requested,):
        lines.append(f"runtime {runtime}:")
        if layout.multi and runtime == "docker":
            lines.append("  (cannot start a server on other nodes: the job fails if it picks docker)")
            continue
        for task in task_commands(launcher, runtime, layout):
            lines.append(f"  task_dir={task['task_dir']}")
            if task["server"]:
                lines += [
                    f"    server: {task['server']}",
                    f"      SERVER_COMMAND={shlex.quote(task['server_command'])}",
                    f"      ready when {task['health_url']} answers 200 from this server's own process",
                    "      (the job moves the server to a port free on its node, in the command and the URL)",
                ]
            results = f"{task['task_dir']}/artifacts" if runtime == "host" else "/results"
            lines += [
                f"    client: {task['client']}",
                f"      EVAL_COMMAND=the launcher's: write config_ef.yaml (output_dir {results}), nemo-evaluator run_eval on it",
            ]
    return "\n".join(lines)


def describe_commands(launcher_config: Path) -> str:
    """`preview` of a saved launcher_config.yaml, or "" when it does not use this executor."""
    launcher = OmegaConf.to_container(OmegaConf.load(launcher_config), resolve=True)
    return preview(launcher) if (launcher.get("execution") or {}).get("type") == EXECUTOR else ""
