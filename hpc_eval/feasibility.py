"""Can the cluster ever run a request? One `sinfo` call per command, read against the Slurm settings.

A request no node of its partition can hold pends forever with reason PartitionConfig, and nothing
tells the user: `check_feasible` refuses it before anything is claimed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpc_eval.errors import ConfigError
from hpc_eval.slurm import SlurmSettings, run_quietly


@dataclass(frozen=True)
class Node:
    """One node of one partition, as `sinfo -N` lists it."""

    partition: str
    name: str
    cpus: int
    memory_mb: int
    gres: str
    default: bool = False

    def gpus(self, kind: str | None = None) -> int:
        """GPUs in the node's GRES (`gpu:2`, `gpu:a100:4(S:0-1)`), of `kind` when given."""
        total = 0
        for item in self.gres.split(","):
            parts = item.split("(")[0].split(":")
            if parts[0] == "gpu" and parts[-1].isdigit() and (kind is None or (len(parts) == 3 and parts[1] == kind)):
                total += int(parts[-1])
        return total


def cluster_nodes() -> tuple[Node, ...] | None:
    """Every (partition, node) from one `sinfo` call; None without an answer.

    Not cached: each command checks once, and a long-lived caller (a notebook, `watch --loop`)
    must see the cluster as it is now, or the cluster its SLURM_CONF names now."""
    output = run_quietly(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G"])
    return None if output is None else parse_sinfo(output)


def parse_sinfo(output: str) -> tuple[Node, ...]:
    nodes = []
    for line in output.splitlines():
        parts = line.split("|")
        if len(parts) != 5 or not parts[2].strip().isdigit():
            continue
        partition, name, cpus, memory, gres = (part.strip() for part in parts)
        nodes.append(
            Node(
                partition.rstrip("*"),
                name,
                int(cpus),
                int(memory.rstrip("+")) if memory.rstrip("+").isdigit() else 0,
                gres,
                partition.endswith("*"),
            )
        )
    return tuple(nodes)


MEMORY_UNITS_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def memory_mb(value: str | int | None) -> int:
    """slurm.mem in megabytes (Slurm's unit when none is given); 0 for none (0 also means "all of it")."""
    if value in (None, ""):
        return 0
    text = str(value).upper()
    unit = text[-1] if text[-1] in MEMORY_UNITS_MB else "M"
    return int(int(text.rstrip("KMGT")) * MEMORY_UNITS_MB[unit])


def check_feasible(settings: SlurmSettings, nodes: tuple[Node, ...] | None = None) -> None:
    """Refuse a request no node of its partition can ever hold (it would pend forever).

    Raises:
        ConfigError: the partition does not exist, or no node has the CPUs, memory or GPUs asked for.
    """
    nodes = cluster_nodes() if nodes is None else nodes
    if not nodes:
        return  # Slurm did not answer: sbatch will say why
    partitions = (
        settings.partition.split(",") if settings.partition else sorted({n.partition for n in nodes if n.default})
    )
    label = settings.partition or (partitions[0] if partitions else "(default)")
    members = [node for node in nodes if node.partition in partitions]
    if not members:
        names = ", ".join(sorted({node.partition for node in nodes}))
        raise ConfigError(
            f"slurm.partition={settings.partition}: no such partition on this cluster (it has {names}); set slurm.partition"
            if settings.partition
            else "no default partition on this cluster; set slurm.partition"
        )
    kind, _, count = str(settings.gpus_per_node).rpartition(":")
    wanted = [
        ("cpus_per_task", settings.cpus_per_task, "CPUs", lambda node: node.cpus),
        ("mem", memory_mb(settings.mem), "MB of memory", lambda node: node.memory_mb),
        ("gpus_per_node", int(count), f"{kind} GPUs" if kind else "GPUs", lambda node: node.gpus(kind or None)),
    ]
    for key, amount, unit, has in wanted:
        largest = max(has(node) for node in members)
        if amount > largest:
            raise ConfigError(
                f"slurm.{key}={getattr(settings, key)} but the largest node of partition {label} has "
                f"{largest} {unit}; set slurm.{key}"
            )
    fitting = {node.name for node in members if all(has(node) >= amount for _, amount, _, has in wanted)}
    if len(fitting) < settings.nodes:
        raise ConfigError(
            f"slurm.nodes={settings.nodes} but partition {label} has {len(fitting)} node(s) that can hold "
            f"{settings.cpus_per_task} CPUs, {settings.mem or 'any'} memory and {settings.gpus_per_node} GPUs together; "
            "set slurm.nodes or the request"
        )
