"""The config pipeline (hpc_eval.config) and the table of bad inputs through `hpc-eval submit`.

Nothing here needs Slurm: the bad-input table runs the real CLI with --dry-run (or stops before
it), and checks that every failure is one `Error:` line, exit code 2, with nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpc_eval.cli import main
from hpc_eval.config import TOOL_KEYS, load_config
from hpc_eval.errors import ConfigError
from hpc_eval.launcher import import_launcher
from hpc_eval.launcher_yaml import save_launcher_config
from hpc_eval.preflight import preflight
from support.fakeckpt import make_iter

ENV_VARS = ("NEMO_EVALUATOR_MODEL_URL", "NEMO_EVALUATOR_MODEL_ID", "NEMO_EVALUATOR_API_KEY_NAME")
TOKENIZER_KEY = ("evaluation", "nemo_evaluator_config", "config", "params", "extra", "tokenizer")

# A config with no deployment: the endpoint comes from the file itself.
ENDPOINT_YAML = """\
output_dir: ./results
execution:
  type: local
  output_dir: ${output_dir}
deployment:
  type: none
target:
  api_endpoint:
    url: http://localhost:9/v1/chat/completions
    model_id: some/model
    api_key_name: SOME_KEY
evaluation:
  tasks:
    - name: mmlu_instruct
"""

VLLM_YAML = """\
defaults:
  - execution: local
  - deployment: vllm
  - _self_
output_dir: ./results
execution:
  output_dir: ${output_dir}
deployment:
  served_model_name: my-model
  tensor_parallel_size: 1
evaluation:
  tasks:
    - name: mmlu_instruct
"""

# A generic deployment with every `???` of the group filled, so only the endpoint check is left.
GENERIC_YAML = """\
defaults:
  - execution: local
  - deployment: generic
  - _self_
output_dir: ./results
execution:
  output_dir: ${output_dir}
deployment:
  image: some/image:1
  command: serve /checkpoint
  served_model_name: my-model
  checkpoint_path: /nonexistent/iter_0000010
target:
  api_endpoint:
    url: http://localhost:9/v1/chat/completions
evaluation:
  tasks:
    - name: mmlu_instruct
"""


@pytest.fixture(scope="module", autouse=True)
def launcher_imported():
    """Import the launcher once, outside any CliRunner, so its log handlers hold the real stderr."""
    import_launcher()


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch):
    """An empty working directory, temp dir and HOME under tmp_path; no endpoint variables."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    dirs = {name: tmp_path / name for name in ("cwd", "tmp", "home", "configs")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.chdir(dirs["cwd"])
    monkeypatch.setattr(tempfile, "tempdir", str(dirs["tmp"]))
    monkeypatch.setenv("HOME", str(dirs["home"]))
    return dirs


def write(sandbox, name: str, content: str | bytes) -> Path:
    path = sandbox["configs"] / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def dig(data, keys):
    for key in keys:
        data = data[key]
    return data


@pytest.fixture
def iter_dir(tmp_path):
    return make_iter(tmp_path / "runs" / "llama" / "checkpoints", 2000)


# ---- finding configs ----


def test_builtin_tiny_chat_resolves():
    config = load_config("tiny_chat")
    assert config.source.name == "tiny_chat.yaml"
    assert config.launcher["deployment"]["type"] == "none"
    assert config.launcher["target"]["api_endpoint"]["url"] == "https://integrate.api.nvidia.com/v1/chat/completions"
    assert config.launcher["target"]["api_endpoint"]["api_key_name"] == "NVIDIA_API_KEY"
    assert [task["name"] for task in config.launcher["evaluation"]["tasks"]] == ["mmlu_instruct"]
    assert config.launcher["evaluation"]["nemo_evaluator_config"]["config"]["params"]["limit_samples"] == 1


