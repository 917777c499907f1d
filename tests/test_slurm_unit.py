"""slurm.py's pure parts: time formats, the checked `slurm:` section, squeue/sacct lines, the sbatch preview.

No Slurm needed: the parsers get text as squeue and sacct print it (`-P`/`-o` formats the queries ask for).
"""

from __future__ import annotations

import inspect

import pytest

from hpc_eval.errors import ConfigError
from hpc_eval.feasibility import check_feasible, memory_mb, parse_sinfo
from hpc_eval.job_states import SlurmJobState, array_tasks, parse_sacct, parse_squeue
from hpc_eval.slurm import (
    NO_TIME_LIMIT,
    SLURM_DEFAULTS,
    SlurmSettings,
    base_job_ids,
    sbatch_preview,
    settings_from,
    time_minutes,
)


@pytest.mark.parametrize(
    "value, minutes",
    [
        ("90", 90),
        (90, 90),  # MM
        ("90:30", 91),
        ("5:00", 5),  # MM:SS, seconds round up
        ("02:00:00", 120),
        ("1:02:03", 63),  # HH:MM:SS
        ("2-0", 2880),
        ("1-02", 1560),  # D-HH
        ("1-02:30", 1590),  # D-HH:MM
        ("1-00:00:01", 1441),  # D-HH:MM:SS
        ("0:30", 1),  # under a minute: one minute, as Slurm rounds
        (" 04:00:00 ", 240),
        ("0", NO_TIME_LIMIT),
        (0, NO_TIME_LIMIT),
        ("00:00:00", NO_TIME_LIMIT),  # Slurm's "no time limit"
        ("UNLIMITED", NO_TIME_LIMIT),
        ("infinite", NO_TIME_LIMIT),
    ],
)
def test_time_minutes_reads_every_slurm_form(value, minutes):
    assert time_minutes(value, "c.yaml") == minutes


@pytest.mark.parametrize("value", ["xyz", "", "1:2:3:4", "-5", "1-", "2h", "1.5", True, None])
def test_time_minutes_refuses_what_slurm_would(value):
    with pytest.raises(ConfigError, match=r"^c\.yaml: slurm\.time .* is not a Slurm time; write MINUTES"):
        time_minutes(value, "c.yaml")


def test_time_zero_is_no_limit_and_keeps_the_signal_delay():
    settings = SlurmSettings.from_dict({"time": 0}, "c.yaml")
    assert (settings.time_min, settings.signal_delay) == (0, 120)
    short = SlurmSettings.from_dict({"time": "2"}, "c.yaml")  # USR2 must come before a 2-minute limit
    assert (short.time_min, short.signal_delay) == (2, 60)


def test_defaults_are_the_dataclass_defaults():
    assert SlurmSettings.from_dict({}, "c.yaml") == SlurmSettings() == SlurmSettings.from_dict(None, "c.yaml")
    assert SlurmSettings().as_dict() == SLURM_DEFAULTS
    assert SLURM_DEFAULTS["time"] == "02:00:00" and SLURM_DEFAULTS["gpus_per_node"] == 1


@pytest.mark.parametrize(
    "key, value, kept",
    [
        ("gpus_per_node", 0, 0),
        ("gpus_per_node", "2", 2),
        ("gpus_per_node", "a100:2", "a100:2"),
        ("cpus_per_task", 16, 16),
        ("nodes", "2", 2),
        ("array_parallelism", 1, 1),
        ("max_array_size", None, None),
        ("max_array_size", 500, 500),
        ("signal_delay_s", 0, 0),
        ("max_requeues", 0, 0),
        ("mem", "64G", "64G"),
        ("mem", "512m", "512m"),
        ("mem", 64000, 64000),
        ("mem", None, None),
        ("partition", "gpu", "gpu"),
        ("partition", "gpu,debug", "gpu,debug"),
        ("account", "proj-1_a", "proj-1_a"),
        ("qos", "", ""),
        ("constraint", "a100&ib", "a100&ib"),
        ("constraint", "[rack1|rack2]", "[rack1|rack2]"),
        ("exclusive", True, True),
        ("exclusive", "user", "user"),
        ("exclusive", None, None),
        ("additional_parameters", {"mail-type": "END", "requeue": True}, {"mail-type": "END", "requeue": True}),
        ("srun_args", ["--container-image=x"], ["--container-image=x"]),
        ("setup", ["module load cuda"], ["module load cuda"]),
        ("time", "04:00:00", "04:00:00"),
        ("time", 0, 0),
    ],
)
def test_settings_keep_valid_values(key, value, kept):
    assert getattr(SlurmSettings.from_dict({key: value}, "c.yaml"), key) == kept


