"""Overrides on a composed config: `key=value`, `+key=value`, `~key`, and the `???` values left after them."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpc_eval.errors import ConfigError
from hpc_eval.slurm import check_slurm_keys


def key_exists(cfg: DictConfig, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        # `part in node` is False for a `???` value: OmegaConf reports it as absent
        if isinstance(node, DictConfig) and not (node._is_none() or node._is_missing()) and part in node.keys():  # noqa: SIM118
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def apply_override(cfg: DictConfig, item: str, source: Path) -> None:
    """Apply one `key=value` (existing key), `+key=value` (new key) or `~key` (delete)."""
    if item.startswith("~"):
        key = item[1:]
        if not key_exists(cfg, key):
            raise ConfigError(f"override '{item}': no key '{key}' in {source} to delete")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        del node[int(leaf) if isinstance(node, ListConfig) else leaf]
        return
    if "=" not in item:
        raise ConfigError(
            f"override '{item}' has no '='; write key=value, for example evaluation.nemo_evaluator_config.config.params.limit_samples=5"
        )
    adding = item.startswith("+")
    key, _, _ = item.lstrip("+").partition("=")
    if key.startswith("slurm."):  # `+` would be silently ignored
        check_slurm_keys([key.split(".")[1]], f"override '{item}'")
    if not adding and not key_exists(cfg, key):
        raise ConfigError(
            f"override '{item}': unknown key '{key}' in {source}{suggest(cfg, key)}; write '+{item}' to add a new key"
        )
    try:
        value = OmegaConf.select(OmegaConf.from_dotlist([item.lstrip("+")]), key)
    except OmegaConfBaseException as error:
        raise ConfigError(f"override '{item}': cannot parse the value: {error}") from None
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def suggest(cfg: DictConfig, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1)
    return f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of every `???` left in the config."""
    found = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        dotted = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            found.append(dotted)
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_interpolation():
            found += missing_keys(child, dotted + ".")
    return found
