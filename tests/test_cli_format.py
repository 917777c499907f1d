"""The shared output layer: `--format table|csv|json|markdown` (and `--json`) on every listing command,
`config show --format json`, the override forms in `submit --help`, and shell completion."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpc_eval.cli import main
from support.fakeckpt import make_iter, make_run

HELD = ["dry_run=true", "slurm.cpus_per_task=1", "slurm.gpus_per_node=0", "+slurm.additional_parameters.hold=true"]


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    return result.exit_code, result.output


def test_submit_help_explains_the_override_forms():
    code, text = invoke("submit", "--help")
    assert code == 0
    for form in (
        "key=value",
        "+key=value",
        "~key",
        "slurm.key=value",
        "???",
        "--format [table|csv|json|markdown]",
        "--json",
    ):
        assert form in text, form


def test_bash_completion_script_is_produced():
    env = {**os.environ, "_HPC_EVAL_COMPLETE": "bash_source"}
    hpc_eval = Path(sys.executable).with_name("hpc-eval")
    done = subprocess.run([str(hpc_eval)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (
        "_hpc_eval_completion()" in done.stdout and "complete -o nosort -F _hpc_eval_completion hpc-eval" in done.stdout
    )
    env = {**os.environ, "_HPC_EVAL_COMPLETE": "bash_complete", "COMP_WORDS": "hpc-eval sta", "COMP_CWORD": "1"}
    done = subprocess.run([str(hpc_eval)], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,status" in done.stdout.splitlines()


def test_validate_in_every_format(tmp_path):
    good = make_iter(tmp_path / "run" / "checkpoints", 100)
    bad = tmp_path / "run" / "checkpoints" / "iter_0000200"
    bad.mkdir()
    code, text = invoke("validate", good, bad, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 1 and [(row["path"], row["ok"]) for row in rows] == [(str(good), "True"), (str(bad), "False")]
    assert rows[0]["iteration"] == "100" and rows[1]["reason"]
    assert invoke("validate", good, "--json")[1] == invoke("validate", good, "--format", "json")[1]
    assert json.loads(invoke("validate", good, "--json")[1])[0]["ok"] is True
    assert invoke("validate", good, "--format", "markdown")[1].startswith(
        "| path | ok | iteration | format | reason | warnings |\n|---|"
    )
    assert invoke("validate", good)[1].startswith(f"OK  {good}  iter 100")  # the table stays as it was


def test_config_show_as_json_is_the_yaml_as_data():
    code, text = invoke("config", "show", "-c", "tiny_chat", "--format", "json")
    assert code == 0 and json.loads(text)["deployment"] == {"type": "none"}
    assert "slurm" not in json.loads(text)  # the tool's own keys are removed, as in the YAML
    assert invoke("config", "show", "-c", "tiny_chat")[1].startswith("execution:")


@pytest.mark.slurm
def test_status_logs_and_watch_in_every_format(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    run = make_run(tmp_path / "train" / "checkpoints", [100, 200])
    out = tmp_path / "out"
    code, text = invoke(
        "watch", run, "-c", "tiny_chat", "--output-dir", out, "--quiet-seconds", "0", *HELD, "--format", "csv"
    )
    actions = list(csv.DictReader(io.StringIO(text)))
    assert code == 0, text
    assert [(row["action"], row["iteration"]) for row in actions] == [("submitted", "200"), ("submitted", "100")]

    code, text = invoke("status", out, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and [(row["iteration"], row["state"]) for row in rows] == [("100", "PENDING"), ("200", "PENDING")]
    assert list(rows[0]) == [
        "run",
        "iteration",
        "config_hash",
        "job_id",
        "state",
        "attempts",
        "elapsed",
        "reason",
        "run_dir",
        "eval_dir",
    ]
    assert rows[0]["eval_dir"] == actions[1]["eval_dir"]
    by_json = json.loads(invoke("status", out, "--format", "json")[1])
    assert by_json == json.loads(invoke("status", out, "--json")[1])
    assert [row["job_id"] for row in by_json] == [row["job_id"] for row in rows]
    assert (
        invoke("status", out, "--format", "markdown")[1].splitlines()[0]
        == "| run | iteration | config_hash | job_id | state | attempts | elapsed | reason |"
    )
    assert invoke("status", out)[1].splitlines()[0].split() == [
        "run",
        "iteration",
        "config_hash",
        "job_id",
        "state",
        "attempts",
        "elapsed",
        "reason",
    ]

    code, text = invoke("logs", rows[0]["eval_dir"], "--format", "json")
    logs = json.loads(text)
    assert code == 0 and [row["kind"] for row in logs][:2] == ["slurm", "slurm"]
    assert logs[0]["path"].endswith(".out") and f"slurm: {logs[0]['path']}" in invoke("logs", rows[0]["eval_dir"])[1]