@pytest.mark.parametrize(
    "key, value, takes",
    [
        ("gpus_per_node", "two", "a GPU count >= 0"),
        ("gpus_per_node", -1, "a GPU count >= 0"),
        ("gpus_per_node", True, "a GPU count >= 0"),
        ("gpus_per_node", 1.5, "a GPU count >= 0"),
        ("cpus_per_task", "abc", "a whole number >= 1"),
        ("cpus_per_task", 0, "a whole number >= 1"),
        ("nodes", None, "a whole number >= 1"),
        ("array_parallelism", -3, "a whole number >= 1"),
        ("max_array_size", 0, "a whole number >= 1"),
        ("signal_delay_s", -1, "a whole number >= 0"),
        ("max_requeues", "x", "a whole number >= 0"),
        ("mem", "1G;x", "a size such as 64G"),
        ("mem", "16GB", "a size such as 64G"),
        ("mem", -1, "a size such as 64G"),
        ("partition", "gpu debug", "a name"),
        ("account", "a'b", "a name"),
        ("qos", "x\nSBATCH", "a name"),
        ("partition", 3, "a name"),
        ("constraint", "a100;rm", "Slurm features"),
        ("exclusive", "maybe", "true, false or one of"),
        ("additional_parameters", ["mail-type=END"], "a mapping of sbatch flag names"),
        ("additional_parameters", {"mail-type": "END\n#SBATCH --x"}, "a mapping of sbatch flag names"),
        ("additional_parameters", {"bad flag": 1}, "a mapping of sbatch flag names"),
        ("srun_args", "--overlap", "a list of one-line strings"),
        ("setup", ["a\nb"], "a list of one-line strings"),
    ],
)
def test_settings_refuse_values_slurm_would_not_take(key, value, takes):
    with pytest.raises(ConfigError) as raised:
        SlurmSettings.from_dict({key: value}, "c.yaml")
    message = str(raised.value)
    assert message.startswith(f"c.yaml: slurm.{key}: {value!r} is not valid; it takes {takes}")
    assert "\n" not in message.replace(repr(value), "")


def test_settings_refuse_an_unknown_key():
    with pytest.raises(
        ConfigError, match=r"^c\.yaml: unknown key slurm\.gpus; allowed slurm keys are .*additional_parameters"
    ):
        SlurmSettings.from_dict({"gpus": 2}, "c.yaml")


def test_overrides_apply_on_top_and_are_checked():
    base = SlurmSettings.from_dict({"partition": "gpu", "time": "01:00:00"}, "c.yaml")
    assert base.with_overrides({"partition": None, "time": None}, "c.yaml") is base  # None: not given
    assert base.with_overrides({"time": "0:30:00", "gpus_per_node": 4}, "c.yaml") == SlurmSettings(
        partition="gpu", time="0:30:00", gpus_per_node=4
    )
    with pytest.raises(ConfigError, match=r"slurm\.time 'soon' is not a Slurm time"):
        base.with_overrides({"time": "soon"}, "c.yaml")


def test_a_recorded_request_round_trips():
    settings = SlurmSettings.from_dict(
        {"mem": "8G", "setup": ["echo hi"], "additional_parameters": {"comment": "x"}}, "c.yaml"
    )
    assert settings_from(settings.as_dict(), None, "request.json") == settings
    assert settings_from(settings.as_dict(), {"array_parallelism": 2}, "request.json").array_parallelism == 2


def test_base_job_ids_ask_for_an_array_once():
    assert base_job_ids(["12_3", "12_4", "7", "12"]) == ["12", "7"]


