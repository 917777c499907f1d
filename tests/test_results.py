"""`hpc-eval results`: scores per training step, from output trees holding real results.yml files.

Each evaluation is laid out as the submit side and the payload leave it: request.json,
launcher_config.yaml, the launcher's <timestamp>-<invocation>/<task>.<i>/ tree with logs/stage.exit
and artifacts/results.yml (copies of real harness output), and, where the payload finished, a
summary.json built with `launcher_tree.task_outcome`, as the payload builds it (it reads results.yml with `read_metrics`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpc_eval import results
from hpc_eval.cli import main
from hpc_eval.errors import UsageError
from hpc_eval.launcher_tree import task_outcome
from hpc_eval.store import write_json

DATA = Path(__file__).parent / "data"
BFCL = "bfcl.bfclv3_ast_prompting"
MATH = "simple_evals.math_test_500_nemo"
RUN = "llama-8b"
CONFIG_HASH = "0123abcd4567"
INVOCATION = "20260101_120000-0123456789abcdef"

# The real files' main score, changed per checkpoint so that each row shows where its values came from.
REAL_SCORE = {BFCL: "0.93", MATH: "0.5"}
RESULTS_FILE = {BFCL: "results_bfcl.yml", MATH: "results_math.yml"}

BFCL_METRICS = [
    "bfcl/live_overall_acc",
    "bfcl/multi_turn_overall_acc",
    "bfcl/non_live_overall_acc",
    "bfcl/python_simple_ast_non_live",
]
MATH_METRIC = "math_test_500_nemo/score/micro"


def write_task(invocation: Path, task: str, index: int, exit_code: int | None, score: str | None) -> Path:
    """A launcher task dir; `score` replaces the real file's score (None: no results.yml)."""
    task_dir = invocation / f"{task}.{index}"
    (task_dir / "logs").mkdir(parents=True)
    (task_dir / "artifacts").mkdir()
    (task_dir / "logs" / "client_stdout.log").write_text("evaluating\n")
    if exit_code is not None:
        (task_dir / "logs" / "stage.exit").write_text(f"2026-01-01T12:05:00Z {exit_code}\n")
    if score is not None:
        text = (DATA / RESULTS_FILE[task]).read_text()
        assert f"value: {REAL_SCORE[task]}\n" in text
        text = text.replace(f"value: {REAL_SCORE[task]}\n", f"value: {score}\n")
        (task_dir / "artifacts" / "results.yml").write_text(text)
    return task_dir