def test_tiny_chat_endpoint_follows_environment(monkeypatch):
    monkeypatch.setenv("NEMO_EVALUATOR_MODEL_URL", "http://example.test/v1/chat/completions")
    monkeypatch.setenv("NEMO_EVALUATOR_MODEL_ID", "my/model")
    endpoint = load_config("tiny_chat").launcher["target"]["api_endpoint"]
    assert (endpoint["url"], endpoint["model_id"]) == (
        "http://example.test/v1/chat/completions",
        "my/model",
    )


def test_builtin_default_resolves_with_checkpoint(iter_dir):
    config = load_config("default", checkpoint=iter_dir)
    assert config.source.name == "default.yaml"
    assert config.launcher["deployment"]["type"] == "generic"
    assert config.launcher["execution"]["type"] == "hpc_eval"
    assert config.checkpoint_path == str(iter_dir)
    assert config.serves_checkpoint


def test_yaml_path_absolute_and_relative(sandbox, monkeypatch):
    path = write(sandbox, "mine.yaml", ENDPOINT_YAML)
    assert load_config(str(path)).source == path.resolve()
    monkeypatch.chdir(sandbox["configs"].parent)
    relative = load_config("configs/mine.yaml")
    assert relative.source == path.resolve()
    assert relative.launcher["target"]["api_endpoint"]["model_id"] == "some/model"
    monkeypatch.chdir(sandbox["configs"])
    assert load_config("mine.yaml").source == path.resolve()  # a bare file name with .yaml is a path


def test_unknown_builtin_name_lists_builtins():
    with pytest.raises(ConfigError, match=r"unknown config 'nosuch'.*\['default', 'tiny_chat'\]"):
        load_config("nosuch")


# ---- composing a Hydra defaults list against the launcher's packaged groups ----


def test_defaults_list_is_composed_with_launcher_groups(sandbox):
    packaged = Path(__import__("nemo_evaluator_launcher").__file__).parent / "configs" / "deployment" / "vllm.yaml"
    vllm_group = yaml.safe_load(packaged.read_text())
    config = load_config(str(write(sandbox, "vllm.yaml", VLLM_YAML)), ["deployment.checkpoint_path=/ckpt/hf_model"])
    deployment = config.launcher["deployment"]
    assert deployment["type"] == "vllm"
    assert deployment["image"] == vllm_group["image"]  # from the group, not from the file
    assert deployment["gpu_memory_utilization"] == vllm_group["gpu_memory_utilization"]
    assert deployment["tensor_parallel_size"] == 1  # the file (_self_) wins over the group's 8
    assert "--served-model-name my-model" in deployment["command"]  # the group's interpolations resolved
    assert config.launcher["execution"]["type"] == "local"
    assert "mode" in config.launcher["execution"]  # a key only the execution group has
    assert "defaults" not in config.launcher


def test_a_group_missing_value_is_reported(sandbox):
    # deployment/vllm.yaml has checkpoint_path: ??? and the file does not set it
    with pytest.raises(ConfigError, match=r"no value for deployment\.checkpoint_path.*--checkpoint"):
        load_config(str(write(sandbox, "vllm.yaml", VLLM_YAML)))


def test_files_own_missing_marker_survives_composition(sandbox):
    # The generic group says checkpoint_path: null; the file's ??? must not be lost in the merge.
    path = write(
        sandbox,
        "generic.yaml",
        GENERIC_YAML.replace("/nonexistent/iter_0000010", "???").replace(
            "    url: http://localhost:9/v1/chat/completions\n", "    {}\n"
        ),
    )
    with pytest.raises(
        ConfigError,
        match=r"no value for deployment\.checkpoint_path \(marked \?\?\?\).*--checkpoint",
    ):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"deployment\.checkpoint_path"):
        load_config("default")


def test_unknown_group_option_is_a_config_error(sandbox):
    path = write(
        sandbox,
        "badgroup.yaml",
        VLLM_YAML.replace("deployment: vllm", "deployment: nosuchdeployment"),
    )
    with pytest.raises(ConfigError, match=r"badgroup\.yaml: cannot compose its defaults list.*nosuchdeployment"):
        load_config(str(path))


# ---- dotlist overrides ----