def test_squeue_lines_keep_live_jobs_only():
    output = "\n".join(
        [
            "41|RUNNING|1:02|None",
            "42_0|PENDING|0:00|Priority",
            "42_1|COMPLETED|0:05|None",  # with -j, squeue still shows a job that just ended
            "43_[2-9%4]|PENDING|0:00|JobArrayTaskLimit",
            "garbage",
        ]
    )
    states = parse_squeue(output, ["41", "42_0", "42_1", "43_2", "44"])
    assert states == {"41": SlurmJobState("RUNNING", "1:02", ""), "42_0": SlurmJobState("PENDING", "0:00", "Priority")}


def test_sacct_lines_give_state_and_reason():
    output = "\n".join(
        [
            "51|COMPLETED|0:0|00:01:00",
            "52|FAILED|1:0|00:00:05",
            "53|CANCELLED by 1000|0:15|00:02:00",
            "54_0|TIMEOUT|0:0|00:10:00",
            "55|NODE_FAIL+|0:0|00:00:01",
            "56|",  # too few fields: skipped
            "6_[0-499%32]|CANCELLED by 0|0:0|00:00:00",  # a folded array line (pending tasks cancelled)
        ]
    )
    states = parse_sacct(output, ["51", "52", "53", "54_0", "55", "56", "57", "6_0", "6_499", "6_500"])
    cancelled = SlurmJobState("CANCELLED", "00:00:00", "CANCELLED by 0")
    assert states == {
        "51": SlurmJobState("COMPLETED", "00:01:00", ""),
        "52": SlurmJobState("FAILED", "00:00:05", "exit code 1:0"),
        "53": SlurmJobState("CANCELLED", "00:02:00", "CANCELLED by 1000"),
        "54_0": SlurmJobState("TIMEOUT", "00:10:00", ""),
        "55": SlurmJobState("NODE_FAIL", "00:00:01", ""),
        "6_0": cancelled,
        "6_499": cancelled,  # the folded line covers 6_0..6_499, not 6_500
    }


def test_folded_sacct_lines_expand_to_their_tasks_and_a_task_line_of_its_own_wins():
    output = "\n".join(
        [
            "7_[1,3-5]|CANCELLED by 0|0:0|00:00:00|hpc-eval:run:4ckpts",
            "7_4|COMPLETED|0:0|00:00:09|hpc-eval:run:4ckpts",  # ran before the cancel
            "8_[2%1]|PENDING|0:0|00:00:00|x",
            "9_[a-b]|CANCELLED|0:0|00:00:00|x",  # not a task list: ignored
            "10|CANCELLED by 0|0:0|00:00:00|x",  # an array cancelled before any task started: its bare id
        ]
    )
    states = parse_sacct(output, ["7_0", "7_1", "7_3", "7_4", "7_5", "8_2", "9_a", "10_0", "10_7"])
    assert {job: state.state for job, state in states.items()} == {
        "7_1": "CANCELLED",
        "7_3": "CANCELLED",
        "7_4": "COMPLETED",
        "7_5": "CANCELLED",
        "8_2": "PENDING",
        "10_0": "CANCELLED",
        "10_7": "CANCELLED",
    }
    assert states["7_1"].name == "hpc-eval:run:4ckpts"
    assert array_tasks("7_[1,3-5]") == ["7_1", "7_3", "7_4", "7_5"] and array_tasks("7_1") == []