def write_evaluation(
    root: Path,
    step: int | None,
    tasks: list[tuple[str, int | None, str | None]],
    *,
    summary: str | None,
    run: str = RUN,
    config_hash: str = CONFIG_HASH,
    created_at: str = "2026-01-01T12:00:00+0000",
    task_filters: list[str] | None = None,
) -> Path:
    """An evaluation directory; `tasks` are (task name, stage.exit code, score) in config order.

    `summary` is the state the payload recorded in summary.json, or None when it wrote none yet.
    """
    iteration_folder = f"iter_{step:07d}" if step is not None else "endpoint"
    eval_dir = root / run / iteration_folder / config_hash
    eval_dir.mkdir(parents=True)
    checkpoint = f"/ckpt/{run}/checkpoints/{iteration_folder}" if step is not None else None
    write_json(
        eval_dir / "request.json",
        {
            "run": run,
            "iteration": step,
            "checkpoint": checkpoint,
            "config_hash": config_hash,
            "created_at": created_at,
            "dry_run": False,
            "task_filters": task_filters,
            "hpc_eval_version": "0.1.0",
        },
    )
    launcher_config = {
        "execution": {"type": "local", "output_dir": str(eval_dir)},
        "deployment": {"type": "none"},
        "evaluation": {"tasks": [{"name": name} for name, _, _ in tasks]},
    }
    (eval_dir / "launcher_config.yaml").write_text(yaml.safe_dump(launcher_config))
    invocation = eval_dir / INVOCATION
    chosen = [
        task
        for index, task in enumerate(tasks)
        if not task_filters or task[0] in task_filters or f"{task[0]}.{index}" in task_filters
    ]
    task_dirs = [write_task(invocation, name, index, code, score) for index, (name, code, score) in enumerate(chosen)]
    if summary is not None:
        outcomes = {task_dir.name: task_outcome(task_dir) for task_dir in task_dirs}
        write_json(
            eval_dir / "summary.json",
            {"state": summary, "slurm_job_id": "7", "tasks": outcomes, "invocation_id": INVOCATION.split("-")[1]},
        )
    return eval_dir


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Three checkpoints written out of step order: 3000 failed its math task, 2000 is still
    running (no summary.json: read from the launcher's tree), 1000 completed."""
    root = tmp_path / "results"
    write_evaluation(root, 3000, [(BFCL, 0, "0.95"), (MATH, 1, None)], summary="FAILED")
    write_evaluation(root, 1000, [(BFCL, 0, "0.9"), (MATH, 0, "0.25")], summary="COMPLETED")
    write_evaluation(root, 2000, [(BFCL, 0, "0.93"), (MATH, 0, "0.5")], summary=None)
    return root


def invoke(*args: str):
    result = CliRunner().invoke(main, ["results", *args])
    assert result.exit_code == 0, result.output
    return result


# ---- the library ----


def test_rows_are_checkpoints_in_step_order_with_missing_cells_as_none(output_dir):
    table = results.collect_results([output_dir])
    assert table.metrics == [*BFCL_METRICS, MATH_METRIC]
    assert table.records() == [
        {
            "run": RUN,
            "iteration": 1000,
            "config_hash": CONFIG_HASH,
            **dict(zip(BFCL_METRICS, [0.0, 0.0, 0.9, 25.0])),
            MATH_METRIC: 0.25,
        },
        {
            "run": RUN,
            "iteration": 2000,
            "config_hash": CONFIG_HASH,
            **dict(zip(BFCL_METRICS, [0.0, 0.0, 0.93, 25.0])),
            MATH_METRIC: 0.5,
        },
        {
            "run": RUN,
            "iteration": 3000,
            "config_hash": CONFIG_HASH,
            **dict(zip(BFCL_METRICS, [0.0, 0.0, 0.95, 25.0])),
            MATH_METRIC: None,
        },
    ]


def test_a_run_folder_or_one_evaluation_can_be_the_root(output_dir):
    assert [row.iteration for row in results.collect_results([output_dir / RUN]).rows] == [1000, 2000, 3000]
    only = results.collect_results([output_dir / RUN / "iter_0002000" / CONFIG_HASH])
    assert [row.iteration for row in only.rows] == [2000]


def test_results_yml_counts_only_when_stage_exit_says_zero(tmp_path):
    write_evaluation(tmp_path, 1000, [(BFCL, 1, "0.7"), (MATH, None, "0.6")], summary=None)
    table = results.collect_results([tmp_path])
    assert table.metrics == [] and table.records() == [{"run": RUN, "iteration": 1000, "config_hash": CONFIG_HASH}]


def test_a_requeued_summary_is_stale_and_the_tree_is_read(tmp_path):
    eval_dir = write_evaluation(tmp_path, 1000, [(BFCL, 0, "0.8"), (MATH, None, None)], summary="REQUEUED")
    write_task(eval_dir / "20260101_130000-0123456789abcdef", MATH, 1, 0, "0.75")  # the next attempt finished it
    assert results.collect_results([tmp_path]).records()[0][MATH_METRIC] == 0.75


def test_a_metric_from_two_launcher_tasks_gets_the_task_name(tmp_path):
    write_evaluation(tmp_path, 1000, [(BFCL, 0, "0.9"), (BFCL, 0, "0.8"), (MATH, 0, "0.5")], summary="COMPLETED")
    write_evaluation(tmp_path, 2000, [(BFCL, 0, "0.7"), (BFCL, 1, None), (MATH, 0, "0.5")], summary="FAILED")
    table = results.collect_results([tmp_path])
    prefixed = [f"{BFCL}.{index}/{metric}" for index in (0, 1) for metric in BFCL_METRICS]
    assert table.metrics == sorted(prefixed) + [MATH_METRIC]
    first, second = table.records()
    assert (first[f"{BFCL}.0/bfcl/non_live_overall_acc"], first[f"{BFCL}.1/bfcl/non_live_overall_acc"]) == (0.9, 0.8)
    assert (second[f"{BFCL}.0/bfcl/non_live_overall_acc"], second[f"{BFCL}.1/bfcl/non_live_overall_acc"]) == (0.7, None)


def test_two_configs_on_one_checkpoint_give_a_row_each_with_its_hash(tmp_path):
    write_evaluation(tmp_path, 1000, [(BFCL, 0, "0.9")], summary="COMPLETED", config_hash="aaaa11112222")
    write_evaluation(
        tmp_path, 1000, [(BFCL, 0, "0.5")], summary="COMPLETED", config_hash="bbbb33334444", created_at="2026-01-02"
    )
    records = results.collect_results([tmp_path]).select(["non_live_overall"]).records()
    assert records == [
        {"run": RUN, "iteration": 1000, "config_hash": "aaaa11112222", "bfcl/non_live_overall_acc": 0.9},
        {"run": RUN, "iteration": 1000, "config_hash": "bbbb33334444", "bfcl/non_live_overall_acc": 0.5},
    ]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            "table",
            "run       iteration  config_hash   bfcl/non_live_overall_acc\n"
            "llama-8b  1000       aaaa11112222  0.9\n"
            "llama-8b  1000       bbbb33334444  0.5\n",
        ),
        (
            "csv",
            "run,iteration,config_hash,bfcl/non_live_overall_acc\n"
            "llama-8b,1000,aaaa11112222,0.9\nllama-8b,1000,bbbb33334444,0.5\n",
        ),
        (
            "markdown",
            "| run | iteration | config_hash | bfcl/non_live_overall_acc |\n|---|---|---|---|\n"
            "| llama-8b | 1000 | aaaa11112222 | 0.9 |\n| llama-8b | 1000 | bbbb33334444 | 0.5 |\n",
        ),
    ],
)
def test_two_configs_on_one_checkpoint_show_apart_in_every_format(tmp_path, fmt, expected):
    write_evaluation(tmp_path, 1000, [(BFCL, 0, "0.9")], summary="COMPLETED", config_hash="aaaa11112222")
    write_evaluation(tmp_path, 1000, [(BFCL, 0, "0.5")], summary="COMPLETED", config_hash="bbbb33334444")
    assert invoke(str(tmp_path), "--format", fmt, "--metric", "non_live_overall").stdout == expected
    rows = json.loads(invoke(str(tmp_path), "--format", "json", "--metric", "non_live_overall").stdout)
    assert [(row["config_hash"], row["bfcl/non_live_overall_acc"]) for row in rows] == [
        ("aaaa11112222", 0.9),
        ("bbbb33334444", 0.5),
    ]