def test_override_scalar_and_nested():
    config = load_config(
        "tiny_chat",
        [
            "evaluation.nemo_evaluator_config.config.params.limit_samples=5",
            "target.api_endpoint.model_id=other/model",
        ],
    )
    assert config.launcher["evaluation"]["nemo_evaluator_config"]["config"]["params"]["limit_samples"] == 5
    assert config.launcher["target"]["api_endpoint"]["model_id"] == "other/model"


def test_override_list_parses_as_list():
    config = load_config("tiny_chat", ["task_filters=[a,b]"])
    assert config.task_filters == ["a", "b"]


def test_cli_tasks_win_over_task_filters():
    config = load_config("tiny_chat", ["task_filters=[a,b]"], tasks=("mmlu_instruct",))
    assert config.task_filters == ["mmlu_instruct"]


def test_override_plus_adds_a_new_key():
    config = load_config("tiny_chat", ["+new.key=1"])
    assert config.launcher["new"] == {"key": 1}


def test_override_unknown_key_without_plus_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown key 'new\.key'.*write '\+new\.key=1'"):
        load_config("tiny_chat", ["new.key=1"])


def test_override_tilde_deletes():
    config = load_config("tiny_chat", ["~target.api_endpoint.api_key_name"])
    assert "api_key_name" not in config.launcher["target"]["api_endpoint"]
    assert "url" in config.launcher["target"]["api_endpoint"]


def test_override_tilde_of_missing_key_is_an_error():
    with pytest.raises(ConfigError, match=r"'~nope'.*no key 'nope'"):
        load_config("tiny_chat", ["~nope"])


def test_override_slurm_keys_need_no_plus_and_unknown_ones_are_refused():
    config = load_config("tiny_chat", ["slurm.time=01:00:00", "slurm.partition=gpu"])
    assert (config.slurm.time, config.slurm.partition) == ("01:00:00", "gpu")
    for item in (
        "slurm.bogus=1",
        "+slurm.bogus=1",
    ):  # with `+` it would otherwise be ignored silently
        with pytest.raises(ConfigError, match=r"unknown key slurm\.bogus.*additional_parameters"):
            load_config("tiny_chat", [item])


def test_deleting_a_slurm_key_falls_back_to_its_default():
    assert load_config("tiny_chat", ["~slurm.time"]).slurm.time == "02:00:00"


# ---- --checkpoint, interpolation, tool keys ----


def test_checkpoint_sets_path_and_tokenizer_follows(iter_dir, tmp_path):
    config = load_config("default", checkpoint=iter_dir)
    assert config.launcher["deployment"]["checkpoint_path"] == str(iter_dir)
    assert dig(config.launcher, TOKENIZER_KEY) == f"{iter_dir}/tokenizer"
    other = make_iter(tmp_path / "runs" / "llama" / "checkpoints", 4000)
    again = config.for_checkpoint(other)
    assert again.checkpoint_path == str(other)
    assert dig(again.launcher, TOKENIZER_KEY) == f"{other}/tokenizer"


def test_checkpoint_relative_path_is_made_absolute(iter_dir, monkeypatch):
    monkeypatch.chdir(iter_dir.parent)
    assert load_config("default", checkpoint=iter_dir.name).checkpoint_path == str(iter_dir)


def test_interpolations_resolve_then_tool_keys_are_stripped(sandbox, tmp_path):
    text = (
        ENDPOINT_YAML.replace("model_id: some/model", "model_id: ${run.env.model}")
        + """\
dry_run: true
task_filters: [mmlu_instruct]
run:
  env:
    model: nemotron/nano
    gpus: 2
slurm:
  gpus_per_node: ${run.env.gpus}
"""
    )
    out = tmp_path / "out"
    config = load_config(str(write(sandbox, "interp.yaml", text)), output_dir=out)
    assert config.launcher["execution"]["output_dir"] == str(out)
    assert config.launcher["target"]["api_endpoint"]["model_id"] == "nemotron/nano"
    assert config.slurm.gpus_per_node == 2
    assert config.output_dir == out
    assert config.dry_run is True
    assert config.task_filters == ["mmlu_instruct"]
    for key in TOOL_KEYS:
        assert key not in config.launcher, key


