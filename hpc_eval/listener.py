"""Is the process listening on a TCP port the model server this evaluation started?

An answer to the readiness check proves only that something serves the port; on a shared node it
can be another evaluation's server (the served model name is the same for every task of an array).
The driver script (templates/runtime-run.sh.j2) asks, once the health URL answers:

    python -m hpc_eval.listener PORT SERVER_PID RUNTIME [CONTAINER]

exit 0: ours; exit 1: not ours, with the reason on stdout. The listening socket's inode comes from
/proc/net/tcp{,6}, its owner from /proc/PID/fd. Ours is, by runtime:
  host, apptainer  the owner is SERVER_PID or one of its descendants
  pyxis            the owner runs in this Slurm job (its SLURM_JOB_ID): `srun --overlap` starts the
                   server under slurmstepd, outside the script's process tree
  docker           the owner is in the tree, or it is docker's own proxy (or not visible: docker-proxy
                   runs as root) and `docker port CONTAINER PORT` says this task's container publishes
                   PORT. A port already taken makes `docker run -p` fail at once: the server "dies
                   at start" and the script says so.
"""

from __future__ import annotations

import os
import subprocess
import sys

LISTEN = "0A"


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on `port` in this network namespace, IPv4 and IPv6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def owners(inodes: set[int]) -> set[int]:
    """PIDs holding one of the sockets, among the processes whose fds this user may read."""
    wanted, found = {f"socket:[{inode}]" for inode in inodes}, set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    found.add(int(pid))
                    break
            except OSError:
                continue
    return found


def descendants(root: int) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def slurm_job(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            env = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
    except OSError:
        return None
    job = env.get(b"SLURM_JOB_ID")
    return job.decode() if job else None


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = "?"
    job = slurm_job(pid)
    return f"pid {pid} ({command[:120]}{', Slurm job ' + job if job else ''})"


def publishes(container: str, port: int) -> bool:
    try:
        done = subprocess.run(["docker", "port", container, str(port)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() != ""


def verdict(port: int, server_pid: int, runtime: str, container: str | None = None) -> str | None:
    """None when the listener on `port` is this evaluation's server, else why not."""
    inodes = listening_inodes(port)
    pids = owners(inodes)
    if pids & descendants(server_pid):
        return None
    job = os.environ.get("SLURM_JOB_ID")
    if runtime == "pyxis" and job and any(slurm_job(pid) == job for pid in pids):
        return None
    if (
        runtime == "docker"
        and container
        and all(command_name(pid) == "docker-proxy" for pid in pids)
        and publishes(container, port)
    ):
        return None
    if not inodes:
        return f"port {port} answers, but nothing listens on it in this network namespace: not this evaluation's server"
    held_by = ", ".join(describe(pid) for pid in sorted(pids)) or "a process this user cannot see"
    return f"port {port} is served by {held_by}, not by this evaluation's server (pid {server_pid} and its children)"


def main(argv: list[str]) -> int:
    port, server_pid, runtime = int(argv[1]), int(argv[2]), argv[3]
    reason = verdict(port, server_pid, runtime, argv[4] if len(argv) > 4 else None)
    if reason:
        print(reason, flush=True)
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
