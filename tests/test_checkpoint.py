"""Megatron Bridge checkpoint validation, discovery and `hpc-eval validate`, on fake layouts on disk."""

from __future__ import annotations

import json
import os
import pickle
import time

import pytest
from click.testing import CliRunner

from hpc_eval import checkpoint
from hpc_eval.checkpoint import discover, is_run_dir, latest, validate
from hpc_eval.cli import main
from support.fakeckpt import (
    make_energon,
    make_hf,
    make_hf_peft,
    make_iter,
    make_megatron_lm,
    make_nemo2,
    make_run,
    write_tracker,
)

# ---- accepted layouts ----


def test_complete_iter_dir_in_a_run_is_valid(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000, 2000])
    verdict = validate(run / "iter_0002000")
    assert verdict.ok, verdict.reason
    assert (verdict.iteration, verdict.format, verdict.has_tokenizer) == (2000, "torch_dist", True)
    assert verdict.reason is None and verdict.warnings == ()
    assert verdict.path == run / "iter_0002000"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"common_pt": False}, id="current-mcore-no-common-pt"),
        pytest.param({}, id="legacy-mcore-with-common-pt"),
        pytest.param({"shards": 1}, id="one-shard"),
        pytest.param(
            {"extra": ["modelopt_state/metadata.json", "hf/config.json", "hf/model.safetensors"]},
            id="with-modelopt-and-hf-sidecar",
        ),
    ],
)
def test_valid_variants(tmp_path, options):
    verdict = validate(make_iter(tmp_path, 1000, **options))
    assert verdict.ok, verdict.reason
    assert verdict.iteration == 1000


def test_iteration_zero_from_hf_import_is_valid(tmp_path):
    run = make_run(tmp_path / "mbridge_model", [0])
    verdict = validate(run / "iter_0000000")
    assert verdict.ok and verdict.iteration == 0


def test_standalone_copied_iter_dir_without_tracker_is_valid(tmp_path):
    verdict = validate(make_iter(tmp_path / "copied", 1500))
    assert verdict.ok and verdict.iteration == 1500 and verdict.warnings == ()


def test_relative_path_is_made_absolute_without_resolving_symlinks(tmp_path, monkeypatch):
    real = make_iter(tmp_path / "real", 1000)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    verdict = validate("link")
    assert verdict.ok and verdict.path == tmp_path / "link"


# ---- rejected layouts: one row per case, asserting the words users see ----


def _half_written(missing=(), **options):
    """A builder for an iter_0003000 that a save left behind, next to a complete iter_0002000."""

    def build(tmp_path):
        run = make_run(tmp_path / "checkpoints", [2000])
        return make_iter(run, 3000, missing=missing, **options)

    return build


LATER_FILES = ("metadata.json", "train_state.pt", "run_config.yaml", "tokenizer")
SHARDS = ("__0_0.distcp", "__0_1.distcp")