def test_default_resolves_nemotron_run_env(iter_dir):
    config = load_config("default", checkpoint=iter_dir)
    assert config.launcher["deployment"]["image"] == "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano"
    assert "--num_gpus 1 " in config.launcher["deployment"]["command"]
    assert config.slurm.gpus_per_node == 1
    assert set(TOOL_KEYS).isdisjoint(config.launcher)


def test_unresolvable_interpolation_names_the_key(sandbox):
    path = write(
        sandbox,
        "dangling.yaml",
        ENDPOINT_YAML.replace("model_id: some/model", "model_id: ${run.env.nothing}"),
    )
    with pytest.raises(ConfigError, match=r"dangling\.yaml: cannot resolve 'target\.api_endpoint\.model_id'"):
        load_config(str(path))


def test_save_launcher_config_has_no_tool_keys_and_points_at_eval_dir(iter_dir, tmp_path):
    config = load_config("default", checkpoint=iter_dir, output_dir=tmp_path / "results")
    eval_dir = tmp_path / "results" / "llama" / "iter_0002000" / config.config_hash()
    eval_dir.mkdir(parents=True)
    path = save_launcher_config(config, eval_dir)
    assert path == eval_dir / "launcher_config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert set(TOOL_KEYS).isdisjoint(saved)
    assert saved["execution"]["output_dir"] == str(eval_dir)
    assert saved["deployment"]["checkpoint_path"] == str(iter_dir)
    assert dig(saved, TOKENIZER_KEY) == f"{iter_dir}/tokenizer"
    assert "${" not in path.read_text()


# ---- config hash ----


def test_config_hash_same_for_two_checkpoints(tmp_path, iter_dir):
    other = make_iter(tmp_path / "elsewhere" / "run2", 4000)
    first = load_config("default", checkpoint=iter_dir)
    assert first.config_hash() == load_config("default", checkpoint=other).config_hash()
    assert first.config_hash() == first.for_checkpoint(other).config_hash()


def test_config_hash_changes_with_a_task_param(iter_dir):
    base = load_config("default", checkpoint=iter_dir).config_hash()
    changed = load_config(
        "default",
        ["evaluation.tasks.0.nemo_evaluator_config.config.params.top_p=0.5"],
        checkpoint=iter_dir,
    )
    assert changed.config_hash() != base
    limited = load_config(
        "default",
        ["evaluation.nemo_evaluator_config.config.params.limit_samples=10"],
        checkpoint=iter_dir,
    )
    assert limited.config_hash() != base


def test_config_hash_ignores_slurm_and_output_dir(iter_dir, tmp_path):
    base = load_config("default", checkpoint=iter_dir).config_hash()
    assert (
        load_config("default", ["slurm.time=09:00:00", "slurm.partition=other"], checkpoint=iter_dir).config_hash()
        == base
    )
    assert load_config("default", checkpoint=iter_dir, output_dir=tmp_path / "x").config_hash() == base
    assert load_config("default", [f"output_dir={tmp_path / 'y'}"], checkpoint=iter_dir).config_hash() == base


# ---- preflight ----


def test_preflight_accepts_the_builtins(iter_dir):
    preflight(load_config("tiny_chat"))
    preflight(load_config("default", checkpoint=iter_dir))


def test_preflight_accepts_harness_dot_task_and_matching_filters(sandbox):
    path = write(
        sandbox,
        "dotted.yaml",
        ENDPOINT_YAML.replace("name: mmlu_instruct", "name: lm-evaluation-harness.ifeval"),
    )
    preflight(load_config(str(path), tasks=["lm-evaluation-harness.ifeval"]))
    preflight(load_config("tiny_chat", tasks=["mmlu_instruct.0"]))


def test_preflight_refuses_bad_evaluation_key():
    with pytest.raises(ConfigError, match=r"evaluation\.bogus.*allowed evaluation keys"):
        preflight(load_config("tiny_chat", ["+evaluation.bogus=1"]))


