"""The Slurm allocation a job runs in, from Slurm's own environment: its nodes and this task's rank.

With `slurm.nodes > 1` submitit starts the payload once per node (SLURM_PROCID 0 on the first
node, 1 on the second, ...). Only rank 0 evaluates; the driver script it starts reaches the other
nodes with `srun --overlap --nodelist=...` (templates/runtime-run.sh.j2), so the other ranks have
nothing to do and return at once, leaving their nodes to those steps until the job ends.
"""

from __future__ import annotations

import os
import socket
import subprocess


def rank() -> int:
    """This task's rank in the job step submitit started (0 outside Slurm)."""
    return int(os.environ.get("SLURM_PROCID") or 0)


def job_nodes() -> list[str]:
    """The allocation's nodes in Slurm's order (`scontrol show hostnames $SLURM_JOB_NODELIST`);
    outside Slurm, this host alone."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return [os.environ.get("SLURMD_NODENAME") or socket.gethostname()]
    done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"scontrol show hostnames {nodelist} failed: {done.stderr.strip()}")
    return done.stdout.split()
