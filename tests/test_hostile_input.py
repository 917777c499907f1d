"""Hostile input on the real file system: YAML bombs and depth, unset variables, line breaks in
paths and names, shell metacharacters in what we write. Every refusal is one `Error:` line per
problem, exit 2, nothing claimed."""

from __future__ import annotations

import shlex
import subprocess
import time

import pytest

from slurm_helpers import CONFIGS, hpc_eval

HOSTILE = "a b'c\"$(touch CANARY)é\\d"  # a space, quotes, a command substitution, non-ASCII, a backslash


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize("depth", [500, 3000])
def test_deep_yaml_is_one_line_not_a_recursion_error(tmp_path, depth):
    config = tmp_path / "deep.yaml"
    config.write_text("a: " + "[" * depth + "]" * depth + "\n")
    result = hpc_eval("config", "show", "-c", config)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    # our limit; past 1000 levels libyaml's own stops the parse first, also as one line
    expected = (
        "1: nested deeper than 100 levels" if depth < 1000 else "YAML syntax error: exceeded maximum nesting depth"
    )
    assert line.startswith(f"Error: {config}:") and expected in line, line


def test_alias_bomb_is_refused_fast_and_small(tmp_path):
    """Billion laughs: nine levels of nine aliases would expand to 10^9 values."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    code = (
        "import resource, sys; from click.testing import CliRunner; from hpc_eval.cli import main; "
        f"r = CliRunner().invoke(main, ['config', 'show', '-c', {str(config)!r}]); print(r.output, end=''); "
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(r.exit_code)"
    )
    start = time.monotonic()
    done = subprocess.run([sys_executable(), "-c", code], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    assert done.returncode == 2, done.stdout + done.stderr
    error, rss = done.stdout.splitlines()
    assert error.startswith(f"Error: {config}:") and "over 100000 values" in error and "aliases" in error
    assert took < 15, f"took {took:.1f} s"
    assert int(rss.split()[1]) < 400_000, rss  # kB: the interpreter and imports, no expansion


def sys_executable() -> str:
    import sys

    return sys.executable


def test_every_unset_variable_is_its_own_line(tmp_path, monkeypatch):
    monkeypatch.delenv("HOSTILE_UNSET_A", raising=False)
    monkeypatch.delenv("HOSTILE_UNSET_B", raising=False)
    config = tmp_path / "env.yaml"
    config.write_text(
        (CONFIGS / "bfcl_host.yaml")
        .read_text()
        .replace("${oc.env:STUB_URL}", "${oc.env:HOSTILE_UNSET_A}")
        .replace("model_id: fake-model", "model_id: ${oc.env:HOSTILE_UNSET_B}")
    )
    result = hpc_eval("config", "show", "-c", config)
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"Error: {config}: environment variable HOSTILE_UNSET_A is not set (target.api_endpoint.url reads it); export HOSTILE_UNSET_A=...",
        f"Error: {config}: environment variable HOSTILE_UNSET_B is not set (target.api_endpoint.model_id reads it); export HOSTILE_UNSET_B=...",
    ]


@pytest.mark.parametrize("where", ["--run", "--output-dir", "--task", "task", "checkpoint"])
def test_line_breaks_are_refused_before_anything_is_claimed(tmp_path, monkeypatch, where):
    from support.fakeckpt import make_run

    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")
    output_dir = tmp_path / "evals"
    args = ["submit", "-c", CONFIGS / "bfcl_host.yaml", "--output-dir", output_dir]
    if where == "--run":
        args += ["--run", "my\nrun"]
    elif where == "--output-dir":
        args[-1] = tmp_path / "ev\nals"
    elif where == "--task":
        args += ["-t", "bfcl.bfclv3_ast_prompting\nx"]
    elif where == "task":  # a task name in the config file
        config = tmp_path / "task.yaml"
        config.write_text(
            (CONFIGS / "bfcl_host.yaml")
            .read_text()
            .replace("name: bfcl.bfclv3_ast_prompting", 'name: "bfcl.bfclv3_ast_prompting\\nx"')
        )
        args[2] = config
    else:
        run = make_run(tmp_path / "bad\nrun" / "checkpoints", [100])
        args += ["--checkpoint", run / "iter_0000100"]
    result = hpc_eval(*args)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("Error: ") and "contains a line break or NUL" in line
    assert not output_dir.exists() and not (tmp_path / "ev\nals").exists()


def test_follow_up_commands_are_shell_quoted(tmp_path):
    from hpc_eval.sbatch import PlannedEvaluation, SubmittedJob
    from hpc_eval.store import EvalPaths
    from hpc_eval.submit import SubmitResult, follow_up_commands

    output_dir = tmp_path / HOSTILE
    evaluation = PlannedEvaluation(EvalPaths(output_dir / "run" / "ckpt"), "run", None, None)
    result = SubmitResult([evaluation], [], [SubmittedJob("1", ["1"], tmp_path, [evaluation])], dry_run=False)
    commands = follow_up_commands(result, output_dir)
    assert shlex.split(commands["status_command"]) == ["hpc-eval", "status", str(output_dir)]
    assert shlex.split(commands["logs_command"]) == ["hpc-eval", "logs", str(evaluation.paths.root)]
    assert shlex.split(commands["results_command"]) == ["hpc-eval", "results", str(output_dir)]
    # and a shell runs it with the path as one argument, nothing substituted
    echoed = subprocess.run(
        ["bash", "-c", commands["status_command"].replace("hpc-eval", "printf %s", 1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    assert echoed == f"status{output_dir}" and not (tmp_path / "CANARY").exists()


def test_safe_alias_only_for_paths_a_shell_would_misread():
    from hpc_eval.executor_scripts import safe_alias

    assert safe_alias("/scratch/run-1/iter_0000100", "abc") == "/scratch/run-1/iter_0000100"
    alias = safe_alias(f"/scratch/{HOSTILE}", "abc")
    assert alias.startswith("/tmp/hpc-eval-") and "abc" in alias and shlex.quote(alias) == alias
    assert safe_alias(f"/scratch/{HOSTILE}", "abc") == alias  # the same on every attempt


@pytest.mark.parametrize("runtime", ["docker", "pyxis", "apptainer", "host"])
def test_every_runtime_passes_a_hostile_checkpoint_path_as_one_word(tmp_path, runtime):
    from hpc_eval.executor_scripts import safe_alias, task_commands

    checkpoint = tmp_path / HOSTILE / "iter_0000100"
    checkpoint.mkdir(parents=True)
    launcher = {
        "execution": {"type": "hpc_eval", "output_dir": str(tmp_path / HOSTILE / "out"), "mode": "sequential"},
        "deployment": {
            "type": "generic",
            "image": "nvcr.io/nvidia/nemo:25.11",
            "port": 8000,
            "served_model_name": "m",
            "checkpoint_path": str(checkpoint),
            "command": "python serve.py --checkpoint /checkpoint --port 8000",
            "endpoints": {"chat": "/v1/chat/completions", "completions": "/v1/completions", "health": "/v1/health"},
        },
        "target": {"api_endpoint": {}},
        "evaluation": {"tasks": [{"name": "bfcl.bfclv3_ast_prompting"}]},
    }
    (task,) = task_commands(launcher, runtime)
    if runtime == "host":  # no container: the command reads the checkpoint through a safe alias
        (served,) = [word for word in shlex.split(task["server_command"]) if word.startswith("/tmp/hpc-eval-")]
        assert served.endswith(safe_alias(str(checkpoint), "x")[-17:]) and HOSTILE not in task["server_command"]
        return
    words = shlex.split(task["server"])
    assert any(str(checkpoint) in word and word.endswith("/checkpoint:ro") for word in words), words


def test_watch_refuses_a_run_directory_with_a_line_break(tmp_path, monkeypatch):
    from support.fakeckpt import make_run

    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")
    good = make_run(tmp_path / "good" / "checkpoints", [100])
    bad = make_run(tmp_path / "bad\nrun" / "checkpoints", [100])
    result = hpc_eval(
        "watch", good, bad, "-c", CONFIGS / "bfcl_host.yaml", "--output-dir", tmp_path / "evals", "--quiet-seconds", 0
    )
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("Error: run directory") and "contains a line break or NUL" in line
    assert not (tmp_path / "evals").exists()
