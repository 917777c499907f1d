"""The Python API as the README shows it: submit a tiny evaluation to the real local Slurm from Python,
read its status and results back; and what the API promises besides (light import, errors as data)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_eval import api
from hpc_eval.errors import ConfigError, UsageError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    """The README's Python API example, as a user would paste it."""
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slurm
@pytest.mark.slow
def test_the_readme_example_submits_and_reads_back(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "NVIDIA_API_KEY": "unused-by-a-dry-run"}  # tiny_chat asks for it
    done = subprocess.run(
        [sys.executable, "-c", readme_python_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (submitted,) = re.findall(r"^submitted job (\d+) -> (.+)$", done.stdout, re.M)
    job_id, eval_dir = submitted
    assert Path(eval_dir).is_relative_to(tmp_path / "evals") and (Path(eval_dir) / "launcher_config.yaml").exists()
    relative = re.escape(str(Path(eval_dir).relative_to(tmp_path)))  # as given: evals/...
    assert re.search(rf"^tiny_chat (PENDING|RUNNING|COMPLETED|COMPLETING) {relative}$", done.stdout, re.M), done.stdout

    deadline = time.monotonic() + 240
    while (rows := api.status([tmp_path / "evals"]))[0].state != "COMPLETED":
        assert rows[0].state in ("PENDING", "RUNNING", "COMPLETING"), rows[0]
        assert time.monotonic() < deadline, rows[0]
        time.sleep(2)
    assert rows[0].job_id == job_id and rows[0].run == "tiny_chat"
    table = api.results([tmp_path / "evals"])
    assert [record["run"] for record in table.records()] == ["tiny_chat"]  # a launcher dry run: no scores


def test_submit_dry_run_returns_what_it_would_submit(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    submission = api.submit("tiny_chat", ["dry_run=true"], output_dir=tmp_path / "evals", dry_run=True)
    (planned,) = submission.result.to_submit
    assert submission.result.jobs == [] and submission.output_dir == tmp_path / "evals"
    assert planned.paths.launcher_config.exists() and not (tmp_path / "evals").exists()  # nothing claimed
    assert "#SBATCH --time=30" in submission.result.sbatch_script  # tiny_chat's slurm.time 00:30:00
    assert submission.to_dict()["output_dir"] == str(tmp_path / "evals")


def test_bad_input_raises_the_error_the_cli_shows(tmp_path):
    with pytest.raises(ConfigError, match="slurm.gpus_per_node"):
        api.submit("tiny_chat", dry_run=True, slurm={"gpus_per_node": "two"})
    with pytest.raises(UsageError, match="no such directory"):
        api.status([tmp_path / "nowhere"])
    with pytest.raises(UsageError, match="run directory not found"):
        api.watch_pass([tmp_path / "nowhere"], "tiny_chat")


def test_importing_the_api_imports_neither_the_launcher_nor_submitit():
    code = "import sys, hpc_eval; hpc_eval.api.validate; print(sorted(m for m in sys.modules if m.split('.')[0] in ('submitit', 'nemo_evaluator_launcher', 'hpc_eval')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "['hpc_eval', 'hpc_eval.api', 'hpc_eval.errors']"
