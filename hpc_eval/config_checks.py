"""Checks on hostile config input, each failing with one ConfigError line: a YAML file too big,
too deep or an alias bomb (checked on the event stream, before anything is built), variables
that `${oc.env:...}` reads but are unset, line breaks in paths and names."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig

from hpc_eval.errors import ConfigError

# Limits on a config file, checked before it is built: a launcher config is a few kB, 10 levels deep.
MAX_YAML_BYTES = 10 * 2**20
MAX_YAML_DEPTH = 100
MAX_YAML_VALUES = 100_000
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def refuse_line_breaks(value: str, what: str) -> None:
    """A newline or NUL in a path or name would split the shell lines and records it reaches."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise ConfigError(
            f"{what} {value!r} contains a line break or NUL; paths, run names and task names must be one line: rename it"
        )


def check_yaml_shape(text: str, path: Path) -> None:
    """Refuse, from the event stream and before anything is built, YAML nested deeper than
    MAX_YAML_DEPTH (Python would hit its recursion limit) or whose aliases expand to more than
    MAX_YAML_VALUES values (an alias bomb: OmegaConf copies every expansion)."""
    expanded, stack, anchors = 0, [], {}
    for event in yaml.parse(text, Loader=SAFE_LOADER):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append((event.anchor, expanded))
            expanded += 1
            if len(stack) > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{path}:{event.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels; flatten the config"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, start = stack.pop()
            if anchor:
                anchors[anchor] = expanded - start
        elif isinstance(event, yaml.ScalarEvent):
            expanded += 1
            if event.anchor:
                anchors[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            expanded += anchors.get(event.anchor, 1)
        if expanded > MAX_YAML_VALUES:
            raise ConfigError(
                f"{path}:{event.start_mark.line + 1}: the YAML (its aliases expanded) holds over {MAX_YAML_VALUES} values; "
                f"write the values out or use fewer aliases"
            )


ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:([A-Za-z_]\w*)\}")  # with no default after a comma


def unset_env_vars(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(variable, dotted key) of every `${oc.env:NAME}` whose variable is not set, in file order."""
    found = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        child, dotted = node._get_node(key), f"{prefix}{key}"
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_interpolation():
            found += unset_env_vars(child, dotted + ".")
        elif isinstance(child._value(), str):
            found += [(name, dotted) for name in ENV_INTERPOLATION.findall(child._value()) if name not in os.environ]
    return found
