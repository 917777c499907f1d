"""`hpc-eval export`: scores at step = training iteration in real W&B (offline) and MLflow (sqlite) runs.

Evaluations are laid out as the submit side and the payload leave them: request.json,
launcher_config.yaml, the launcher's task tree with logs/stage.exit and a real harness
results.yml (its score changed per checkpoint), and a summary.json built with
`launcher_tree.task_outcome` as the payload builds it. Nothing leaves the machine: W&B runs in
offline mode and its .wandb files are read back record by record; MLflow writes to sqlite and is
read back through its own client.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpc_eval.cli import main
from hpc_eval.export import export, export_finished
from hpc_eval.launcher_tree import task_outcome
from hpc_eval.store import read_json, write_json

wandb = pytest.importorskip("wandb", reason="pip install 'hpc-eval[wandb]'")
mlflow = pytest.importorskip("mlflow", reason="pip install 'hpc-eval[mlflow]'")

DATA = Path(__file__).parent / "data"
MATH = "simple_evals.math_test_500_nemo"
MATH_METRIC = "math_test_500_nemo/score/micro"
CONFIG_HASH = "0123abcd4567"
STEPS = (300, 100, 200)  # the order the checkpoints finish in


def score(step: int) -> float:
    return round(step / 1000 + 0.05, 3)


def write_evaluation(
    output: Path, run_dir: Path, step: int, state: str = "COMPLETED", launcher: dict | None = None
) -> Path:
    """One evaluation of `<run_dir>/iter_<step>` whose math score is score(step)."""
    checkpoint = run_dir / f"iter_{step:07d}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    eval_dir = output / f"run-{'a' * 8}" / checkpoint.name / f"{CONFIG_HASH}-{'f' * 8}"
    task_dir = eval_dir / "20260101_120000-0123456789abcdef" / f"{MATH}.0"
    (task_dir / "logs").mkdir(parents=True)
    (task_dir / "artifacts").mkdir()
    (task_dir / "logs" / "stage.exit").write_text("2026-01-01T12:05:00Z 0\n")
    text = (DATA / "results_math.yml").read_text()
    assert "value: 0.5\n" in text
    (task_dir / "artifacts" / "results.yml").write_text(text.replace("value: 0.5\n", f"value: {score(step)}\n"))
    (eval_dir / "launcher_config.yaml").write_text(
        yaml.safe_dump(launcher or {"evaluation": {"tasks": [{"name": MATH}]}})
    )
    write_json(
        eval_dir / "request.json",
        {
            "checkpoint": str(checkpoint),
            "iteration": step,
            "run": "run",
            "run_dir": str(run_dir),
            "checkpoint_realpath": str(checkpoint),
            "config_hash": CONFIG_HASH,
            "created_at": "2026-01-01T12:00:00+0000",
        },
    )
    write_json(
        eval_dir / "summary.json",
        {
            "state": state,
            "dry_run": False,
            "invocation_id": "0123456789abcdef",
            "tasks": {f"{MATH}.0": task_outcome(task_dir)},
        },
    )
    return eval_dir


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    yield {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "wandb_dir": tmp_path / "wandb-dir"}
    wandb.teardown()  # W&B keeps its settings (WANDB_DIR included) for the life of the process


def read_wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's leveldb-log format (7-byte header, 32 KiB blocks of framed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(data):
        left = block - offset % block
        if left < 7:  # a block's tail too short for a header is padding
            offset += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_points(wandb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every history point the offline runs hold: metric -> [(iteration, value)], across all resumed runs."""
    import json

    points: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in row.items():
                if not key.startswith("_") and key != "iteration":
                    points.setdefault(key, []).append((row["iteration"], value))
    return points


def wandb_run_ids(wandb_dir: Path) -> set[str]:
    # offline-run-<date>_<time>-<run id>[-<n> when two runs start in the same second]
    return {
        re.match(r"offline-run-\d{8}_\d{6}-(.+?)(-\d+)?$", path.name).group(1)
        for path in wandb_dir.glob("wandb/offline-run-*")
    }


