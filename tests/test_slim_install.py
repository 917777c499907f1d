"""The slim install (scripts/install-slim.sh: no leptonai, no ray) submits, runs the payload and reads results.

The venv is built from the pip cache/index; the evaluation's "image" runs in this test's own
environment (the docker stand-in), while the submit, the payload and `results` run in the slim venv.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from slurm_helpers import CONFIGS, REPO, wait_for_state
from support.fakeckpt import make_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

UNREACHABLE = ("No matching distribution", "Could not find a version", "Failed to establish", "Network is unreachable")


def test_slim_venv_has_no_ray_and_evaluates_a_checkpoint(tmp_path, monkeypatch, start_stub, real_docker):
    venv = tmp_path / "slim"
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-slim.sh"), str(venv), str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if built.returncode and any(text in built.stderr for text in UNREACHABLE):
        pytest.skip(
            "pip cannot reach its index or cache: run once with network (or a warm pip cache) to test the slim install"
        )
    assert built.returncode == 0, built.stderr[-3000:]
    freeze = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout.lower()
    assert "leptonai" not in freeze and "\nray==" not in freeze and "nemo-evaluator-launcher==0.2.6" in freeze

    env = dict(os.environ, STUB_URL=start_stub(reply="[calculate_triangle_area(base=10, height=5)]").url)
    run = make_run(tmp_path / "train" / "checkpoints", [100])
    out = tmp_path / "out"
    submitted = subprocess.run(
        [
            venv / "bin" / "hpc-eval",
            "submit",
            "-c",
            CONFIGS / "bfcl_stub.yaml",
            "--checkpoint",
            run / "iter_0000100",
            "--output-dir",
            out,
            "slurm.gpus_per_node=0",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job = json.loads(submitted.stdout)["jobs"][0]
    assert wait_for_state(job["job_id"]) == "COMPLETED"
    summary = json.loads(next(out.glob("*/*/*/summary.json")).read_text())
    assert summary["state"] == "COMPLETED"
    results = subprocess.run(
        [venv / "bin" / "hpc-eval", "results", out, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert results.returncode == 0, results.stderr
    (row,) = json.loads(results.stdout)
    assert row["iteration"] == 100 and row["bfcl/python_simple_ast_non_live"] == 25.0
