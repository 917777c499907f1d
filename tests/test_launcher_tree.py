"""launcher_tree.py on trees written in tmp_path the way the launcher writes them (results.yml: real harness output)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_eval import launcher_tree as tree

DATA = Path(__file__).parent / "data"
INVOCATION = "20260101_120000-0123456789abcdef"


def task(root: Path, name: str, *, exit_text: str | None = None, results: str | None = None, log: str = "") -> Path:
    task_dir = root / INVOCATION / name
    (task_dir / "logs").mkdir(parents=True)
    (task_dir / "artifacts").mkdir()
    if exit_text is not None:
        (task_dir / "logs" / "stage.exit").write_text(exit_text)
    if results is not None:
        (task_dir / "artifacts" / "results.yml").write_text((DATA / results).read_text())
    if log:
        (task_dir / "logs" / "client_stdout.log").write_text(log)
    return task_dir


@pytest.mark.parametrize(
    "text, code",
    [
        ("2026-01-01T12:05:00Z 0\n", 0),
        ("2026-01-01T12:05:00Z 137", 137),
        ("0", 0),
        ("  3  \n", 3),
        ("", None),
        ("2026-01-01T12:05:00Z", None),
        ("2026-01-01T12:05:00Z done", None),
    ],
)
def test_read_stage_exit_forms(tmp_path, text, code):
    assert tree.read_stage_exit(task(tmp_path, "t.0", exit_text=text)) == code


def test_read_stage_exit_without_the_file_is_none(tmp_path):
    assert tree.read_stage_exit(task(tmp_path, "t.0")) is None


def test_read_metrics_names_task_metric_and_score():
    # `task/metric` where the score is named like the metric, else `task/metric/score`
    assert tree.read_metrics(DATA / "results_bfcl.yml") == {
        "bfcl/live_overall_acc": 0.0,
        "bfcl/multi_turn_overall_acc": 0.0,
        "bfcl/non_live_overall_acc": 0.93,
        "bfcl/python_simple_ast_non_live": 25.0,
    }
    assert tree.read_metrics(DATA / "results_math.yml") == {"math_test_500_nemo/score/micro": 0.5}


def test_task_outcome_success_failure_and_killed(tmp_path):
    ok = tree.task_outcome(task(tmp_path, "bfcl.0", exit_text="t 0\n", results="results_bfcl.yml"))
    assert ok["status"] == "success" and ok["exit_code"] == 0 and ok["metrics"]["bfcl/non_live_overall_acc"] == 0.93
    failed = tree.task_outcome(
        task(
            tmp_path, "math.1", exit_text="t 2\n", results="results_math.yml", log="a\n\nTraceback\nValueError: boom\n"
        )
    )
    assert failed["status"] == "failed" and failed["metrics"] == {}  # a results.yml is trusted only after exit 0
    assert failed["reason"].startswith("exit code 2; see ") and failed["reason"].endswith(
        "client_stdout.log: a | Traceback | ValueError: boom"
    )  # last 3 non-blank lines
    missing = tree.task_outcome(task(tmp_path, "math.2", exit_text="t 0\n"))
    assert missing["status"] == "failed" and missing["reason"].startswith("no artifacts/results.yml; see ")
    assert missing["reason"].endswith("(no client_stdout.log)")
    killed = tree.task_outcome(task(tmp_path, "math.3", results="results_math.yml"))
    assert killed["status"] == "killed" and "without stage.exit" in killed["reason"]


def test_outcomes_over_invocations_keep_the_newest_success(tmp_path):
    task(tmp_path, "bfcl.0", exit_text="t 0\n", results="results_bfcl.yml")
    later = tmp_path / "20260102_090000-fedcba9876543210" / "bfcl.0"
    (later / "logs").mkdir(parents=True)
    (later / "logs" / "stage.exit").write_text("t 1\n")  # a forced re-run that failed
    (tmp_path / "not-an-invocation" / "x.0").mkdir(parents=True)
    outcomes = tree.launcher_tree_outcomes(tmp_path)
    assert list(outcomes) == ["bfcl.0"] and outcomes["bfcl.0"]["status"] == "success"


def test_stage_files_invocation_dirs_and_logs(tmp_path):
    task_dir = task(tmp_path, "t.0", exit_text="t 0\n", log="hello\n")
    for stage in tree.STAGE_FILES:
        tree.stage_file(task_dir, stage).write_text("x")
    assert tree.is_running(task_dir) and not tree.was_interrupted(task_dir)
    tree.clear_stages(task_dir)
    assert not any(tree.stage_file(task_dir, stage).exists() for stage in tree.STAGE_FILES)
    assert not tree.is_running(task_dir) and tree.read_stage_exit(task_dir) is None
    (task_dir / "artifacts" / ".nemo_evaluator_interrupted").touch()
    assert tree.was_interrupted(task_dir)
    assert tree.find_invocation_dir(tmp_path, "0123456789abcdef") == tmp_path / INVOCATION
    assert tree.find_invocation_dir(tmp_path, "nope") is None
    assert tree.new_invocation_dir(tmp_path, "20260101_120000", "0123456789abcdef") == tmp_path / INVOCATION
    assert tree.task_logs(tmp_path) == [task_dir / "logs" / "client_stdout.log"]
