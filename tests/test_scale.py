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
from hpc_eval.config import load_config
from hpc_eval.launcher_yaml import dump_launcher_config, launcher_config_text
from support.fakeckpt import make_iter, make_run

# Paths YAML emits plain, and paths it must quote, escape or fold: each must come out as a full dump writes it.
TRICKY_NAMES = [
    "iter_0000100",
    "run.v2+final",
    "a=b@c~d",
    "ülm-運行-данные",
    "x_y-z.1",
    "2024-01-01",
    "1e5",
    "true",
    "null",
    "~",
    "with space",
    "two  spaces",
    " lead",
    "trail ",
    "it's",
    'say "hi"',
    "colon: here",
    "colon:nospace",
    "hash #tag",
    "#lead",
    "-lead",
    "- dash",
    "*star",
    "&anchor",
    "!bang",
    "%pct",
    "@at",
    "`tick",
    "back\\slash",
    "tab\there",
    # a line break is refused at input (tests/test_hostile_input.py), so it never reaches the serialiser
    "nel\x85char",
    "line\u2028sep",
    "bom\ufefflead",
    "nbsp\xa0x",
    "bell\x07",
    "{brace}",
    "[bracket]",
    "a,b",
    "q?mark",
    "|pipe",
    ">gt",
    "---",
    "...",
    "é" * 200,
    "long-" * 40,
    "long " * 40,
    "emoji-\U0001f600",
    "combining-e\u0301",
    "zero\u200bwidth",
    "ctrl\x1b[0m",
    "yes",
    "0o17",
    "0x1F",
    "+1",
    ".inf",
]


@pytest.fixture
def base(tmp_path):
    checkpoint = make_iter(tmp_path / "run" / "checkpoints", 100)
    return load_config("default", checkpoint=checkpoint, output_dir=tmp_path / "results")


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_substituted_launcher_config_equals_a_full_serialisation(base, tmp_path, name):
    checkpoint = tmp_path / "runs" / name / "checkpoints" / f"iter_{name}"
    eval_dir = tmp_path / "results" / name / "iter_0000100" / "abc-123"
    base.for_checkpoint(tmp_path / "iter_0000200")  # a second resolution: the path is text
    text = launcher_config_text(base, checkpoint, eval_dir)
    # a resolution of its own for this checkpoint, serialised in full
    fresh = load_config("default", checkpoint=checkpoint, output_dir=tmp_path / "results")
    assert text == dump_launcher_config(fresh, eval_dir)
    saved = yaml.safe_load(text)
    assert saved["deployment"]["checkpoint_path"] == str(checkpoint)
    assert saved["execution"]["output_dir"] == str(eval_dir)


def test_plain_paths_are_substituted_not_serialised(base, tmp_path):
    """The test above compares substituted text, not a second full dump, for paths YAML emits as they are."""
    launcher_config_text(base, tmp_path / "other" / "iter_0000200", tmp_path / "e")
    assert base.template is not None and base.template.usable
    assert base.template.render(str(tmp_path / "ülm" / "iter_1"), str(tmp_path / "e")) is not None
    assert base.template.render(str(tmp_path / "with space" / "iter_1"), str(tmp_path / "e")) is None
    assert base.template.render(str(tmp_path / "iter_1"), str(tmp_path / "it's")) is None


def test_a_path_inside_a_value_with_spaces_is_serialised_in_full(tmp_path):
    """A value that holds the path among spaces may be folded by the dumper: no substitution."""
    from hpc_eval.resources import BUILTIN_CONFIGS

    data = yaml.safe_load((BUILTIN_CONFIGS / "default.yaml").read_text())
    data["deployment"]["command"] = "serve ${deployment.checkpoint_path} --port ${deployment.port} " + "--flag " * 20
    source = tmp_path / "spaced.yaml"
    source.write_text(yaml.safe_dump(data))
    base = load_config(
        str(source), checkpoint=make_iter(tmp_path / "run" / "checkpoints", 100), output_dir=tmp_path / "results"
    )
    other = tmp_path / ("x" * 30) / "iter_0000200"
    text = launcher_config_text(base, other, tmp_path / "e")
    fresh = load_config(str(source), checkpoint=other, output_dir=tmp_path / "results")
    assert text == dump_launcher_config(fresh, tmp_path / "e")
    assert "\n    --flag" in text  # folded where the line grew past 80 columns
    assert not base.template.usable


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_request_text_equals_a_full_encoding(name):
    from hpc_eval.store import RequestTemplate, dumps

    template = RequestTemplate(
        {"config_hash": "abc", "slurm": {"partition": name, "time": "01:00:00"}, "task_filters": [name]}
    )
    for varying in (
        {
            "checkpoint": f"/r/{name}/iter_1",
            "iteration": 1,
            "run": name,
            "run_dir": f"/r/{name}",
            "checkpoint_realpath": None,
            "fingerprint": {"stat": f"12-{name}", "train_state_sha256": None},
            "created_at": "2026-01-01T00:00:00+0000",
        },
        {"checkpoint": None, "iteration": None, "run": f'"{name}"', "fingerprint": None, "created_at": "x"},
        {"checkpoint": "\x00" + template.token + ":run", "run": template.mark + "checkpoint", "fingerprint": {}},
    ):
        text = template.text(varying)
        assert text == dumps({**varying, **template.constants})
        assert json.loads(text) == {**varying, **template.constants}