# (case id, builder(tmp_path) -> path, expected Verdict.format, words the reason must contain;
#  "{tmp}" stands for tmp_path)
# fmt: off
INVALID_CASES = [
    ("hf-model", lambda t: make_hf(t / "llama_hf"), "hf",
     ["Hugging Face checkpoint", "AutoBridge.import_ckpt", "vLLM"]),
    ("hf-peft-adapter", lambda t: make_hf_peft(t / "adapter"), "hf_peft",
     ["Hugging Face PEFT adapter", "base model"]),
    ("hf-sidecar", lambda t: make_hf(make_iter(t, 2000) / "hf"), "hf",
     ["Hugging Face export saved inside iter_0002000", "pass {tmp}/iter_0002000 for Megatron serving"]),
    ("peft-sidecar", lambda t: make_hf_peft(make_iter(t, 2000) / "hf"), "hf_peft",
     ["inside iter_0002000", "pass {tmp}/iter_0002000"]),
    ("nemo2", lambda t: make_nemo2(t / "nemo2_ckpt"), "nemo2",
     ["NeMo 2 checkpoint", "context/ + weights/"]),
    ("megatron-lm", lambda t: make_megatron_lm(t / "mlm", 500), "megatron_lm",
     ["Megatron-LM checkpoint", "no run_config.yaml", "megatron-lm-to-megatron-bridge"]),
    ("fsdp-dtensor", lambda t: make_iter(t, 1000, fmt="fsdp_dtensor"), "fsdp_dtensor",
     ["fsdp_dtensor", "cannot be served without conversion", "convert_checkpoints_fsdp.py"]),
    ("metadata-tmp", _half_written((".metadata", *LATER_FILES), extra=[".metadata.tmp"]), None,
     [".metadata.tmp is present", "is being saved or the save crashed",
      "latest complete checkpoint of this run: {tmp}/checkpoints/iter_0002000"]),
    ("shards-only", _half_written((".metadata", *LATER_FILES)), None,
     ["shards without .metadata", "async save", "{tmp}/checkpoints/iter_0002000"]),
    ("shards-and-common-pt-only", _half_written((".metadata", *LATER_FILES), common_pt=True), None,
     ["shards without .metadata"]),
    ("metadata-without-metadata-json", _half_written(LATER_FILES), None,
     [".metadata without metadata.json", "finalize", "{tmp}/checkpoints/iter_0002000"]),
    ("finalize-interrupted", _half_written(LATER_FILES[2:]), None,
     ["train_state.pt without run_config.yaml", "interrupted", "{tmp}/checkpoints/iter_0002000"]),
    ("zero-byte-shard", lambda t: make_iter(t, 1000, zero_byte=["__0_1.distcp"]), None,
     ["truncated", "zero-byte __0_1.distcp", "earlier iteration"]),
    ("zero-byte-metadata", lambda t: make_iter(t, 1000, zero_byte=[".metadata"]), None,
     ["zero-byte .metadata"]),
    ("zero-byte-train-state", lambda t: make_iter(t, 1000, zero_byte=["train_state.pt"]), None,
     ["zero-byte train_state.pt"]),
    ("shard-named-in-metadata-missing", lambda t: make_iter(t, 1000, missing=["__0_1.distcp"]), None,
     ["missing shard files named in .metadata: __0_1.distcp"]),
    ("shard-cut-short", lambda t: make_iter(t, 1000, extra={"__0_1.distcp": b"shard1"}), None,
     ["is truncated: __0_1.distcp has 6 bytes, .metadata records 14; use an earlier iteration"]),
    ("common-pt-missing", lambda t: make_iter(t, 1000, missing=["common.pt"]), None,
     [("is missing common.pt, which its metadata.json requires (common_backend 'torch'); "
       "loading it would fail: use an earlier iteration")]),
    ("zero-byte-common-pt", lambda t: make_iter(t, 1000, zero_byte=["common.pt"]), None,
     ["is truncated: zero-byte common.pt"]),
    ("metadata-not-a-pickle", lambda t: make_iter(t, 1000, extra={".metadata": b"\x80\x04fake __0_0.distcp"}),
     None, ["/.metadata cannot be read (", "not written by torch.distributed.checkpoint"]),
    ("metadata-json-not-json", lambda t: make_iter(t, 1000, extra={"metadata.json": b"not json"}), None,
     ["metadata.json is not a JSON object (damaged)"]),
    ("metadata-json-zarr",
     lambda t: make_iter(t, 1000, extra={"metadata.json": b'{"sharded_backend": "zarr"}'}), None,
     ["sharded_backend 'zarr', not 'torch_dist'"]),
    ("run-config-truncated", lambda t: make_iter(t, 1000, zero_byte=["run_config.yaml"]), None,
     ["run_config.yaml has no model section"]),
    ("run-config-without-train-state", lambda t: make_iter(t, 1000, missing=["train_state.pt"]), None,
     ["run_config.yaml without train_state.pt"]),
    ("no-shards-at-all", lambda t: make_iter(t, 1000, missing=[*SHARDS, ".metadata"]), None,
     ["has no weights", "no *.distcp"]),
    ("empty-dir",
     lambda t: make_iter(t, 1000, tokenizer=False, missing=[*SHARDS, ".metadata", *LATER_FILES]), None,
     ["is not a checkpoint", "iter_NNNNNNN directory written by Megatron Bridge"]),
    ("energon-state", lambda t: make_energon(make_run(t, [2000]), 2000), None,
     ["Megatron-Energon dataloader state", "pass {tmp}/iter_0002000 instead"]),
    ("a-file", lambda t: _file(t / "model.pt"), None,
     ["is a file, not a directory"]),
    ("missing-path", lambda t: t / "does-not-exist", None,
     ["does not exist", "check the path"]),
]
# fmt: on


def _file(path):
    path.write_bytes(b"weights")
    return path


@pytest.mark.parametrize(
    "build, fmt, expected",
    [pytest.param(build, fmt, expected, id=case) for case, build, fmt, expected in INVALID_CASES],
)
def test_invalid_layouts_name_the_problem_and_the_fix(tmp_path, build, fmt, expected):
    path = build(tmp_path)
    verdict = validate(path)
    assert not verdict.ok
    assert verdict.format == fmt
    assert str(path) in verdict.reason
    for words in expected:
        assert words.format(tmp=tmp_path) in verdict.reason


