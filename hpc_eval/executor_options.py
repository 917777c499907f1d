"""The `execution` keys the hpc_eval executor reads (`Options`), and the model server's shape across nodes (`Layout`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from hpc_eval.resources import RUNTIME_CHOICES


@dataclass(frozen=True)
class Options:
    """The `execution` keys this executor reads: the local executor's, plus `runtime`."""

    runtime: str = "auto"
    sequential: bool = True
    readiness_timeout: int = 600
    extra_docker_args: str = ""
    mount_home: bool = False  # as --no-container-mount-home / --no-home unless asked for
    deployment_mounts: dict = field(default_factory=dict)
    evaluation_mounts: dict = field(default_factory=dict)
    # the launcher slurm executor's multi-node keys: execution.num_nodes (None: the allocation's
    # nodes), num_instances, deployment.n_tasks (all instances' server tasks), proxy
    num_nodes: int | None = None
    num_instances: int = 1
    n_tasks: int | None = None
    proxy: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg) -> Options:
        execution, mounts = cfg.execution, cfg.execution.get("mounts") or {}
        mode = execution.get("mode", "sequential")
        if mode not in ("sequential", "parallel"):
            raise ValueError(f"unknown execution mode: {mode!r}. Choose one of ['parallel', 'sequential']")
        if mode == "parallel" and cfg.deployment.type != "none":
            raise ValueError(
                f"Execution mode 'parallel' is not supported with deployment type: {cfg.deployment.type}. Use 'sequential' instead."
            )
        runtime = execution.get("runtime", "auto")
        if runtime not in RUNTIME_CHOICES:
            raise ValueError(f"execution.runtime: {runtime!r} is not one of {list(RUNTIME_CHOICES)}")
        proxy = OmegaConf.to_container(execution.proxy) if execution.get("proxy") else {}
        if proxy.get("type", "haproxy") != "haproxy":
            raise ValueError(f"Unsupported proxy type: {proxy['type']}. Currently only 'haproxy' is supported.")
        num_nodes, n_tasks = execution.get("num_nodes"), (execution.get("deployment") or {}).get("n_tasks")
        return cls(
            runtime,
            mode == "sequential",
            int(execution.get("endpoint_readiness_timeout") or 600),
            str(execution.get("extra_docker_args") or ""),
            bool(mounts.get("mount_home", False)),
            dict(mounts.get("deployment") or {}),
            dict(mounts.get("evaluation") or {}),
            int(num_nodes) if num_nodes else None,
            int(execution.get("num_instances") or 1),
            int(n_tasks) if n_tasks else None,
            proxy,
        )

    @property
    def docker_network_given(self) -> bool:
        return bool(re.search(r"--net(work)?\b", self.extra_docker_args))

    def layout(self, allocation_nodes: int) -> Layout:
        """How the server spreads over the nodes, as the launcher's slurm executor spreads it."""
        nodes = self.num_nodes or allocation_nodes
        if nodes % self.num_instances:
            raise ValueError(
                f"execution.num_nodes ({nodes}) must be divisible by execution.num_instances ({self.num_instances})"
            )
        if nodes > allocation_nodes:
            raise ValueError(
                f"execution.num_nodes is {nodes} but the job has {allocation_nodes} node(s): set slurm.nodes={nodes}"
            )
        per_instance = nodes // self.num_instances
        tasks_per_node = max(1, (self.n_tasks or nodes) // self.num_instances // per_instance)
        config = self.proxy.get("config") or {}
        return Layout(
            self.num_instances,
            per_instance,
            tasks_per_node,
            str(self.proxy.get("image") or "haproxy:latest"),
            str(config.get("health_check_path") or ""),
            int(config.get("health_check_status") or 200),
        )


@dataclass(frozen=True)
class Layout:
    """The model server's shape: `instances` servers of `nodes_per_instance` nodes each, behind haproxy when more than one."""

    instances: int = 1
    nodes_per_instance: int = 1
    tasks_per_node: int = 1
    proxy_image: str = "haproxy:latest"
    health_check_path: str = ""  # "": the deployment's health endpoint
    health_check_status: int = 200

    @property
    def multi(self) -> bool:
        return self.instances > 1 or self.nodes_per_instance > 1


def proxy_on_server_port(cfg, options: Options) -> None:
    """With several instances the launcher's client talks to proxy.config.haproxy_port: make it the
    port the job chose for the server (deployment.port), where our haproxy listens."""
    if options.num_instances > 1 and cfg.deployment.type != "none":
        OmegaConf.update(cfg, "execution.proxy.config.haproxy_port", cfg.deployment.port, force_add=True)