def test_preflight_writes_nothing_in_home(tmp_path):
    """The launcher's import writes ~/.nemo-evaluator; it is imported once per process, so use a fresh one."""
    home, cwd = tmp_path / "fresh-home", tmp_path / "fresh-cwd"
    home.mkdir()
    cwd.mkdir()
    (cwd / "vllm.yaml").write_text(VLLM_YAML)
    code = (
        "from hpc_eval.config import load_config\n"
        "from hpc_eval.preflight import preflight\n"
        "import sys\n"
        "assert 'nemo_evaluator_launcher' not in sys.modules\n"
        "preflight(load_config('tiny_chat'))\n"
        "preflight(load_config('vllm.yaml', overrides=['deployment.checkpoint_path=/ckpt/hf_model']))\n"
        "assert 'nemo_evaluator_launcher' in sys.modules\n"
        "print('preflight ok')\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEMO_EVALUATOR_")}
    env["HOME"] = str(home)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # a cold cache: the launcher itself is imported
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "preflight ok" in done.stdout
    assert not (home / ".nemo-evaluator").exists()
    assert sorted(p.name for p in home.iterdir()) == []
    assert sorted(p.name for p in cwd.iterdir()) == ["vllm.yaml"]  # no .secrets.env, no results


# ---- the table of bad inputs, through the real CLI ----

BAD_INPUTS = [
    # id, files to write, args (CFG/<name> is a file under the configs dir), fragments the line must contain
    pytest.param(
        {},
        ["-c", "CFG/nothere.yaml"],
        ["nothere.yaml", "not found", "built-in names"],
        id="missing-file",
    ),
    pytest.param(
        {"syntax.yaml": "a: 1\nb: [1, 2\nc: 3\n"},
        ["-c", "CFG/syntax.yaml"],
        ["syntax.yaml:3:", "YAML syntax error", "fix the file"],
        id="yaml-syntax-error",
    ),
    pytest.param(
        {"list.yaml": "- execution\n- deployment\n"},
        ["-c", "CFG/list.yaml"],
        ["list.yaml", "top level must be a mapping", "not list"],
        id="top-level-not-mapping",
    ),
    pytest.param(
        {"bin.yaml": b"\xff\xfeexecution:\n  type: local\n"},
        ["-c", "CFG/bin.yaml"],
        ["bin.yaml", "not UTF-8", "0xff", "save the file as UTF-8"],
        id="not-utf8",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "evaluation.nemo_evaluator_config.config.params.limit_sample=5"],
        [
            "unknown key 'evaluation.nemo_evaluator_config.config.params.limit_sample'",
            "tiny_chat.yaml",
            "did you mean 'evaluation.nemo_evaluator_config.config.params.limit_samples'",
            "write '+evaluation",
        ],
        id="unknown-override-key",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "limit_samples"],
        ["'limit_samples'", "no '='", "key=value"],
        id="override-without-equals",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "~nope"],
        ["'~nope'", "no key 'nope'", "tiny_chat.yaml"],
        id="delete-missing-key",
    ),
    pytest.param(
        {},
        ["-c", "default"],
        ["default.yaml", "deployment.checkpoint_path", "???", "--checkpoint"],
        id="missing-value-left",
    ),
    pytest.param(
        {"unknown_task.yaml": ENDPOINT_YAML.replace("mmlu_instruct", "no_such_task_xyz")},
        ["-c", "CFG/unknown_task.yaml"],
        ["unknown_task.yaml", "evaluation.tasks.0.name", "'no_such_task_xyz'", "nel ls tasks"],
        id="unknown-task",
    ),
    pytest.param(
        {"typo_task.yaml": ENDPOINT_YAML.replace("mmlu_instruct", "mmlu_instrukt")},
        ["-c", "CFG/typo_task.yaml"],
        ["typo_task.yaml", "'mmlu_instrukt'", "did you mean", "mmlu_instruct"],
        id="unknown-task-close-match",
    ),
    pytest.param(
        {"ambiguous.yaml": ENDPOINT_YAML.replace("mmlu_instruct", "ifeval")},
        ["-c", "CFG/ambiguous.yaml"],
        [
            "ambiguous.yaml",
            "evaluation.tasks.0.name",
            "'ifeval'",
            "select one of",
            "lm-evaluation-harness.ifeval",
        ],
        id="ambiguous-task",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "-t", "nope"],
        ["task filter", "'nope'", "mmlu_instruct", "name.INDEX"],
        id="task-filter-no-match",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "task_filters=[nope]"],
        ["task filter", "'nope'", "name.INDEX"],
        id="task-filters-key-no-match",
    ),
    pytest.param(
        {"exec_slurm.yaml": ENDPOINT_YAML.replace("type: local", "type: slurm\n  num_nodes: 3\n  num_instances: 2")},
        ["-c", "CFG/exec_slurm.yaml"],
        [
            "exec_slurm.yaml",
            "execution.num_nodes (3)",
            "divisible by execution.num_instances (2)",
        ],
        id="execution-type-slurm-multi-node",
    ),
    pytest.param(
        {"exec_lepton.yaml": ENDPOINT_YAML.replace("type: local", "type: lepton")},
        ["-c", "CFG/exec_lepton.yaml"],
        ["exec_lepton.yaml", "execution.type: lepton", "use execution.type: local"],
        id="execution-type-lepton",
    ),
    pytest.param(
        {"generic_url.yaml": GENERIC_YAML},
        ["-c", "CFG/generic_url.yaml"],
        ["generic_url.yaml", "target.api_endpoint.url", "generic", "~target.api_endpoint.url"],
        id="url-with-deployment",
    ),
    pytest.param(
        {"generic_model.yaml": GENERIC_YAML.replace("url: http://localhost:9/v1/chat/completions", "model_id: x/y")},
        ["-c", "CFG/generic_model.yaml"],
        ["generic_model.yaml", "target.api_endpoint.model_id", "~target.api_endpoint.model_id"],
        id="model-id-with-deployment",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "~target.api_endpoint.url"],
        [
            "tiny_chat.yaml",
            "target.api_endpoint.url is empty",
            "deployment.type is none",
            "target.api_endpoint.url=",
        ],
        id="no-url-without-deployment",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "slurm.bogus=1"],
        ["slurm.bogus", "allowed slurm keys", "additional_parameters"],
        id="slurm-unknown-key",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "slurm.time=abc"],
        ["tiny_chat.yaml", "slurm.time", "'abc'", "HH:MM:SS"],
        id="slurm-time-invalid",
    ),
    pytest.param(
        {},
        ["-c", "tiny_chat", "--time", "abc"],
        ["slurm.time", "'abc'", "HH:MM:SS"],
        id="time-option-invalid",
    ),
]


