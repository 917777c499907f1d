"""Configs users already have (issue 14): `nel run` configs (local and slurm executors, every
deployment type) and Nemotron's eval shape, through `hpc-eval submit --dry-run --json`.

Each config that passes our dry run must pass the launcher's own dry run (`run_eval(dry_run=True)`
on the saved config, `local` executor) in a subprocess with HOME and the exec DB in tmp_path; each
one we refuse gets one `Error:` line naming the key and the way out, exit 2. No Slurm job is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpc_eval.cli import main
from support.fakeckpt import make_iter

USERS = Path(__file__).parent / "configs" / "users"
HPC_EVAL = str(Path(sys.executable).parent / "hpc-eval")
ENV = {"HF_TOKEN": "hf-not-real", "USERS_TEST_API_KEY": "not-real"}
LAUNCHER_DRY_RUN = """
import sys
from omegaconf import OmegaConf
from nemo_evaluator_launcher.api.functional import run_eval
cfg = OmegaConf.load(sys.argv[1])
cfg.execution.type = "local"
cfg.execution.output_dir = sys.argv[2]
run_eval(cfg, dry_run=True)
"""


def dry_run(
    tmp_path: Path, *args: str, env: dict | None = None, drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        **ENV,
        **(env or {}),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path),
    }
    for name in drop:
        environment.pop(name, None)
    return subprocess.run(
        [HPC_EVAL, "submit", *args, "--dry-run", "--json"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )


def accepted(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    """(the saved launcher config, the --json answer); and the launcher's own dry run accepts that config."""
    done = dry_run(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    saved_path = answer["launcher_configs"][0]
    launcher_home = tmp_path / "launcher-home"
    launcher_home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        **ENV,
        "HOME": str(launcher_home),
        "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0",
        "NEMO_EVALUATOR_EXEC_DB_FILE": str(launcher_home / "exec.db"),
    }
    theirs = subprocess.run(
        [sys.executable, "-c", LAUNCHER_DRY_RUN, saved_path, str(tmp_path / "nel-out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    return yaml.safe_load(Path(saved_path).read_text()), answer


def refused(tmp_path: Path, *args: str, env: dict | None = None, drop: tuple[str, ...] = ()) -> list[str]:
    done = dry_run(tmp_path, *args, env=env, drop=drop)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and all(line.startswith("Error: ") for line in lines), done.stderr
    assert "Traceback" not in done.stderr and not done.stdout.strip()
    return lines


def hf_iteration(root: Path, step: int = 100, complete: bool = True) -> Path:
    """A Megatron iteration with a Megatron Bridge HF export in iter_N/hf/ (complete or without weights)."""
    iteration = make_iter(root / "run" / "checkpoints", step)
    hf = iteration / "hf"
    hf.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (hf / name).write_text("{}")
    if complete:
        (hf / "model-00001-of-00001.safetensors").write_bytes(b"w")
        (hf / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}})
        )
    return iteration


# ---------------------------------------------------------------- overrides on `???` keys
def show(*args: str):
    return CliRunner().invoke(main, ["config", "show", "-c", str(USERS / "slurm_launcher.yaml"), *args])


def test_set_a_missing_value_with_key_equals_value():
    result = CliRunner().invoke(main, ["config", "show", "-c", "default", "deployment.checkpoint_path=/x/iter_0000001"])
    assert result.exit_code == 0, result.output
    assert "checkpoint_path: /x/iter_0000001" in result.output


