"""`hpc-eval --help`, `submit --dry-run` on the built-in configs, and `config show`: what users see.

Nothing is submitted; the dry runs save under a temp dir that the tests point into tmp_path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpc_eval.cli import main
from hpc_eval.config import TOOL_KEYS
from hpc_eval.launcher import import_launcher
from support.fakeckpt import make_iter

TOKENIZER_KEY = ("evaluation", "nemo_evaluator_config", "config", "params", "extra", "tokenizer")
HEAVY = ("nemo_evaluator", "nemo_evaluator_launcher", "submitit")


@pytest.fixture(scope="module", autouse=True)
def launcher_imported():
    """Import the launcher once, outside any CliRunner, so its log handlers hold the real stderr."""
    import_launcher()


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch):
    """An empty working directory and temp dir under tmp_path; no endpoint variables."""
    for name in ("NEMO_EVALUATOR_MODEL_URL", "NEMO_EVALUATOR_MODEL_ID", "NEMO_EVALUATOR_API_KEY_NAME"):
        monkeypatch.delenv(name, raising=False)
    dirs = {name: tmp_path / name for name in ("cwd", "tmp")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.chdir(dirs["cwd"])
    monkeypatch.setattr(tempfile, "tempdir", str(dirs["tmp"]))
    return dirs


def run_python(code: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def dig(data, keys):
    for key in keys:
        data = data[key]
    return data


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def launcher_config_paths(output: str) -> list[Path]:
    return [Path(match) for match in re.findall(r"^launcher_config: (.+)$", output, re.M)]


# ---- --help stays light ----


@pytest.mark.parametrize(
    "argv", [["--help"], ["submit", "--help"], ["config", "show", "--help"]], ids=["main", "submit", "config-show"]
)
def test_help_does_not_import_the_launcher_or_submitit(argv):
    done = run_python(
        "import json, sys\n"
        "from hpc_eval.cli import main\n"
        f"code = main({argv!r}, standalone_mode=False)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('nemo_evaluator', 'nemo_evaluator_launcher', 'submitit', 'omegaconf'))\n"
        "print('MODULES=' + json.dumps([code, loaded]))\n"
    )
    code, loaded = json.loads(done.stdout.rsplit("MODULES=", 1)[1])
    assert code == 0
    assert "Usage:" in done.stdout
    assert [name for name in loaded if name.split(".")[0] in HEAVY] == []


def test_payload_imports_without_click():
    done = run_python("import sys, hpc_eval.payload\nprint('CLICK=' + str('click' in sys.modules))")
    assert "CLICK=False" in done.stdout


def test_main_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "submit" in result.output and "config" in result.output


def test_submit_help_says_the_dry_run_key_is_different():
    result = invoke("submit", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--dry-run" in text
    assert "The `dry_run` config key is different: the launcher's own dry run, inside the job." in text
    assert "submit nothing" in text


# ---- submit --dry-run ----


def test_submit_tiny_chat_dry_run(sandbox, tmp_path):
    output_dir = tmp_path / "results"
    result = invoke("submit", "-c", "tiny_chat", "--dry-run", "--output-dir", str(output_dir))
    assert result.exit_code == 0, result.output
    paths = launcher_config_paths(result.output)
    assert len(paths) == 1
    path = paths[0]
    assert path.name == "launcher_config.yaml" and path.is_file()
    assert Path(sandbox["tmp"]) in path.parents  # saved under the temp dir, not the output dir
    assert path.parent.parent.name == "endpoint"
    saved = yaml.safe_load(path.read_text())
    assert set(TOOL_KEYS).isdisjoint(saved)
    assert saved["execution"]["output_dir"] == str(path.parent)
    assert saved["target"]["api_endpoint"]["api_key_name"] == "NVIDIA_API_KEY"
    assert "dry run: would submit 1 evaluation(s); nothing submitted" in result.output
    assert "#SBATCH --time=30" in result.output  # tiny_chat's slurm.time 00:30:00
    assert "--gpus-per-node" not in result.output  # gpus_per_node: 0 for a hosted endpoint
    assert not output_dir.exists()  # nothing claimed
    assert list(sandbox["cwd"].iterdir()) == []


def test_submit_tiny_chat_dry_run_json(sandbox, tmp_path):
    output_dir = tmp_path / "results"
    result = invoke("submit", "-c", "tiny_chat", "--dry-run", "--json", "--output-dir", str(output_dir))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["dry_run"] is True
    assert data["jobs"] == []
    assert len(data["launcher_configs"]) == 1
    saved = yaml.safe_load(Path(data["launcher_configs"][0]).read_text())
    assert set(TOOL_KEYS).isdisjoint(saved)
    assert [ev["action"] for ev in data["evaluations"]] == ["submit"]
    assert data["output_dir"] == str(output_dir)
    assert "#SBATCH" in data["sbatch_script"]
    assert not output_dir.exists()


def test_submit_default_with_fake_checkpoint_dry_run(sandbox, tmp_path):
    iter_dir = make_iter(tmp_path / "runs" / "llama" / "checkpoints", 2000)
    output_dir = tmp_path / "results"
    result = invoke(
        "submit", "-c", "default", "--checkpoint", str(iter_dir), "--dry-run", "--output-dir", str(output_dir)
    )
    assert result.exit_code == 0, result.output
    [path] = launcher_config_paths(result.output)
    assert path.parent.parent.name == "iter_0002000" and path.parent.parent.parent.name.startswith("llama-")
    saved = yaml.safe_load(path.read_text())
    assert set(TOOL_KEYS).isdisjoint(saved)
    assert saved["deployment"]["checkpoint_path"] == str(iter_dir)
    assert dig(saved, TOKENIZER_KEY) == f"{iter_dir}/tokenizer"
    assert saved["deployment"]["image"] == "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
    assert saved["execution"]["output_dir"] == str(path.parent)
    assert "dry run: would submit 1 evaluation(s); nothing submitted" in result.output
    assert "#SBATCH --time=240" in result.output  # default's slurm.time 04:00:00
    assert not output_dir.exists()


def test_submit_dry_run_with_overrides_and_task(sandbox, tmp_path):
    result = invoke(
        "submit",
        "-c",
        "tiny_chat",
        "evaluation.nemo_evaluator_config.config.params.limit_samples=3",
        "-t",
        "mmlu_instruct",
        "--time",
        "01:00:00",
        "--dry-run",
        "--output-dir",
        str(tmp_path / "results"),
    )
    assert result.exit_code == 0, result.output
    [path] = launcher_config_paths(result.output)
    saved = yaml.safe_load(path.read_text())
    assert saved["evaluation"]["nemo_evaluator_config"]["config"]["params"]["limit_samples"] == 3
    request = json.loads((path.parent / "request.json").read_text())
    assert request["task_filters"] == ["mmlu_instruct"]
    assert "#SBATCH --time=60" in result.output


# ---- config show ----


def test_config_show_tiny_chat_prints_launcher_yaml(monkeypatch):
    monkeypatch.setenv("NVIDIA_API_KEY", "sk-secret-value-123")
    result = invoke("config", "show", "-c", "tiny_chat")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert set(TOOL_KEYS).isdisjoint(shown)
    assert shown["deployment"]["type"] == "none"
    assert shown["target"]["api_endpoint"]["api_key_name"] == "NVIDIA_API_KEY"
    assert "sk-secret-value-123" not in result.output  # the key by name only
    assert "${" not in result.output  # resolved


def test_config_show_applies_overrides_and_checkpoint(tmp_path):
    iter_dir = make_iter(tmp_path / "run", 10)
    result = invoke("config", "show", "-c", "default", "--checkpoint", str(iter_dir), "deployment.port=9999")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["deployment"]["port"] == 9999
    assert shown["deployment"]["checkpoint_path"] == str(iter_dir)
    assert dig(shown, TOKENIZER_KEY) == f"{iter_dir}/tokenizer"
    assert set(TOOL_KEYS).isdisjoint(shown)


@pytest.mark.parametrize("command", [["status"], ["results"], ["logs", "123"]])
def test_listing_commands_refuse_a_missing_output_dir(command, tmp_path):
    missing = tmp_path / "no-such-dir"
    result = CliRunner().invoke(
        main,
        [
            *command,
            "--output-dir" if command[0] == "logs" else str(missing),
            *([str(missing)] if command[0] == "logs" else []),
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: no such directory: {missing}; give an output dir (the submit's --output-dir), a run folder or an evaluation directory"
    ]