@pytest.mark.parametrize(("files", "args", "fragments"), BAD_INPUTS)
def test_bad_input_is_one_error_line(sandbox, tmp_path, files, args, fragments):
    for name, content in files.items():
        write(sandbox, name, content)
    args = [arg.replace("CFG/", f"{sandbox['configs']}/") for arg in args]
    output_dir = tmp_path / "results"
    result = CliRunner().invoke(main, ["submit", *args, "--output-dir", str(output_dir), "--dry-run"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not output_dir.exists()
    assert list(sandbox["cwd"].iterdir()) == []
    assert list(sandbox["home"].iterdir()) == []
    assert [p.name for p in sandbox["tmp"].iterdir() if p.name.startswith("hpc-eval-dry-run")] == []


def test_bad_input_same_line_from_config_show(sandbox):
    path = write(sandbox, "exec_slurm.yaml", ENDPOINT_YAML.replace("type: local", "type: lepton"))
    result = CliRunner().invoke(main, ["config", "show", "-c", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(f"Error: {path}: execution.type: lepton")


def test_debug_shows_the_traceback_instead(sandbox):
    result = CliRunner().invoke(main, ["--debug", "submit", "-c", "tiny_chat", "limit_samples", "--dry-run"])
    assert isinstance(result.exception, ConfigError)
    assert "no '='" in str(result.exception)