def test_common_pt_is_not_required_when_metadata_json_names_no_common_backend(tmp_path):
    verdict = validate(make_iter(tmp_path, 1000, common_pt=False))
    assert verdict.ok, verdict.reason
    assert not (verdict.path / "common.pt").exists()


def test_shards_longer_than_metadata_records_are_valid(tmp_path):
    verdict = validate(make_iter(tmp_path, 1000, extra={"__0_0.distcp": b"shard0-weights+padding"}))
    assert verdict.ok, verdict.reason


class _CreatesAFile:
    """Unpickled by pickle.loads, this calls os.mkdir(path): what a hostile .metadata could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_metadata_reader_runs_nothing_from_the_file(tmp_path):
    live = tmp_path / "made-by-plain-pickle"
    pickle.loads(pickle.dumps(_CreatesAFile(live)))
    assert live.is_dir(), "the test pickle must really act when unpickled"
    marker = tmp_path / "made-by-the-validator"
    hostile = {"root": pickle.dumps(_CreatesAFile(marker))}
    hostile["nested"] = pickle.dumps({"storage_data": {"k": _CreatesAFile(marker)}})
    for data in hostile.values():
        path = make_iter(tmp_path / str(len(data)), 1000, extra={".metadata": data})
        verdict = validate(path)
        assert not verdict.ok and f"{path}/.metadata cannot be read (ValueError: " in verdict.reason
        with pytest.raises(ValueError):
            checkpoint.shard_ends(data)
    assert not marker.exists()


def test_parent_dir_suggests_the_iter_dir_named_by_the_tracker(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000, 2000])
    verdict = validate(run)
    assert not verdict.ok and verdict.iteration is None
    assert verdict.reason == (
        f"{run} is a training run's checkpoint directory, not one checkpoint; pass an iteration "
        f"directory such as {run}/iter_0002000 (latest by tracker and scan), or give the "
        f"directory to --all/--latest"
    )


def test_parent_dir_whose_tracker_names_an_incomplete_dir_suggests_the_highest_valid(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000, 2000])
    make_iter(run, 3000, missing=["run_config.yaml"])  # finalize died after writing the tracker
    make_iter(run, 4000, missing=[".metadata", *LATER_FILES])  # shards still being written
    write_tracker(run, 3000)
    verdict = validate(run)
    assert f"such as {run}/iter_0002000 (highest complete iteration" in verdict.reason
    assert "the tracker's iter_0003000 is not usable" in verdict.reason


def test_parent_dir_without_tracker_suggests_the_highest_valid(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000, 2000], tracker=False)
    verdict = validate(run)
    assert f"such as {run}/iter_0002000 (highest complete iteration; no " in verdict.reason


def test_parent_dir_without_any_complete_iteration_says_to_wait(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000], missing=["run_config.yaml"])
    verdict = validate(run)
    assert "none of its iter_* directories is a complete checkpoint yet" in verdict.reason


def test_unreadable_directory_is_rejected_with_the_fix(tmp_path, monkeypatch):
    path = make_iter(tmp_path, 1000)

    def denied(directory):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(checkpoint, "_scan", denied)
    verdict = validate(path)
    assert not verdict.ok
    assert verdict.reason == f"cannot read {path}: permission denied; ask its owner for read access (chmod -R a+rX)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_on_disk_is_rejected(tmp_path):
    path = make_iter(tmp_path, 1000)
    (path / "run_config.yaml").chmod(0)
    verdict = validate(path)
    assert not verdict.ok
    assert f"cannot read {path}/run_config.yaml: permission denied" in verdict.reason


# ---- warnings: the checkpoint is usable, the user should know ----


def test_no_tokenizer_warns(tmp_path):
    verdict = validate(make_iter(tmp_path, 1000, tokenizer=False))
    assert verdict.ok and not verdict.has_tokenizer
    assert verdict.warnings[0].startswith("no tokenizer/ directory")


def test_peft_in_run_config_warns_adapter_only(tmp_path):
    verdict = validate(make_iter(tmp_path, 1000, peft=True))
    assert verdict.ok
    assert "adapter-only checkpoint" in verdict.warnings[0]
    assert "checkpoint.pretrained_checkpoint" in verdict.warnings[0]


def test_non_persistent_checkpoint_warns(tmp_path):
    run = make_run(tmp_path / "checkpoints" / "non_persistent", [2500])
    verdict = validate(run / "iter_0002500")
    assert verdict.ok
    assert verdict.warnings == ("non-persistent checkpoint: training may delete it at any time",)


def test_iteration_newer_than_tracker_warns(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000, 2000])
    write_tracker(run, 1000)
    verdict = validate(run / "iter_0002000")
    assert verdict.ok
    assert verdict.warnings == (
        "iteration 2000 is newer than the run's tracker (latest_checkpointed_iteration.txt says "
        "1000): the save may not be finalized, or this is a stale directory",
    )


def test_unpadded_and_unnamed_dirs_warn(tmp_path):
    unpadded = make_iter(tmp_path, 1000)
    unpadded = unpadded.rename(tmp_path / "iter_1000")
    renamed = make_iter(tmp_path, 2000).rename(tmp_path / "my-model")
    assert validate(unpadded).warnings == ("iter_1000 is not zero-padded; Megatron tools look for iter_0001000",)
    verdict = validate(renamed)
    assert verdict.ok and verdict.iteration is None
    assert verdict.warnings == ("my-model is not named iter_NNNNNNN: the iteration is unknown",)


def test_recent_files_warn_only_inside_the_quiet_window(tmp_path):
    path = make_iter(tmp_path, 1000)
    now = time.time()
    assert validate(path, now=now).warnings == ()  # window off by default
    assert validate(path, quiet_seconds=60, now=now + 3600).warnings == ()
    warnings = validate(path, quiet_seconds=60, now=now + 5).warnings
    assert len(warnings) == 1 and "a save may still be running" in warnings[0]
    assert "quiet window 60s" in warnings[0]


REALISTIC_RUN_CONFIG = """\
_target_: megatron.bridge.training.config.ConfigContainer
checkpoint:
  async_save: true
  exclude_keys:
  - optimizer
  {format_line}
  nested:
    ckpt_format: not-this-one