def test_add_over_a_missing_value_with_plus():
    result = CliRunner().invoke(
        main, ["config", "show", "-c", "default", "+deployment.checkpoint_path=/x/iter_0000002"]
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint_path: /x/iter_0000002" in result.output


def test_delete_a_missing_value_with_tilde():
    # vllm's packaged checkpoint_path is ???: deleting it leaves the HF model by name
    result = CliRunner().invoke(
        main, ["config", "show", "-c", str(USERS / "vllm_hf.yaml"), "~deployment.checkpoint_path"]
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint_path" not in yaml.safe_load(result.output)["deployment"]


# ---------------------------------------------------------------- the deployment table
@pytest.mark.parametrize("name", ["vllm_hf", "vllm_ray_hf", "sglang_hf"])
def test_hf_server_without_checkpoint_serves_the_named_model(tmp_path, name):
    saved, answer = accepted(tmp_path, "-c", str(USERS / f"{name}.yaml"))
    assert saved["deployment"]["hf_model_handle"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert saved["deployment"]["checkpoint_path"] is None
    assert "meta-llama/Llama-3.1-8B-Instruct" in saved["deployment"]["command"]
    assert f"/{name}/" in answer["launcher_configs"][0]  # labelled by the config: no training step


@pytest.mark.parametrize("name", ["vllm_hf", "sglang_hf", "trtllm_hf"])
def test_hf_server_with_checkpoint_serves_its_hf_export(tmp_path, name):
    iteration = hf_iteration(tmp_path)
    saved, answer = accepted(
        tmp_path,
        "-c",
        str(USERS / f"{name}.yaml"),
        "deployment.checkpoint_path=/unused",
        "--checkpoint",
        str(iteration),
    )
    assert saved["deployment"]["checkpoint_path"] == str(iteration / "hf")
    assert saved["deployment"].get("hf_model_handle") is None  # never the HF model under this step's name
    assert "meta-llama" not in saved["deployment"]["command"]
    assert "iter_0000100" in answer["launcher_configs"][0]


@pytest.mark.parametrize("complete", [False, None])
def test_hf_server_refuses_a_megatron_only_checkpoint(tmp_path, complete):
    iteration = hf_iteration(tmp_path, complete=True) if complete is None else hf_iteration(tmp_path, complete=False)
    if complete is None:
        (iteration / "hf" / "tokenizer.json").unlink()
    lines = refused(tmp_path, "-c", str(USERS / "vllm_hf.yaml"), "--checkpoint", str(iteration))
    assert len(lines) == 1
    assert "vLLM cannot load a Megatron checkpoint" in lines[0]
    assert "deployment.type generic" in lines[0] and "Megatron Bridge" in lines[0]


def test_trtllm_without_a_checkpoint_path_is_asked_for_one(tmp_path):
    lines = refused(tmp_path, "-c", str(USERS / "trtllm_hf.yaml"))
    assert "deployment.checkpoint_path" in lines[0] and "--checkpoint" in lines[0]


def test_nim_needs_no_checkpoint_and_refuses_one(tmp_path):
    saved, _ = accepted(tmp_path, "-c", str(USERS / "nim.yaml"))
    assert saved["deployment"]["type"] == "nim" and "checkpoint_path" not in saved["deployment"]
    lines = refused(tmp_path, "-c", str(USERS / "nim.yaml"), "--checkpoint", str(make_iter(tmp_path / "ck", 5)))
    assert len(lines) == 1 and "nim" in lines[0] and "drop --checkpoint" in lines[0]


def test_generic_needs_a_checkpoint_and_serves_it(tmp_path):
    lines = refused(tmp_path, "-c", str(USERS / "generic.yaml"))
    assert "generic" in lines[0] and "--checkpoint" in lines[0]
    iteration = make_iter(tmp_path / "ck", 7)
    saved, _ = accepted(tmp_path, "-c", str(USERS / "generic.yaml"), "--checkpoint", str(iteration))
    assert saved["deployment"]["checkpoint_path"] == str(iteration)


def test_none_is_an_endpoint(tmp_path):
    saved, _ = accepted(tmp_path, "-c", str(USERS / "endpoint_none.yaml"))
    assert saved["target"]["api_endpoint"]["url"].startswith("https://")


# ---------------------------------------------------------------- launcher slurm configs, run.env
def test_launcher_slurm_config_runs_in_the_allocation(tmp_path):
    saved, answer = accepted(tmp_path, "-c", str(USERS / "slurm_launcher.yaml"), "execution.output_dir=/lustre/evals")
    assert saved["execution"]["type"] == "hpc_eval" and saved["execution"]["runtime"] == "auto"
    assert saved["execution"]["mounts"]["deployment"] == {"/lustre/models": "/models"}
    assert not {"hostname", "username", "account", "walltime", "sbatch_extra_flags"} & set(saved["execution"])
    sbatch = answer["sbatch_script"]
    for line in (
        "#SBATCH --partition=batch",
        "#SBATCH --time=210",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --constraint=h100",
        "#SBATCH --switches=1",
        "#SBATCH --comment='nightly eval'",
    ):
        assert line in sbatch
    assert "--account" not in sbatch and "--exclusive" not in sbatch  # account ???: none; exclusive: false omitted
    assert answer["output_dir"] == "/lustre/evals"
    assert any(
        "execution.hostname, execution.username" in note and "neither required nor used" in note
        for note in answer["notes"]
    )


def test_launcher_slurm_account_and_nodes_reach_sbatch(tmp_path):
    _, answer = accepted(tmp_path, "-c", str(USERS / "slurm_launcher.yaml"), "execution.account=proj-a")
    assert "#SBATCH --account=proj-a" in answer["sbatch_script"]
    saved, answer = accepted(tmp_path, "-c", str(USERS / "slurm_launcher.yaml"), "execution.num_nodes=2")
    assert "#SBATCH --nodes=2" in answer["sbatch_script"] and saved["execution"]["num_nodes"] == 2
    lines = refused(tmp_path, "-c", str(USERS / "slurm_launcher.yaml"), "slurm.nodes=1", "execution.num_nodes=2")
    assert "execution.num_nodes is 2 but slurm.nodes is 1" in lines[0] and "slurm.nodes=2" in lines[0]


def test_nemotron_run_env_fills_the_slurm_section_and_env_vars_migrate(tmp_path):
    iteration = make_iter(tmp_path / "ck", 3)
    saved, answer = accepted(tmp_path, "-c", str(USERS / "nemotron_run_env.yaml"), "--checkpoint", str(iteration))
    sbatch = answer["sbatch_script"]
    for line in (
        "#SBATCH --account=nemotron-acct",
        "#SBATCH --partition=batch_long",
        "#SBATCH --time=240",
        "#SBATCH --gpus-per-node=8",
    ):
        assert line in sbatch
    assert "--num_gpus 8" in saved["deployment"]["command"]  # one source for the GPU count
    assert "env_vars" not in saved["execution"]
    assert saved["deployment"]["env_vars"] == {"HF_HOME": "lit:/lustre/jobs/hf", "HF_TOKEN": "host:HF_TOKEN"}
    assert saved["env_vars"] == {"HF_TOKEN": "host:HF_TOKEN"}
    assert answer["output_dir"] == "/lustre/evals"  # execution.output_dir is the root
    assert any("nel migrate-config" in note for note in answer["notes"])


def test_gpus_option_changes_sbatch_and_server_in_the_builtin_default(tmp_path):
    iteration = make_iter(tmp_path / "ck", 4)
    saved, answer = accepted(tmp_path, "-c", "default", "--checkpoint", str(iteration), "--gpus", "8")
    assert "#SBATCH --gpus-per-node=8" in answer["sbatch_script"]
    assert "--num_gpus 8" in saved["deployment"]["command"]
    assert saved["execution"]["type"] == "hpc_eval"


def test_lepton_is_refused(tmp_path):
    lines = refused(tmp_path, "-c", str(USERS / "lepton.yaml"))
    assert len(lines) == 1 and "execution.type: lepton" in lines[0] and "nel run" in lines[0]


# ---------------------------------------------------------------- no false OK
def test_missing_environment_variables_one_line_each(tmp_path):
    iteration = make_iter(tmp_path / "ck", 3)
    lines = refused(
        tmp_path, "-c", str(USERS / "nemotron_run_env.yaml"), "--checkpoint", str(iteration), drop=("HF_TOKEN",)
    )
    assert len(lines) == 1 and "HF_TOKEN" in lines[0]
    lines = refused(
        tmp_path,
        "-c",
        str(USERS / "endpoint_none.yaml"),
        "+env_vars.OTHER=host:USERS_TEST_OTHER",
        drop=("USERS_TEST_API_KEY",),
    )
    assert len(lines) == 2
    assert "USERS_TEST_OTHER" in lines[0] + lines[1] and "USERS_TEST_API_KEY" in lines[0] + lines[1]


def test_a_key_the_launcher_forbids_is_refused_before_the_queue(tmp_path):
    lines = refused(tmp_path, "-c", str(USERS / "endpoint_none.yaml"), "+env_vars.PLAIN=some value")
    assert len(lines) == 1 and "NeMo Evaluator Launcher rejects" in lines[0] and "lit:" in lines[0]


def test_auto_export_to_wandb_is_refused(tmp_path):
    lines = refused(
        tmp_path, "-c", str(USERS / "nemotron_auto_export.yaml"), "--checkpoint", str(make_iter(tmp_path / "ck", 3))
    )
    assert (
        len(lines) == 1
        and "execution.auto_export" in lines[0]
        and "issue 17" in lines[0]
        and "~execution.auto_export" in lines[0]
    )


# ---------------------------------------------------------------- the executor's runtime choice
def test_auto_never_falls_back_to_host_for_a_deployment(monkeypatch, tmp_path):
    from hpc_eval import executor as runtime

    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, srun or apptainer on this "node"
    with pytest.raises(RuntimeError, match=r"no container runtime on node .*tried docker .*pyxis .*apptainer"):
        runtime.choose_runtime("auto", needs_image=True)
    assert runtime.choose_runtime("auto", needs_image=False)[0] == "host"  # deployment none: the harness on the host


def test_auto_export_elsewhere_runs_with_the_local_executor_and_is_refused_with_ours(tmp_path):
    generic = (USERS / "generic.yaml").read_text()
    local = tmp_path / "local_export.yaml"
    local.write_text(
        generic.replace(
            "  output_dir: ./nel-results", "  output_dir: ./nel-results\n  auto_export: {destinations: [local]}"
        )
    )
    iteration = make_iter(tmp_path / "ck", 2)
    saved, _ = accepted(tmp_path, "-c", str(local), "--checkpoint", str(iteration))
    assert saved["execution"]["auto_export"]["destinations"] == ["local"]
    lines = refused(tmp_path, "-c", str(local), "execution.type=hpc_eval", "--checkpoint", str(iteration))
    assert len(lines) == 1 and "execution.auto_export to local" in lines[0] and "~execution.auto_export" in lines[0]


def test_acceptance_runs_once_per_config_not_per_checkpoint(tmp_path):
    run = tmp_path / "run" / "checkpoints"
    for step in (10, 20, 30):
        make_iter(run, step)
    done = dry_run(tmp_path, "-c", str(USERS / "nemotron_run_env.yaml"), "--checkpoint", str(run), "--all")
    assert done.returncode == 0, done.stderr
    saved = [yaml.safe_load(Path(path).read_text()) for path in json.loads(done.stdout)["launcher_configs"]]
    assert sorted(Path(config["deployment"]["checkpoint_path"]).name for config in saved) == [
        "iter_0000010",
        "iter_0000020",
        "iter_0000030",
    ]
    assert len(list((tmp_path / "cache" / "hpc-eval").glob("accepted-*.json"))) == 1