def mlflow_points(uri: str) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("hpc-eval")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "one MLflow run per (training run, config hash)"
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key))
        for key in runs[0].data.metrics
    }


def test_three_checkpoints_out_of_order_land_at_their_steps_and_a_fourth_export_adds_nothing(tmp_path, offline):
    output, run_dir = tmp_path / "results", tmp_path / "train" / "checkpoints"
    for done, step in enumerate(STEPS, start=1):  # each export runs after the next checkpoint finished
        write_evaluation(output, run_dir, step)
        report = export([output], ["wandb", "mlflow"], tracking_uri=offline["uri"])
        assert [item["iteration"] for item in report.logged["wandb"]] == [step]
        assert [item["iteration"] for item in report.logged["mlflow"]] == [step]
        assert len(mlflow_points(offline["uri"])[MATH_METRIC]) == done

    expected = [(step, score(step)) for step in sorted(STEPS)]
    assert mlflow_points(offline["uri"]) == {MATH_METRIC: expected}
    assert sorted(wandb_points(offline["wandb_dir"])[MATH_METRIC]) == expected
    assert len(wandb_run_ids(offline["wandb_dir"])) == 1, "every export resumes the same W&B run id"

    fourth = export([output], ["wandb", "mlflow"], tracking_uri=offline["uri"])
    assert fourth.logged == {"wandb": [], "mlflow": []}
    assert mlflow_points(offline["uri"]) == {MATH_METRIC: expected}
    assert sorted(wandb_points(offline["wandb_dir"])[MATH_METRIC]) == expected

    client = mlflow.MlflowClient(tracking_uri=offline["uri"])
    run = client.search_runs([client.get_experiment_by_name("hpc-eval").experiment_id])[0]
    assert run.info.run_name == f"run-{CONFIG_HASH[:8]}"
    assert run.data.tags["hpc_eval.config_hash"] == CONFIG_HASH
    assert run.data.tags["checkpoint.200"] == str(run_dir / "iter_0000200")
    record = read_json(next(output.glob("*/iter_0000100/*")) / "exported.json")
    assert set(record) == {"wandb::hpc-eval", f"mlflow:{offline['uri']}:hpc-eval"}


def test_only_finished_evaluations_are_exported(tmp_path, offline):
    output, run_dir = tmp_path / "results", tmp_path / "train" / "checkpoints"
    write_evaluation(output, run_dir, 100)
    write_evaluation(output, run_dir, 200, state="FAILED")
    report = export([output], ["mlflow"], tracking_uri=offline["uri"])
    assert [item["iteration"] for item in report.logged["mlflow"]] == [100]
    assert [item["why"] for item in report.skipped] == ["not finished (FAILED)"]
    assert mlflow_points(offline["uri"]) == {MATH_METRIC: [(100, score(100))]}


def test_cli_exports_to_both_and_names_the_experiment(tmp_path, offline):
    output, run_dir = tmp_path / "results", tmp_path / "train" / "checkpoints"
    write_evaluation(output, run_dir, 100)
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(output),
            "--to",
            "mlflow",
            "--to",
            "wandb",
            "--project",
            "my-proj",
            "--name",
            "curve",
            "--tracking-uri",
            offline["uri"],
        ],
    )
    assert result.exit_code == 0, result.output
    assert "mlflow: 1 checkpoint(s)" in result.output and "wandb: 1 checkpoint(s)" in result.output
    client = mlflow.MlflowClient(tracking_uri=offline["uri"])
    runs = client.search_runs([client.get_experiment_by_name("my-proj").experiment_id])
    assert [run.info.run_name for run in runs] == ["curve"]
    assert wandb_points(offline["wandb_dir"]) == {MATH_METRIC: [(100, score(100))]}