dataset:
  blend:
  - /data/a
model:
  _target_: megatron.bridge.models.llama.llama_provider.Llama3ModelProvider8B
  peft: not-the-top-level-key
{peft_line}
train:
  train_iters: 10
"""


@pytest.mark.parametrize(
    "format_line, peft_line, fsdp, adapter",
    [
        ("ckpt_format: 'fsdp_dtensor'", "peft: null", True, False),
        ("ckpt_format: torch_dist", "peft: null", False, False),
        ("save: /ckpt", "peft: ~", False, False),
        (
            "ckpt_format: torch_dist",
            "peft: {_target_: megatron.bridge.peft.lora.LoRA}",
            False,
            True,
        ),
        (
            "ckpt_format: torch_dist",
            "peft:\n  _target_: megatron.bridge.peft.dora.DoRA\n  dim: 8",
            False,
            True,
        ),
    ],
)
def test_run_config_facts_are_read_without_pyyaml(tmp_path, format_line, peft_line, fsdp, adapter):
    text = REALISTIC_RUN_CONFIG.format(format_line=format_line, peft_line=peft_line).encode()
    run_config = {"run_config.yaml": text}
    fsdp_verdict = validate(make_iter(tmp_path / "fsdp", 1000, fmt="fsdp_dtensor", extra=run_config))
    assert (fsdp_verdict.format == "fsdp_dtensor") is fsdp
    verdict = validate(make_iter(tmp_path / "torch", 1000, extra=run_config))
    assert verdict.ok, verdict.reason
    assert any("adapter-only" in warning for warning in verdict.warnings) is adapter


# ---- discovery over a run directory ----


@pytest.fixture
def run(tmp_path):
    """Steps 1000..5000 complete, 6000 half-written, plus dirs that must never be listed."""
    run = make_run(tmp_path / "checkpoints", [1000, 2000, 3000, 4000, 5000])
    make_iter(run, 6000, missing=["run_config.yaml"])
    make_energon(run, 2000)
    make_run(run / "non_persistent", [2500])
    (run / "iter_7000").write_text("a file, not a directory")
    (run / "progress.txt").write_text("")
    return run


def _steps(verdicts):
    return [verdict.iteration for verdict in verdicts]


def test_discover_all_lists_direct_children_only(run):
    found = discover(run)
    assert found.run_dir == run
    assert _steps(found.valid) == [1000, 2000, 3000, 4000, 5000]
    assert _steps(found.invalid) == [6000]
    assert "train_state.pt without run_config.yaml" in found.invalid[0].reason


@pytest.mark.parametrize(
    "options, valid, invalid",
    [
        ({"every": 2000}, [2000, 4000], [6000]),
        ({"from_step": 3000}, [3000, 4000, 5000], [6000]),
        ({"to_step": 2000}, [1000, 2000], []),
        ({"from_step": 2000, "to_step": 4000, "every": 1000}, [2000, 3000, 4000], []),
        ({"select": "latest"}, [5000], []),
        ({"select": "latest", "to_step": 3000}, [3000], []),
    ],
)
def test_discover_selection(run, options, valid, invalid):
    found = discover(run, **options)
    assert (_steps(found.valid), _steps(found.invalid)) == (valid, invalid)


def test_latest_prefers_the_tracker_over_a_higher_valid_dir(run):
    write_tracker(run, 4000)
    assert latest(run).path == run / "iter_0004000"


def test_latest_falls_back_to_highest_valid_when_tracker_dir_is_incomplete(run):
    write_tracker(run, 6000)
    found = discover(run, select="latest")
    assert _steps(found.valid) == [5000] and _steps(found.invalid) == [6000]
    assert latest(run).iteration == 5000


def test_latest_is_none_without_a_valid_dir(tmp_path):
    assert latest(make_run(tmp_path, [1000], missing=[".metadata"])) is None


def test_discover_scans_each_directory_once_and_only_candidates_in_range(run, monkeypatch):
    scanned = []
    real_scan = checkpoint._scan
    monkeypatch.setattr(checkpoint, "_scan", lambda path: scanned.append(path) or real_scan(path))
    discover(run, from_step=4000)
    assert scanned == [run, run / "iter_0004000", run / "iter_0005000", run / "iter_0006000"]


def test_discover_rejects_a_missing_run_dir(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        discover(tmp_path / "nope")


def test_discover_rejects_an_unknown_selection(run):
    with pytest.raises(ValueError, match="select must be"):
        discover(run, select="first")


def test_is_run_dir(run, tmp_path):
    assert is_run_dir(run)
    assert not is_run_dir(run / "iter_0001000")
    assert not is_run_dir(tmp_path / "nope")
    bare = make_iter(tmp_path / "bare", 1).parent
    assert is_run_dir(bare)  # iter_* children are enough


# ---- hpc-eval validate ----


def test_cli_validate_all_valid_exits_0(tmp_path):
    run = make_run(tmp_path / "checkpoints", [0, 1000])
    result = CliRunner().invoke(main, ["validate", str(run / "iter_0000000"), str(run / "iter_0001000")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"OK  {run}/iter_0000000  iter 0  torch_dist",
        f"OK  {run}/iter_0001000  iter 1000  torch_dist",
    ]


def test_cli_validate_reports_invalid_and_warnings_and_exits_1(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000], tokenizer=False)
    result = CliRunner().invoke(main, ["validate", str(run / "iter_0001000"), str(run)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"OK  {run}/iter_0001000  iter 1000  torch_dist"
    assert lines[1].startswith("  warning: no tokenizer/ directory")
    assert lines[2].startswith(f"INVALID  {run}: {run} is a training run's checkpoint directory")
    assert f"such as {run}/iter_0001000" in lines[2]


def test_cli_validate_json(tmp_path):
    good = make_iter(tmp_path, 1000)
    result = CliRunner().invoke(main, ["validate", "--json", str(good), str(tmp_path / "nope")])
    assert result.exit_code == 1
    verdicts = json.loads(result.output)
    assert verdicts[0] == {
        "path": str(good),
        "ok": True,
        "iteration": 1000,
        "format": "torch_dist",
        "has_tokenizer": True,
        "reason": None,
        "warnings": [],
    }
    assert verdicts[1]["ok"] is False and "does not exist" in verdicts[1]["reason"]


def test_cli_validate_quiet_seconds_warns_on_fresh_files(tmp_path):
    path = make_iter(tmp_path, 1000)
    result = CliRunner().invoke(main, ["validate", "--quiet-seconds", "3600", str(path)])
    assert result.exit_code == 0
    assert "  warning: files were modified" in result.output


@pytest.mark.parametrize("args", [["validate"], ["validate", "--quiet-seconds", "-1", "x"]])
def test_cli_validate_usage_errors_exit_2(args):
    assert CliRunner().invoke(main, args).exit_code == 2


def test_validate_many_gives_the_same_verdicts_as_validate(tmp_path):
    run = make_run(tmp_path / "checkpoints", [1000, 2000, 3000])
    write_tracker(run, 2000)  # iter_0003000 is newer than the tracker: a warning for that one only
    make_iter(run, 4000, missing=["run_config.yaml"])
    paths = sorted(run.glob("iter_*"))
    assert checkpoint.validate_many(paths) == [validate(path) for path in paths]
    assert [bool(v.warnings) for v in checkpoint.validate_many(paths)[:3]] == [False, False, True]
