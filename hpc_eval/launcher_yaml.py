"""launcher_config.yaml for many checkpoints of one config, serialised once.

A run of ten thousand checkpoints writes ten thousand launcher configs that differ only in the
checkpoint path (and the paths made from it) and the output dir. Serialising each costs 0.35 ms
of PyYAML's representer; substituting two paths into one serialisation costs microseconds, and
is done only where the text is provably the same (`PLAIN_TEXT`; tests/test_scale.py compares
it with full serialisations over paths YAML must quote, escape or fold).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import yaml
from omegaconf._utils import OmegaConfDumper

from hpc_eval.config import EvalConfig, saved_form


def launcher_config_text(base: EvalConfig, checkpoint: Path | None, eval_dir: Path) -> str:
    """`dump_launcher_config` of `base` for `checkpoint` (see `EvalConfig.for_checkpoint`; None: `base` as it is).

    Resolving and serialising cost 0.4 ms a checkpoint, seconds for ten thousand, and their
    configs differ only in the checkpoint path: once `for_checkpoint` has shown that the path
    only appears as text, `base` is serialised once and the path substituted, where that gives
    the same text (see `LauncherTemplate`).
    """
    same = checkpoint is None or base.checkpoint_path == str(checkpoint)
    config = base if same else None
    if not same and not base.path_is_text:
        config = base.for_checkpoint(checkpoint)  # the first resolution tells whether the path is text
    if same or base.path_is_text:
        if base.template is None:
            base.template = LauncherTemplate(base)
        text = base.template.render(base.checkpoint_path if same else str(checkpoint.absolute()), str(eval_dir))
        if text is not None:
            return text
    return dump_launcher_config(config or base.for_checkpoint(checkpoint), eval_dir)


# A string of these characters that holds a '/' has no YAML indicator, space, line break or
# escape and resolves to no other type (bool, number, null, timestamp: none has a '/'), so the
# dumper emits it as a plain scalar, verbatim, and never folds it (it folds only at spaces).
# \w is letters and digits of any script (all printable for YAML with allow_unicode) and '_'.
PLAIN_TEXT = re.compile(r"[\w/][\w/.+=@~-]*")


class LauncherTemplate:
    """One config's launcher_config.yaml with two unique marks for the checkpoint path and the output dir.

    `render` substitutes them when every string that holds a mark is plain text (`PLAIN_TEXT`)
    before and after, so the text is what a full serialisation gives (tests/test_scale.py checks
    it over tricky paths); otherwise it returns None and the caller serialises in full.
    """

    def __init__(self, config: EvalConfig):
        token = secrets.token_hex(8)
        self.checkpoint_mark = f"/hpc-eval-checkpoint-{token}" if config.checkpoint_path else None
        self.output_mark = f"/hpc-eval-output-{token}"
        marked = config.with_checkpoint_text(self.checkpoint_mark) if self.checkpoint_mark else config
        self.text = dump_launcher_config(marked, Path(self.output_mark))
        holders = list(marked_strings(marked.launcher, (self.checkpoint_mark or self.output_mark, self.output_mark)))
        # every mark in the text is one of these (the output dir's is not in `marked`), and no key holds one
        self.usable = self.text.count(token) == sum(text.count(token) for _, text in holders) + 1 and all(
            not is_key and PLAIN_TEXT.fullmatch(text) for is_key, text in holders
        )

    def render(self, checkpoint_path: str | None, output_dir: str) -> str | None:
        if not self.usable or not plain_path(output_dir) or (self.checkpoint_mark is None) != (checkpoint_path is None):
            return None
        text = self.text.replace(self.output_mark, output_dir)
        if self.checkpoint_mark is None:
            return text
        return text.replace(self.checkpoint_mark, checkpoint_path) if plain_path(checkpoint_path) else None


def plain_path(path: str) -> bool:
    return path.startswith("/") and PLAIN_TEXT.fullmatch(path) is not None


def marked_strings(value: Any, marks: tuple[str, str], is_key: bool = False):
    """(is_key, string) for every key and string value of plain data that holds one of the marks."""
    if isinstance(value, str):
        if marks[0] in value or marks[1] in value:
            yield is_key, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from marked_strings(key, marks, True)
            yield from marked_strings(item, marks)
    elif isinstance(value, list):
        for item in value:
            yield from marked_strings(item, marks)


class LauncherDumper(getattr(yaml, "CDumper", yaml.Dumper)):
    """OmegaConf.to_yaml's YAML (strings that OmegaConf would load as bool or number stay quoted),
    from plain data and on libyaml when present: a DictConfig per checkpoint costs milliseconds."""


LauncherDumper.add_representer(str, OmegaConfDumper.str_representer)


def dump_launcher_config(config: EvalConfig, eval_dir: Path) -> str:
    """The resolved launcher config, its output pointed at `eval_dir`, as YAML text."""
    launcher = saved_form(config.launcher, eval_dir)
    return yaml.dump(launcher, Dumper=LauncherDumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def save_launcher_config(config: EvalConfig, eval_dir: Path, text: str | None = None) -> Path:
    """Write the resolved launcher config, its output pointed at `eval_dir`, as launcher_config.yaml."""
    path = eval_dir / "launcher_config.yaml"
    path.write_text(dump_launcher_config(config, eval_dir) if text is None else text)
    return path