def test_evaluations_of_one_checkpoint_and_config_merge_into_one_row(tmp_path):
    write_evaluation(tmp_path, 1000, [(BFCL, 0, "0.9")], summary="COMPLETED")
    rerun = write_evaluation(tmp_path / "again", 1000, [(MATH, 0, "0.25")], summary="COMPLETED")
    (record,) = results.collect_results([tmp_path, tmp_path / "again"]).records()
    assert (record["bfcl/non_live_overall_acc"], record[MATH_METRIC]) == (0.9, 0.25)
    assert json.loads((rerun / "request.json").read_text())["config_hash"] == record["config_hash"] == CONFIG_HASH


def test_progress_is_reported_per_evaluation(output_dir):
    calls = []
    results.collect_results([output_dir], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_select_takes_exact_keys_substrings_and_globs(output_dir):
    table = results.collect_results([output_dir])
    assert table.select([MATH_METRIC]).metrics == [MATH_METRIC]
    assert table.select(["non_live"]).metrics == ["bfcl/non_live_overall_acc", "bfcl/python_simple_ast_non_live"]
    assert table.select(["bfcl/*_acc", "micro"]).metrics == [*BFCL_METRICS[:3], MATH_METRIC]
    with pytest.raises(UsageError, match="'nope' matches no column; available metrics: bfcl/live_overall_acc"):
        table.select(["micro", "nope"])


def test_missing_lists_checkpoint_and_task_pairs_without_a_result(output_dir):
    write_evaluation(output_dir, 4000, [(BFCL, None, None), (MATH, None, None)], summary=None)  # just submitted
    found = [item.to_dict() for item in results.missing([output_dir])]
    evaluation = str(output_dir / RUN / "iter_{:07d}" / CONFIG_HASH)
    assert found == [
        {"run": RUN, "iteration": 3000, "task": f"{MATH}.1", "eval_dir": evaluation.format(3000)},
        {"run": RUN, "iteration": 4000, "task": f"{BFCL}.0", "eval_dir": evaluation.format(4000)},
        {"run": RUN, "iteration": 4000, "task": f"{MATH}.1", "eval_dir": evaluation.format(4000)},
    ]


def test_missing_follows_the_launchers_task_filter_and_reindexing(tmp_path):
    write_evaluation(tmp_path, 1000, [(BFCL, 0, "0.9"), (MATH, 1, None)], summary="FAILED", task_filters=[f"{MATH}.1"])
    assert [item.task for item in results.missing([tmp_path])] == [f"{MATH}.0"]


def test_plot_draws_one_line_per_metric_and_saves_a_png(output_dir, tmp_path):
    figure = results.plot(results.collect_results([output_dir]), tmp_path / "scores.png")
    (axes,) = figure.axes
    assert [line.get_label() for line in axes.lines] == [*BFCL_METRICS, MATH_METRIC]
    assert list(axes.lines[2].get_xdata()) == [1000, 2000, 3000]
    assert list(axes.lines[2].get_ydata()) == [0.9, 0.93, 0.95]
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == ("training step", "score", RUN)
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_one_line_per_metric_and_run(output_dir, tmp_path):
    write_evaluation(output_dir, 500, [(BFCL, 0, "0.5"), (MATH, 0, "0.1")], summary="COMPLETED", run="mistral-7b")
    table = results.collect_results([output_dir]).select(["non_live_overall", "micro"])
    (axes,) = results.plot(table, tmp_path / "scores.png").axes
    assert [line.get_label() for line in axes.lines] == [
        f"{RUN}: bfcl/non_live_overall_acc",
        f"{RUN}: {MATH_METRIC}",
        "mistral-7b: bfcl/non_live_overall_acc",
        f"mistral-7b: {MATH_METRIC}",
    ]
    assert axes.get_title() == f"{RUN}, mistral-7b"


def test_plot_draws_one_line_per_metric_and_config(tmp_path):
    for step, scores in ((1000, ("0.9", "0.5")), (2000, ("0.95", "0.6"))):
        write_evaluation(tmp_path, step, [(BFCL, 0, scores[0])], summary="COMPLETED", config_hash="aaaa11112222")
        write_evaluation(tmp_path, step, [(BFCL, 0, scores[1])], summary="COMPLETED", config_hash="bbbb33334444")
    table = results.collect_results([tmp_path]).select(["non_live_overall"])
    (axes,) = results.plot(table, tmp_path / "scores.png").axes
    assert [line.get_label() for line in axes.lines] == [
        f"{RUN} [aaaa11112222]: bfcl/non_live_overall_acc",
        f"{RUN} [bbbb33334444]: bfcl/non_live_overall_acc",
    ]
    assert [list(line.get_ydata()) for line in axes.lines] == [[0.9, 0.95], [0.5, 0.6]]


def test_plot_refuses_when_no_checkpoint_has_a_step(tmp_path):
    write_evaluation(tmp_path, None, [(BFCL, 0, "0.9")], summary="COMPLETED")
    with pytest.raises(UsageError, match="nothing to plot"):
        results.plot(results.collect_results([tmp_path]), tmp_path / "scores.png")
    assert not (tmp_path / "scores.png").exists()


# ---- the command ----

HEADER = ["run", "iteration", "config_hash", *BFCL_METRICS, MATH_METRIC]


def test_table_format_is_aligned_with_a_marker_in_missing_cells(output_dir):
    assert invoke(str(output_dir)).stdout == (
        "run       iteration  config_hash   bfcl/live_overall_acc  bfcl/multi_turn_overall_acc  bfcl/non_live_overall_acc"
        "  bfcl/python_simple_ast_non_live  math_test_500_nemo/score/micro\n"
        "llama-8b  1000       0123abcd4567  0                      0                            0.9                      "
        "  25                               0.25\n"
        "llama-8b  2000       0123abcd4567  0                      0                            0.93                     "
        "  25                               0.5\n"
        "llama-8b  3000       0123abcd4567  0                      0                            0.95                     "
        "  25                               -\n"
    )


def test_csv_format_parses_with_empty_missing_cells(output_dir):
    text = invoke(str(output_dir), "--format", "csv").stdout
    assert text == (
        ",".join(HEADER) + "\n"
        "llama-8b,1000,0123abcd4567,0.0,0.0,0.9,25.0,0.25\n"
        "llama-8b,2000,0123abcd4567,0.0,0.0,0.93,25.0,0.5\n"
        "llama-8b,3000,0123abcd4567,0.0,0.0,0.95,25.0,\n"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["iteration"] for row in rows] == ["1000", "2000", "3000"] and rows[2][MATH_METRIC] == ""


def test_json_format_has_null_in_missing_cells(output_dir):
    rows = json.loads(invoke(str(output_dir), "--format", "json").stdout)
    assert rows == results.collect_results([output_dir]).records()
    assert [row["iteration"] for row in rows] == [1000, 2000, 3000] and rows[2][MATH_METRIC] is None


def test_markdown_format_has_a_header_separator(output_dir):
    result = invoke(str(output_dir), "--format", "markdown", "--metric", "non_live_overall", "--metric", "micro")
    assert result.stdout == (
        "| run | iteration | config_hash | bfcl/non_live_overall_acc | math_test_500_nemo/score/micro |\n"
        "|---|---|---|---|---|\n"
        "| llama-8b | 1000 | 0123abcd4567 | 0.9 | 0.25 |\n"
        "| llama-8b | 2000 | 0123abcd4567 | 0.93 | 0.5 |\n"
        "| llama-8b | 3000 | 0123abcd4567 | 0.95 | - |\n"
    )


def test_metric_selects_columns_and_an_unknown_one_is_a_usage_error(output_dir):
    assert invoke(str(output_dir), "--metric", "bfcl/python_*", "--format", "csv").stdout == (
        "run,iteration,config_hash,bfcl/python_simple_ast_non_live\n"
        "llama-8b,1000,0123abcd4567,25.0\nllama-8b,2000,0123abcd4567,25.0\nllama-8b,3000,0123abcd4567,25.0\n"
    )
    result = CliRunner().invoke(main, ["results", str(output_dir), "--metric", "mmlu"])
    assert result.exit_code == 2
    assert "Error: metric 'mmlu' matches no column" in result.output


def test_missing_flag_lists_the_pairs_without_a_result(output_dir):
    rows = json.loads(invoke(str(output_dir), "--missing", "--format", "json").stdout)
    assert rows == [
        {
            "run": RUN,
            "iteration": 3000,
            "task": f"{MATH}.1",
            "eval_dir": str(output_dir / RUN / "iter_0003000" / CONFIG_HASH),
        }
    ]
    assert invoke(str(output_dir), "--missing").stdout.splitlines()[0].split() == [
        "run",
        "iteration",
        "task",
        "eval_dir",
    ]


def test_plot_option_saves_the_png_and_still_prints_the_table(output_dir, tmp_path):
    result = invoke(str(output_dir), "--plot", str(tmp_path / "scores.png"), "--format", "csv")
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.splitlines()[0] == ",".join(HEADER)
    assert result.stderr == f"plot: {tmp_path / 'scores.png'}\n"


def test_default_root_is_results_and_a_pipe_gets_no_progress(output_dir, monkeypatch):
    monkeypatch.chdir(output_dir.parent)
    result = invoke("--format", "csv")
    assert len(result.stdout.splitlines()) == 4 and result.stderr == ""


# ---- which checkpoint (issue 12) ----


def test_runs_that_share_a_label_get_rows_of_their_own_and_a_note(tmp_path):
    from hpc_eval.identity import run_hash

    write_evaluation(tmp_path / "a", 1000, [(BFCL, 0, "0.9")], summary="COMPLETED")  # /ckpt/llama-8b/checkpoints
    other = write_evaluation(tmp_path / "b", 1000, [(BFCL, 0, "0.5")], summary="COMPLETED")
    request = json.loads((other / "request.json").read_text())
    request["checkpoint"] = "/elsewhere/llama-8b/checkpoints/iter_0001000"  # another project's run, same name
    write_json(other / "request.json", request)
    result = CliRunner().invoke(
        main, ["results", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "csv", "--metric", "non_live_overall"]
    )
    assert result.exit_code == 0, result.output
    first, second = (
        f"{RUN}-{run_hash('/ckpt/llama-8b/checkpoints')}",
        f"{RUN}-{run_hash('/elsewhere/llama-8b/checkpoints')}",
    )
    assert sorted(result.stdout.splitlines()[1:]) == sorted(
        [f"{first},1000,{CONFIG_HASH},0.9", f"{second},1000,{CONFIG_HASH},0.5"]
    )
    assert result.stderr == (
        f"note: 2 training runs share the label '{RUN}', shown apart: "
        f"{first} = /ckpt/llama-8b/checkpoints, {second} = /elsewhere/llama-8b/checkpoints\n"
    )


def test_scores_of_a_checkpoint_rewritten_since_are_marked(tmp_path):
    from hpc_eval.identity import fingerprint
    from support.fakeckpt import make_iter

    checkpoint = make_iter(tmp_path / "ckpt" / RUN / "checkpoints", 1000)
    eval_dir = write_evaluation(tmp_path / "out", 1000, [(BFCL, 0, "0.9")], summary="COMPLETED")
    request = json.loads((eval_dir / "request.json").read_text())
    write_json(
        eval_dir / "request.json", {**request, "checkpoint": str(checkpoint), "fingerprint": fingerprint(checkpoint)}
    )
    assert "checkpoint" not in results.collect_results([tmp_path / "out"]).records()[0]
    (checkpoint / ".metadata").write_bytes(b"\x80\x04fake rewritten by a relaunched run")
    (record,) = results.collect_results([tmp_path / "out"]).records()
    assert (record["iteration"], record["checkpoint"]) == (1000, "rewritten")
    shown = CliRunner().invoke(main, ["results", str(tmp_path / "out"), "--metric", "non_live_overall"])
    assert shown.stdout.splitlines()[0].split() == [
        "run",
        "iteration",
        "config_hash",
        "checkpoint",
        "bfcl/non_live_overall_acc",
    ]
    assert shown.stdout.splitlines()[1].split() == [RUN, "1000", CONFIG_HASH, "rewritten", "0.9"]
    assert "written again in place" in shown.stderr