def test_dry_run_all_writes_what_a_full_serialisation_writes(tmp_path, monkeypatch):
    """`submit --dry-run --all` over checkpoints of a run whose folder YAML and JSON must quote."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for name in ("plain-run", "it's a #run: ü", "-dash*&!%@\\"):
        run = make_run(tmp_path / name / "checkpoints", [100, 200, 300])
        result = CliRunner().invoke(
            main,
            [
                "submit",
                "-c",
                "default",
                "--checkpoint",
                str(run),
                "--all",
                "--dry-run",
                "--json",
                "--output-dir",
                str(tmp_path / "results"),
            ],
        )
        assert result.exit_code == 0, result.output
        written = json.loads(result.output[result.output.index("{") :])["launcher_configs"]
        assert len(written) == 3
        for path in map(Path, written):
            saved = yaml.safe_load(path.read_text())
            checkpoint = saved["deployment"]["checkpoint_path"]
            assert Path(checkpoint).parent == run
            fresh = load_config("default", checkpoint=checkpoint, output_dir=tmp_path / "results")
            assert path.read_text() == dump_launcher_config(fresh, path.parent)
            request = json.loads((path.parent / "request.json").read_text())
            assert request["checkpoint"] == checkpoint and request["run_dir"] == str(run)
            assert (path.parent / "request.json").read_text() == json.dumps(request, indent=2, sort_keys=True) + "\n"


def test_a_second_results_call_reads_the_metrics_cache_until_results_yml_changes(tmp_path):
    """Proven by content: results.yml rewritten with the same size and mtime is not read again."""
    from hpc_eval.launcher_tree import METRICS_CACHE
    from hpc_eval.results import collect_results
    from test_results import BFCL, MATH, write_evaluation

    root = tmp_path / "results"
    eval_dir = write_evaluation(root, 2000, [(BFCL, 0, "0.93"), (MATH, 0, "0.5")], summary=None)  # still running
    results_yml = next(eval_dir.glob(f"*/{MATH}.1/artifacts/results.yml"))
    assert collect_results([root]).records()[0]["math_test_500_nemo/score/micro"] == 0.5
    assert (results_yml.parent.parent / METRICS_CACHE).is_file()

    before = os.stat(results_yml)
    results_yml.write_text(results_yml.read_text().replace("value: 0.5\n", "value: 0.7\n"))  # same size
    os.utime(results_yml, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert collect_results([root]).records()[0]["math_test_500_nemo/score/micro"] == 0.5  # from the cache

    os.utime(results_yml, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # a resumed task rewrote it
    assert collect_results([root]).records()[0]["math_test_500_nemo/score/micro"] == 0.7

    results_yml.write_text(results_yml.read_text().replace("value: 0.7\n", "value: 0.75\n"))  # another size
    os.utime(results_yml, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert collect_results([root]).records()[0]["math_test_500_nemo/score/micro"] == 0.75


def test_an_unwritable_or_broken_metrics_cache_is_not_an_error(tmp_path):
    from hpc_eval.launcher_tree import METRICS_CACHE
    from hpc_eval.results import collect_results
    from test_results import BFCL, write_evaluation

    root = tmp_path / "results"
    eval_dir = write_evaluation(root, 2000, [(BFCL, 0, "0.93")], summary=None)
    task_dir = next(eval_dir.glob(f"*/{BFCL}.0"))
    (task_dir / METRICS_CACHE).mkdir()  # cannot be read as a file nor replaced
    assert collect_results([root]).records()[0]["bfcl/live_overall_acc"] is not None
    (task_dir / METRICS_CACHE).rmdir()
    (task_dir / METRICS_CACHE).write_text("{not json")
    first = collect_results([root]).records()
    assert json.loads((task_dir / METRICS_CACHE).read_text())["metrics"] and collect_results([root]).records() == first
