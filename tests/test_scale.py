"""What keeps ten thousand checkpoints cheap (issue 18): one serialisation per config, cached metrics.

The launcher config is serialised once per config and the checkpoint path and output dir are
substituted as text: these tests prove that text equal to a full serialisation over paths that
YAML must quote, escape or may not emit plain. The metrics cache is proven by what a second
read does not open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpc_eval.cli import main
from hpc_eval.config import dump_launcher_config, launcher_config_text, load_config

from fakeckpt import make_iter, make_run

# Paths YAML emits plain, and paths it must quote, escape or fold: each must come out as a full dump writes it.
TRICKY_NAMES = [
    "iter_0000100", "run.v2+final", "a=b@c~d", "ülm-運行-данные", "x_y-z.1", "2024-01-01", "1e5", "true", "null", "~",
    "with space", "two  spaces", " lead", "trail ", "it's", 'say "hi"', "colon: here", "colon:nospace", "hash #tag",
    "#lead", "-lead", "- dash", "*star", "&anchor", "!bang", "%pct", "@at", "`tick", "back\\slash", "tab\there",
    "new\nline", "nel\x85char", "line\u2028sep", "bom\ufefflead", "nbsp\xa0x", "bell\x07", "{brace}", "[bracket]",
    "a,b", "q?mark", "|pipe", ">gt", "---", "...", "é" * 200, "long-" * 40, "long " * 40, "emoji-\U0001f600",
    "combining-e\u0301", "zero\u200bwidth", "ctrl\x1b[0m", "yes", "0o17", "0x1F", "+1", ".inf",
]


@pytest.fixture
def base(tmp_path):
    checkpoint = make_iter(tmp_path / "run" / "checkpoints", 100)
    return load_config("default", checkpoint=checkpoint, output_dir=tmp_path / "results")


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_substituted_launcher_config_equals_a_full_serialisation(base, tmp_path, name):
    checkpoint = tmp_path / "runs" / name / "checkpoints" / f"iter_{name}"
    eval_dir = tmp_path / "results" / name / "iter_0000100" / "abc-123"
    config = base.for_checkpoint(checkpoint)
    text = launcher_config_text(base, config, eval_dir)
    # a resolution of its own for this checkpoint, serialised in full
    fresh = load_config("default", checkpoint=checkpoint, output_dir=tmp_path / "results")
    assert text == dump_launcher_config(fresh, eval_dir)
    saved = yaml.safe_load(text)
    assert saved["deployment"]["checkpoint_path"] == str(checkpoint)
    assert saved["execution"]["output_dir"] == str(eval_dir)


def test_plain_paths_are_substituted_not_serialised(base, tmp_path):
    """The test above compares substituted text, not a second full dump, for paths YAML emits as they are."""
    config = base.for_checkpoint(tmp_path / "other" / "iter_0000200")
    launcher_config_text(base, config, tmp_path / "e")
    assert base.template is not None and base.template.usable
    assert base.template.render(str(tmp_path / "ülm" / "iter_1"), str(tmp_path / "e")) is not None
    assert base.template.render(str(tmp_path / "with space" / "iter_1"), str(tmp_path / "e")) is None
    assert base.template.render(str(tmp_path / "iter_1"), str(tmp_path / "it's")) is None


def test_a_path_inside_a_value_with_spaces_is_serialised_in_full(tmp_path):
    """A value that holds the path among spaces may be folded by the dumper: no substitution."""
    from hpc_eval.resources import BUILTIN_CONFIGS

    data = yaml.safe_load((BUILTIN_CONFIGS / "default.yaml").read_text())
    data["deployment"]["command"] = "serve ${deployment.checkpoint_path} " + "--flag " * 20
    source = tmp_path / "spaced.yaml"
    source.write_text(yaml.safe_dump(data))
    base = load_config(str(source), checkpoint=make_iter(tmp_path / "run" / "checkpoints", 100), output_dir=tmp_path / "results")
    other = tmp_path / ("x" * 30) / "iter_0000200"
    config = base.for_checkpoint(other)
    text = launcher_config_text(base, config, tmp_path / "e")
    fresh = load_config(str(source), checkpoint=other, output_dir=tmp_path / "results")
    assert text == dump_launcher_config(fresh, tmp_path / "e")
    assert "\n    --flag" in text  # folded where the line grew past 80 columns
    assert not base.template.usable
