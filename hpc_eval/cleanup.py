"""What an evaluation leaves running when it stops: the launcher's script sessions and their containers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

SCRIPT_EXIT_GRACE_S = 0.5  # a script writes stage.exit as its very last act


def wait_for_scripts(sessions: list[int]) -> None:
    """Block until every script the launcher started has exited."""
    for pid in sessions:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # already reaped by the subprocess module's own cleanup
            while os.path.exists(f"/proc/{pid}") and not is_zombie(pid):
                time.sleep(1.0)
    time.sleep(SCRIPT_EXIT_GRACE_S)


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def child_sessions() -> list[int]:
    """Direct children of this process that lead their own session: the launcher's scripts."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, sid = int(fields[1]), int(fields[3])
        if ppid == me and sid == int(entry):
            found.append(int(entry))
    return sorted(found)


KILL_THEN_REMOVE = """docker kill "$1"; docker wait "$1"; docker rm "$1"
tries=0
while docker container inspect "$1" >/dev/null 2>&1 && [ $((tries += 1)) -le 150 ]; do
    sleep 0.2; docker rm "$1"
done"""


def kill_containers(names: list[str], budget_s: float) -> None:
    """`docker kill` then `docker rm`, each name in parallel: `docker stop` waits 10 s when PID 1
    ignores TERM (and nemo-evaluator takes 30 s to stop on TERM), and podman's `rm -f` stops first
    (~10 s); kill then rm takes well under a second on both. Removed, so that a resumed attempt can
    reuse the launcher's container names."""
    if not names or not shutil.which("docker"):
        return
    # Slurm sends SIGTERM to every process of the step while we clean up: the removals ignore it.
    # `kill` returns once the signal is sent: `rm` of a container not yet dead fails, so wait first.
    # An earlier attempt's clean-up can outlive its job and be removing the same container: our
    # `rm` then fails at once, so wait (up to 30 s) until the name is really free.
    kills = [
        subprocess.Popen(
            ["sh", "-c", KILL_THEN_REMOVE, "kill-then-rm", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=ignore_sigterm,
        )
        for name in names
    ]
    deadline = time.monotonic() + budget_s
    for kill in kills:
        try:
            kill.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
