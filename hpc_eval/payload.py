"""What runs inside the Slurm job: evaluate one evaluation directory with the launcher's run_eval.

`run_eval` returns as soon as the launcher has started its scripts, so the payload waits for
them (blocking `waitpid`, no polling), collects every task's `results.yml` into `summary.json`,
and fails the job when any task failed. On scancel (SIGTERM), a time limit or preemption (USR2,
raised by submitit inside the wait) it stops everything the launcher started, within Slurm's
KillWait: the launcher's own kill leaves server containers behind and is too slow.

Imports nothing from the CLI; the launcher is imported only after its environment is set.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from hpc_eval import allocation, identity
from hpc_eval.cleanup import child_sessions, kill_containers, wait_for_scripts
from hpc_eval.errors import EvaluationFailed
from hpc_eval.executor_scripts import remove_links
from hpc_eval.launcher_tree import find_invocation_dir, task_outcome
from hpc_eval.store import EvalPaths, now_iso, read_json, write_json

CLEANUP_BUDGET_S = 4.0  # Slurm's KillWait is 30 s by default, 5 s on the local test cluster
# A resumed attempt has no KillWait to race: its removals must end before the scripts reuse the
# names, or `docker run --name` meets the old container (or our `rm` removes the new one).
RESUME_CLEANUP_BUDGET_S = 120.0


class Terminated(BaseException):
    """SIGTERM reached the payload (scancel, or Slurm ending the job)."""


class Evaluation:
    """The callable submitit runs: one evaluation directory per call.

    Having `checkpoint` makes submitit requeue the job on a time limit or preemption (bounded by
    the executor's max_num_timeout); the next attempt resumes the same launcher invocation.
    """

    def __call__(self, eval_dir: str) -> dict[str, Any]:
        return run(Path(eval_dir))

    def checkpoint(self, eval_dir: str):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, eval_dir)


def run(eval_dir: Path) -> dict[str, Any]:
    """Evaluate `eval_dir` (its launcher_config.yaml) and write its summary.json.

    Raises:
        EvaluationFailed: the checkpoint vanished or a task failed (the job then ends FAILED).
    """
    if allocation.rank() != 0:  # another node of a multi-node job: rank 0's srun steps use it
        return {
            "rank": allocation.rank(),
            "node": os.environ.get("SLURMD_NODENAME"),
            "role": "hosts the steps rank 0 starts",
        }
    # from the first line: Slurm signals a job whose time limit is under the signal delay at once,
    # and a preemption can come at any time; during the launcher's import it left no summary
    with Signals() as signals:
        return evaluate(eval_dir, signals)


def evaluate(eval_dir: Path, signals: Signals) -> dict[str, Any]:
    paths = EvalPaths(eval_dir)
    request = paths.read_request()
    summary = {"started_at": now_iso(), "dry_run": request.get("dry_run", False), **job_facts()}
    start = time.monotonic()

    checkpoint = request.get("checkpoint")
    if checkpoint and not os.path.isdir(checkpoint):
        reason = f"checkpoint vanished: {checkpoint} no longer exists (deleted by the training run's retention?)"
        finish(paths, summary, start, "FAILED", reason=reason, failure="checkpoint_missing")
        raise EvaluationFailed(reason)
    change = (
        identity.fingerprint_change(request.get("fingerprint"), identity.fingerprint(checkpoint)) if checkpoint else ""
    )
    if change:  # a run relaunched into the same directory wrote this step again: not what was submitted
        reason = f"checkpoint rewritten since submit: {checkpoint} ({change}); not evaluated: submit it again to evaluate the new weights"
        finish(paths, summary, start, "FAILED", reason=reason, failure="checkpoint_changed")
        raise EvaluationFailed(reason)

    launcher = start_launcher(paths)
    with harness_temp_dir():
        try:
            cfg, port = launcher.load_config(paths.launcher_config)
            invocation = launcher.start(cfg, paths, port, dry_run=summary["dry_run"], tasks=request.get("task_filters"))
        except Exception as error:  # the launcher refused the config or could not start its scripts
            reason = f"run_eval failed: {type(error).__name__}: {' '.join(str(error).split())}"
            finish(paths, summary, start, "FAILED", reason=reason, failure="launcher_error")
            raise EvaluationFailed(reason) from error
        summary["invocation_id"] = invocation.id
        summary["server_port"] = invocation.server_port
        summary["invocation_dir"] = str(invocation.directory) if invocation.directory else None
        if summary["dry_run"]:
            summary["scripts"] = (
                sorted(str(p) for p in invocation.directory.rglob("*.sh")) if invocation.directory else []
            )
            return finish(
                paths, summary, start, "COMPLETED", reason="launcher dry run: scripts written, nothing evaluated"
            )

        try:
            signals.act()  # a signal that came while the launcher started acts now, its invocation saved
            wait_for_scripts(invocation.sessions)
            signals.ignore()  # the scripts are done: what is left is to report
        except BaseException as stop:  # noqa: BLE001 - every way out of the wait must clean up
            signals.ignore()  # Slurm's TERM to every process of the step must not cut the clean-up short
            summary["cleanup"] = launcher.stop(invocation)
            state, reason = interruption(stop)
            finish(paths, summary, start, state, reason=reason, tasks=launcher.collect(invocation))
            raise
        finally:
            remove_links(invocation.id)

    tasks = launcher.collect(invocation)
    failed = {name: task for name, task in tasks.items() if task["status"] != "success"}
    if failed:
        reason = "; ".join(f"{name}: {task['reason']}" for name, task in sorted(failed.items()))
        finish(paths, summary, start, "FAILED", reason=reason, failure="task_failed", tasks=tasks)
        raise EvaluationFailed(reason)
    finish(paths, summary, start, "COMPLETED", tasks=tasks)
    return export_scores(paths, summary)


def export_scores(paths: EvalPaths, summary: dict) -> dict[str, Any]:
    """W&B/MLflow export at step = iteration when execution.auto_export names them; a failure is
    recorded in summary.json and never fails the evaluation."""
    from hpc_eval.export import export_finished

    exported = export_finished(paths.root)
    if exported is not None:
        summary["export"] = exported
        write_json(paths.summary, summary)
    return summary


def job_facts() -> dict[str, Any]:
    """The Slurm job this attempt runs in (array tasks as A_a)."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")
    return {
        "slurm_job_id": job_id,
        "node": os.environ.get("SLURMD_NODENAME"),
        "nodes": allocation.job_nodes() if os.environ.get("SLURM_JOB_NODELIST") else None,
        "attempt": int(os.environ.get("SLURM_RESTART_COUNT") or 0) + 1,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def finish(paths: EvalPaths, summary: dict, start: float, state: str, **fields: Any) -> dict[str, Any]:
    summary.update(fields, state=state, ended_at=now_iso(), duration_s=round(time.monotonic() - start, 2))
    write_json(paths.summary, summary)
    return summary


def interruption(stop: BaseException) -> tuple[str, str]:
    """The summary state for an exception that ended the wait."""
    name = type(stop).__name__
    if isinstance(stop, Terminated):
        return "CANCELLED", "terminated (scancel or the end of the job): everything the launcher started was stopped"
    if isinstance(stop, SystemExit):
        return "REQUEUED", "time limit or preemption: requeued, the next attempt resumes the same invocation"
    if name == "UncompletedJobError":
        return "TIMEOUT", f"time limit or preemption, not requeued: {stop}"
    return "FAILED", f"payload error while waiting: {name}: {stop}"


class Signals:
    """TERM and USR2 while the payload runs, so that every way out saves its state and cleans up.

    submitit handles USR2 (time limit, preemption): it requeues the job with `scontrol requeue`
    and exits (SystemExit), or raises UncompletedJobError. The requeue makes Slurm send TERM to
    the job, which can arrive inside that handler: that TERM is part of the requeue, not a cancel.
    From the payload's first line until the launcher has started (`act`), both signals wait, so
    that every attempt writes its summary, a requeued job finds its invocation saved and no script
    is left running unrecorded.
    """

    def __enter__(self) -> Signals:
        self.mode, self.pending, self.requeueing = "defer", [], False
        self.submitit_usr2 = signal.getsignal(signal.SIGUSR2)
        self.previous = {signum: signal.signal(signum, self.handle) for signum in (signal.SIGTERM, signal.SIGUSR2)}
        return self

    def __exit__(self, *_) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def act(self) -> None:
        """From now on a signal acts at once; one that came earlier acts now."""
        self.mode = "raise"
        for signum, frame in self.pending:
            self.handle(signum, frame)

    def ignore(self) -> None:
        self.mode = "ignore"

    def handle(self, signum, frame) -> None:
        if self.mode == "defer":
            self.pending.append((signum, frame))
        elif self.mode == "ignore" or (signum == signal.SIGTERM and self.requeueing):
            return
        elif signum == signal.SIGTERM:
            raise Terminated("SIGTERM")
        elif callable(self.submitit_usr2):
            self.requeueing = True  # until the process exits: the requeue's TERM may come at any time
            self.submitit_usr2(signum, frame)  # raises SystemExit (requeued) or UncompletedJobError


@contextlib.contextmanager
def harness_temp_dir():
    """A temp dir for this attempt as TMPDIR of everything the launcher starts, removed on every exit:
    nemo-evaluator writes each harness command to a script in a TemporaryDirectory, which a
    killed harness leaves in the node's /tmp."""
    previous = os.environ.get("TMPDIR")
    path = tempfile.mkdtemp(prefix=f"hpc-eval-{os.getuid()}-job{os.environ.get('SLURM_JOB_ID', '')}-")
    os.environ["TMPDIR"] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous


def start_launcher(paths: EvalPaths) -> Launcher:
    """Set what the launcher reads at import time, then import it."""
    os.environ.setdefault("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")
    os.environ["NEMO_EVALUATOR_EXEC_DB_FILE"] = str(paths.launcher_state / "exec-db" / "exec.v1.jsonl")
    from hpc_eval.launcher import import_launcher

    paths.launcher_state.mkdir(exist_ok=True)
    import_launcher(paths.launcher_state)
    from hpc_eval.executor import register

    register()  # execution.type: hpc_eval (docker, pyxis, apptainer or no container)
    return Launcher()


class Invocation:
    """One launcher invocation in this job: its id, directory, task dirs and script sessions."""

    def __init__(
        self,
        invocation_id: str,
        directory: Path | None,
        task_dirs: dict[str, Path],
        sessions: list[int],
        server_port: int | None = None,
    ):
        self.id, self.directory, self.task_dirs, self.sessions = invocation_id, directory, task_dirs, sessions
        self.server_port = server_port


class Launcher:
    """The launcher calls the payload makes, in one place."""

    def load_config(self, path: Path) -> tuple[Any, int | None]:
        """The saved config, its model server moved to a port free on this node: (config, port).

        Evaluations sharing the node would otherwise all use the config's deployment.port."""
        import yaml
        from nemo_evaluator_launcher.api.types import RunConfig
        from omegaconf import OmegaConf

        from hpc_eval.ports import free_port, serves, with_port

        launcher = yaml.safe_load(path.read_text())
        port = free_port() if serves(launcher) else None
        return RunConfig(OmegaConf.create(with_port(launcher, port) if port else launcher)), port

    def start(self, cfg, paths: EvalPaths, port: int | None, *, dry_run: bool, tasks: list[str] | None) -> Invocation:
        """run_eval, or resume_eval of the invocation an earlier attempt of this job started.

        A resumed invocation runs its scripts again, on the server port its first attempt chose."""
        from nemo_evaluator_launcher.api.functional import resume_eval, run_eval
        from nemo_evaluator_launcher.common.execdb import ExecutionDB

        state = read_json(paths.payload_state) or {}
        previous = state.get("invocation_id")
        if previous and not dry_run and ExecutionDB().get_jobs(previous):
            # containers outlive an attempt killed before its clean-up (a time-limit signal that came
            # late): remove them, or the resumed scripts fail on their names
            earlier = Invocation(previous, find_invocation_dir(cfg.execution.output_dir, previous), {}, [])
            kill_containers(container_names(earlier), RESUME_CLEANUP_BUDGET_S)
            invocation_id, port = resume_eval(previous), state.get("server_port")
        else:
            invocation_id = run_eval(cfg, dry_run=dry_run, tasks=tasks)
            write_json(paths.payload_state, {"invocation_id": invocation_id, "server_port": port})
        sessions = child_sessions()
        jobs = ExecutionDB().get_jobs(invocation_id)
        task_dirs = {job.data["output_dir"].rsplit("/", 1)[-1]: Path(job.data["output_dir"]) for job in jobs.values()}
        directory = find_invocation_dir(cfg.execution.output_dir, invocation_id)
        for secrets in directory.rglob(".secrets.env") if directory else []:
            secrets.chmod(0o600)  # the launcher writes the resolved secrets readable by everyone
        return Invocation(invocation_id, directory, task_dirs, sessions, port)

    def collect(self, invocation: Invocation) -> dict[str, dict[str, Any]]:
        """Each task's status, exit code and metrics; only trust results.yml when stage.exit is 0."""
        return {name: task_outcome(directory) for name, directory in sorted(invocation.task_dirs.items())}

    def stop(self, invocation: Invocation) -> dict[str, Any]:
        """Stop everything the invocation started, fastest first, within CLEANUP_BUDGET_S."""
        from nemo_evaluator_launcher.api.functional import kill_job_or_invocation

        started = time.monotonic()
        for session in invocation.sessions:  # no script may go on to its next step or task
            try:
                os.killpg(session, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        names = container_names(invocation)
        kill_containers(names, budget_s=CLEANUP_BUDGET_S / 2)
        report: dict[str, Any] = {"sessions_killed": invocation.sessions, "containers_killed": names}
        if time.monotonic() - started < CLEANUP_BUDGET_S / 2:
            try:  # marks the jobs killed in the exec DB, so `nel status` agrees
                kill_job_or_invocation(invocation.id)
            except Exception as error:  # noqa: BLE001 - best effort once the processes are gone
                report["launcher_kill_error"] = f"{type(error).__name__}: {error}"
        report["took_s"] = round(time.monotonic() - started, 2)
        return report


def container_names(invocation: Invocation) -> list[str]:
    """Client containers (named in the exec DB) and server containers (named only in the scripts)."""
    from nemo_evaluator_launcher.common.execdb import ExecutionDB

    names = {job.data.get("container") for job in ExecutionDB().get_jobs(invocation.id).values()}
    for script in invocation.directory.rglob("run*.sh") if invocation.directory else []:
        names.update(re.findall(r'^\s*SERVER_CONTAINER_NAME="?([\w.-]+)"?', script.read_text(), re.M))
    return sorted(name for name in names if name)