def test_cli_refuses_an_unknown_destination(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--to", "tensorboard"])
    assert result.exit_code == 2
    assert "tensorboard" in result.output and "Traceback" not in result.output


def test_payload_hook_follows_auto_export_and_never_raises(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    output, run_dir = tmp_path / "results", tmp_path / "train" / "checkpoints"
    launcher = {
        "evaluation": {"tasks": [{"name": MATH}]},
        "execution": {"auto_export": {"destinations": ["mlflow"]}},
        "export": {"mlflow": {"tracking_uri": offline["uri"], "experiment_name": "hpc-eval"}},
    }
    eval_dir = write_evaluation(output, run_dir, 100, launcher=launcher)
    assert export_finished(eval_dir) == {"destinations": ["mlflow"], "logged": {"mlflow": 1}}
    assert mlflow_points(offline["uri"]) == {MATH_METRIC: [(100, score(100))]}

    (tmp_path / "a-file").write_text("")
    broken = write_evaluation(
        tmp_path / "other",
        run_dir,
        200,
        launcher={  # a store MLflow cannot create
            **launcher,
            "export": {"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'a-file' / 'x.db'}"}},
        },
    )
    outcome = export_finished(broken)
    assert outcome["destinations"] == ["mlflow"] and outcome["error"]

    plain = write_evaluation(tmp_path / "plain", run_dir, 300)
    assert export_finished(plain) is None
    request = read_json(plain / "request.json")
    write_json(plain / "request.json", {**request, "export": {"to": ["mlflow"]}})  # destinations kept from the launcher
    assert export_finished(plain)["logged"] == {"mlflow": 1}  # MLFLOW_TRACKING_URI: no export section


@pytest.mark.slurm
@pytest.mark.slow
def test_a_real_evaluation_reaches_mlflow_and_the_launchers_own_tools(tmp_path, monkeypatch, start_stub, offline):
    """Submitted to the real Slurm and evaluated by the payload; then our export, `status --json`,
    and the launcher's `nel` as the README says to run it."""
    import json
    import os
    import subprocess
    import sys

    from slurm_helpers import CONFIGS, hpc_eval, submit_json, wait_for_state
    from support.fakeckpt import make_run

    monkeypatch.setenv("STUB_URL", start_stub(reply="[calculate_triangle_area(base=10, height=5)]").url)
    run = make_run(tmp_path / "train" / "checkpoints", [100])
    out = tmp_path / "out"
    (task,) = submit_json("-c", CONFIGS / "bfcl_host.yaml", "--checkpoint", run, "--all", "--output-dir", out)["jobs"][
        0
    ]["tasks"]
    assert wait_for_state(task["slurm_job_id"]) == "COMPLETED"

    (row,) = json.loads(hpc_eval("status", out, "--json").output)
    eval_dir = Path(row["eval_dir"])
    invocation = read_json(eval_dir / "summary.json")["invocation_id"]
    assert row["invocation_ids"] == [invocation]

    report = export([out], ["mlflow"], tracking_uri=offline["uri"])
    assert [item["iteration"] for item in report.logged["mlflow"]] == [100]
    points = mlflow_points(offline["uri"])
    assert points["bfcl/python_simple_ast_non_live"] == [(100, 25.0)]  # the score the stub's answers earn

    env = dict(
        os.environ,
        HOME=str(tmp_path),
        NEMO_EVALUATOR_TELEMETRY_LEVEL="0",
        NEMO_EVALUATOR_EXEC_DB_FILE=str(eval_dir / "launcher-state" / "exec-db" / "exec.v1.jsonl"),
    )
    nel = str(Path(sys.executable).parent / "nel")

    def run_nel(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)

    plain = json.loads(run_nel(nel, "status", invocation, "--json").stdout)
    assert "Executor hpc_eval not found" in plain[0]["data"]["error"]  # why the README gives python -m hpc_eval.nel
    ours = json.loads(
        run_nel(sys.executable, "-m", "hpc_eval.nel", str(eval_dir), "status", invocation, "--json").stdout
    )
    assert [(job["job_id"], job["status"]) for job in ours] == [(f"{invocation}.0", "success")]
    exported = run_nel(nel, "export", invocation, "--dest", "local", "--output-dir", str(tmp_path / "nel-export"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "nel-export" / invocation / f"{invocation}.0" / "processed_results.json").exists()
    assert invocation in run_nel(nel, "ls", "runs").stdout
