"""The model server's port: one per evaluation, chosen on the node where the evaluation runs.

Evaluations that share a node (array tasks packed onto one 8-GPU node, two submits) would all
start their servers on the config's `deployment.port`: the second cannot bind, and its readiness
check and requests reach the first one's server. So the payload picks a free port when the job
starts and puts it into the config it hands to the launcher (`with_port`). The saved config holds
the resolved server command, where `${deployment.port}` is already a number: the port is found
there as a port argument (`--port N`, `--port=N`, `:N`, `..._PORT=N`), or, when there is none, as
the one word of the command that is the number (`serve.py ${deployment.port}`). `check_port` makes
sure at submit time that exactly one such place exists. A NIM takes its port from the environment
(`NIM_SERVER_PORT`, its documented setting), not from its command.
"""

from __future__ import annotations

import copy
import re
import socket
from typing import Any

# A port argument, before the number: --port N, --port=N, --http-port N, host:N, NIM_SERVER_PORT=N
PORT_ARGUMENT = r"(?:(?<![\w-])--(?:[\w-]*-)?port[ =]|\b[A-Z_]*PORT=|:)"
WORD_BEFORE, WORD_AFTER = r"(?<![^\s'\"])", r"(?![^\s'\";)])"  # a whole word of the shell command


class PortError(ValueError):
    """The server command does not carry deployment.port exactly once as a port argument."""


def serves(launcher: dict[str, Any]) -> bool:
    return (launcher.get("deployment") or {}).get("type", "none") != "none"


def port_arguments(command: str, port: int) -> list[re.Match]:
    """Each place where `command` passes `port` as a port argument; else each word that is `port`."""
    flagged = list(re.finditer(rf"(?P<flag>{PORT_ARGUMENT}['\"]?){port}(?!\d)", command))
    return flagged or list(re.finditer(rf"(?P<flag>){WORD_BEFORE}{port}{WORD_AFTER}", command))


def takes_port_from_env(launcher: dict[str, Any]) -> bool:
    return (launcher.get("deployment") or {}).get("type") == "nim"


def check_port(launcher: dict[str, Any]) -> None:
    """Raise PortError unless the server command carries deployment.port exactly once as a port argument."""
    if not serves(launcher) or takes_port_from_env(launcher):
        return
    deployment = launcher["deployment"]
    port, command = deployment.get("port"), str(deployment.get("command") or "")
    found = len(port_arguments(command, port)) if isinstance(port, int) else 0
    if found != 1:
        where = "does not pass it" if found == 0 else f"passes it {found} times"
        raise PortError(
            f"deployment.command {where} as a port argument or a word of its own (deployment.port is {port!r}); each evaluation gets its own "
            f"port on the node, so write the port as ${{deployment.port}} exactly once in the command, e.g. --port ${{deployment.port}}"
        )


def with_port(launcher: dict[str, Any], port: int) -> dict[str, Any]:
    """A copy of the launcher config whose server listens on `port`: deployment.port and the command.

    The launcher derives the health and endpoint URLs from deployment.port."""
    check_port(launcher)
    changed = copy.deepcopy(launcher)
    deployment = changed["deployment"]
    if takes_port_from_env(launcher):
        deployment["env_vars"] = {**(deployment.get("env_vars") or {}), "NIM_SERVER_PORT": f"lit:{port}"}
        deployment["port"] = port
        return changed
    (match,) = port_arguments(str(deployment["command"]), deployment["port"])
    command = str(deployment["command"])
    deployment["command"] = f"{command[: match.start()]}{match['flag']}{port}{command[match.end() :]}"
    deployment["port"] = port
    return changed


def free_port() -> int:
    """A TCP port nothing on this node listens on now, on any interface (servers bind 0.0.0.0)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