NODES = parse_sinfo("debug*|vm|8|23081|gpu:2\ngpu|vm|8|23081|gpu:2\nbig|b1|64|512000|gpu:a100:4(S:0-1),gpu:h100:2\n")


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"partition": "gpu", "cpus_per_task": 16},
            "slurm.cpus_per_task=16 but the largest node of partition gpu has 8 CPUs; set slurm.cpus_per_task",
        ),
        (
            {"cpus_per_task": 64},
            "slurm.cpus_per_task=64 but the largest node of partition debug has 8 CPUs; set slurm.cpus_per_task",
        ),
        (
            {"partition": "gpu", "mem": "64G"},
            "slurm.mem=64G but the largest node of partition gpu has 23081 MB of memory; set slurm.mem",
        ),
        (
            {"partition": "gpu", "gpus_per_node": 3},
            "slurm.gpus_per_node=3 but the largest node of partition gpu has 2 GPUs; set slurm.gpus_per_node",
        ),
        (
            {"partition": "big", "gpus_per_node": "h100:4"},
            "slurm.gpus_per_node=h100:4 but the largest node of partition big has 2 h100 GPUs",
        ),
        (
            {"partition": "gpus"},
            "slurm.partition=gpus: no such partition on this cluster (it has big, debug, gpu); set slurm.partition",
        ),
        ({"partition": "gpu", "nodes": 2}, "slurm.nodes=2 but partition gpu has 1 node(s)"),
    ],
)
def test_an_infeasible_request_is_refused_with_the_key_and_the_largest_node(values, message):
    with pytest.raises(ConfigError) as refused:
        check_feasible(SlurmSettings.from_dict(values, "c.yaml"), NODES)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_request_a_node_can_hold_passes():
    for values in (
        {},
        {"partition": "gpu", "cpus_per_task": 8, "mem": "20G", "gpus_per_node": 2},
        {"partition": "big", "gpus_per_node": "a100:4", "mem": 500000},
        {"partition": "debug,big", "cpus_per_task": 64},
    ):
        check_feasible(SlurmSettings.from_dict(values, "c.yaml"), NODES)
    assert NODES[2].gpus() == 6 and NODES[2].gpus("a100") == 4 and memory_mb("2T") == 2 * 1024 * 1024


def test_submitit_private_sbatch_api_has_the_signature_the_preview_uses(tmp_path):
    """Fails when submitit changes `_make_sbatch_string` or `_submitit_command_str` (pyproject pins its minor version)."""
    import submitit
    from submitit.slurm.slurm import _make_sbatch_string

    accepted = set(inspect.signature(_make_sbatch_string).parameters)
    executor = submitit.SlurmExecutor(folder=tmp_path)
    assert isinstance(inspect.getattr_static(submitit.SlurmExecutor, "_submitit_command_str"), property)
    settings = SlurmSettings.from_dict(
        {"partition": "gpu", "mem": "8G", "exclusive": True, "account": "a", "qos": "q", "constraint": "c"}, "c.yaml"
    )
    from hpc_eval.slurm import make_executor

    passed = {"command", "folder", "map_count", *make_executor(tmp_path, settings, "x").parameters}
    assert passed <= accepted, passed - accepted
    assert "submitit.core._submit" in executor._submitit_command_str


def test_sbatch_preview_renders_one_job_and_an_array(tmp_path):
    settings = SlurmSettings.from_dict(
        {
            "partition": "gpu",
            "time": "0",
            "gpus_per_node": "a100:2",
            "mem": "8G",
            "array_parallelism": 4,
            "additional_parameters": {"mail-type": "END"},
        },
        "c.yaml",
    )
    one = sbatch_preview(settings, tmp_path, "hpc-eval:run:iter", 1).splitlines()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=0",
        "#SBATCH --gpus-per-node=a100:2",
        "#SBATCH --mem=8G",
        "#SBATCH --mail-type=END",
        "#SBATCH --job-name=hpc-eval:run:iter",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in one
    assert not any(line.startswith("#SBATCH --array") for line in one)
    assert "#SBATCH --array=0-9%4" in sbatch_preview(settings, tmp_path, "hpc-eval:run:10ckpts", 10).splitlines()


@pytest.mark.parametrize(
    "override, key",
    [
        ("slurm.gpus_per_node=two", "gpus_per_node"),
        ("slurm.gpus_per_node=-1", "gpus_per_node"),
        ("slurm.cpus_per_task=abc", "cpus_per_task"),
        ("slurm.mem=1G;x", "mem"),
        ("slurm.time=xyz", "time"),
        ("slurm.gpus=2", "gpus"),
    ],
)
def test_submit_refuses_a_bad_slurm_value_before_writing_anything(tmp_path, monkeypatch, override, key):
    import tempfile

    from click.testing import CliRunner

    from hpc_eval.cli import main

    for name in ("cwd", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where --dry-run would save
    result = CliRunner().invoke(
        main, ["submit", "-c", "tiny_chat", "--dry-run", "--output-dir", str(tmp_path / "out"), override]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and f"slurm.{key}" in lines[0], result.output
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["cwd", "tmp"]
