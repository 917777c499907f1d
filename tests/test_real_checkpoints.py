"""Checkpoints written by the real Megatron Bridge 0.3.1 / Megatron-Core 0.16.1 (tests/data/real-mbridge).

scripts/make-real-checkpoint.py wrote them (see VERSIONS there): a tiny run saved at steps 10 and
20, an async save at 30, a copy of the run taken before that async save was finalized, and an
export of step 30 back to Hugging Face. Broken copies are made here, in tmp_path, the way a crash
or a bad copy leaves them; each must fail with its own reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpc_eval.checkpoint import discover, latest, shard_ends, validate
from hpc_eval.cli import main

DATA = Path(__file__).parent / "data" / "real-mbridge"
RUN = DATA / "train_run"
MIDWAY = DATA / "train_run_async_midway"
STEPS = [10, 20, 30]


def iter_dir(run: Path, step: int) -> Path:
    return run / f"iter_{step:07d}"


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """submit --dry-run's temp dirs under tmp_path; no endpoint variables from the environment."""
    for name in ("NEMO_EVALUATOR_MODEL_URL", "NEMO_EVALUATOR_MODEL_ID", "NEMO_EVALUATOR_API_KEY_NAME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path)


def test_the_data_is_what_the_real_writer_left():
    versions = (DATA / "VERSIONS").read_text()
    assert "megatron-bridge==0.3.1" in versions and "megatron-core==0.16.1" in versions
    names = sorted(os.listdir(iter_dir(RUN, 30)))
    assert names == [
        ".metadata",
        "__0_0.distcp",
        "__0_1.distcp",
        "common.pt",
        "metadata.json",
        "run_config.yaml",
        "tokenizer",
        "train_state.pt",
    ]
    assert sorted(os.listdir(iter_dir(RUN, 30) / "tokenizer")) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert (RUN / "latest_checkpointed_iteration.txt").read_text() == "30"
    assert (MIDWAY / "latest_checkpointed_iteration.txt").read_text() == "20"
    # The size rule is exact on real shards: each file ends where its last item ends.
    for step in STEPS:
        ends = shard_ends((iter_dir(RUN, step) / ".metadata").read_bytes())
        assert sorted(ends) == ["__0_0.distcp", "__0_1.distcp"]
        for name, end in ends.items():
            assert (iter_dir(RUN, step) / name).stat().st_size == end


def test_cli_validate_accepts_every_real_iteration():
    result = invoke("validate", *(iter_dir(RUN, step) for step in STEPS))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"OK  {iter_dir(RUN, step)}  iter {step}  torch_dist" for step in STEPS]


def test_cli_validate_rejects_the_async_save_caught_before_finalize_and_the_lookalikes():
    midway = iter_dir(MIDWAY, 30)
    result = invoke("validate", midway, DATA / "hf_export", RUN)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith(
        f"INVALID  {midway}: {midway} is incomplete: *.distcp shards without "
        f".metadata (shards still being written, or the job died during an "
        f"async save)"
    )
    assert lines[0].endswith(f"(latest complete checkpoint of this run: {iter_dir(MIDWAY, 20)})")
    assert f"{DATA / 'hf_export'} is a Hugging Face checkpoint" in lines[1]
    assert (
        f"training run's checkpoint directory, not one checkpoint; pass an iteration directory "
        f"such as {iter_dir(RUN, 30)} (latest by tracker and scan)" in lines[2]
    )


def test_discovery_over_the_real_runs():
    assert [v.iteration for v in discover(RUN).valid] == STEPS
    found = discover(MIDWAY)
    assert [v.iteration for v in found.valid] == [10, 20]
    assert [v.iteration for v in found.invalid] == [30]
    assert latest(RUN).path == iter_dir(RUN, 30)
    assert latest(MIDWAY).path == iter_dir(MIDWAY, 20)


def test_submit_dry_run_all_and_latest_on_the_real_runs(sandbox, tmp_path):
    out = tmp_path / "results"
    result = invoke("submit", "-c", "default", "--checkpoint", RUN, "--all", "--dry-run", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert "would submit 3 evaluation(s)" in result.output
    for step in STEPS:
        assert str(iter_dir(RUN, step)) in result.output
    result = invoke("submit", "-c", "default", "--checkpoint", MIDWAY, "--latest", "--dry-run", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert "would submit 1 evaluation(s)" in result.output
    assert str(iter_dir(MIDWAY, 20)) in result.output and str(iter_dir(MIDWAY, 30)) not in result.output
    result = invoke("submit", "-c", "default", "--checkpoint", MIDWAY, "--all", "--dry-run", "--output-dir", out)
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skip (invalid): ")]
    assert len(skipped) == 1 and str(iter_dir(MIDWAY, 30)) in skipped[0]
    assert "shards without .metadata" in skipped[0]
    assert not out.exists()


# ---- broken copies: iter_0000030 of a copied run, damaged as a crash or a bad copy leaves it ----


def _cut_shard(it: Path) -> None:
    with open(it / "__0_0.distcp", "r+b") as file:
        file.truncate(1000)


def _zero_shard(it: Path) -> None:
    (it / "__0_1.distcp").write_bytes(b"")


EARLIER = "use an earlier iteration"
WAIT = f"wait for the save to finish or {EARLIER}"
BROKEN = {
    # the two that passed before the size and common.pt rules
    "shard-cut-short": (
        _cut_shard,
        f"{{it}} is truncated: __0_0.distcp has 1000 bytes, .metadata records {{end}}; {EARLIER}",
    ),
    "common-pt-removed": (
        lambda it: (it / "common.pt").unlink(),
        (
            f"{{it}} is missing common.pt, which its metadata.json requires (common_backend 'torch'); "
            f"loading it would fail: {EARLIER}"
        ),
    ),
    "metadata-removed": (
        lambda it: (it / ".metadata").unlink(),
        (
            f"{{it}} is incomplete: *.distcp shards without .metadata (shards still being written, or "
            f"the job died during an async save); {WAIT}"
        ),
    ),
    "metadata-json-removed": (
        lambda it: (it / "metadata.json").unlink(),
        (f"{{it}} is incomplete: .metadata without metadata.json (the Megatron-Core finalize did not run); {WAIT}"),
    ),
    "zero-byte-shard": (_zero_shard, f"{{it}} is truncated: zero-byte __0_1.distcp; {EARLIER}"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_copies_fail_with_their_own_reason(tmp_path, case):
    run = shutil.copytree(RUN, tmp_path / "checkpoints", symlinks=True)
    it = iter_dir(run, 30)
    end = shard_ends((it / ".metadata").read_bytes())["__0_0.distcp"]
    assert end > 1000, "the real shard must be longer than the cut"
    damage, reason = BROKEN[case]
    damage(it)
    verdict = validate(it)
    assert not verdict.ok
    assert verdict.reason == reason.format(it=it, end=end) + (
        f" (latest complete checkpoint of this run: {iter_dir(run, 20)})"
    )
    result = invoke("validate", it)
    assert result.exit_code == 1 and reason.format(it=it, end=end) in result.output
    assert latest(run).path == iter_dir(run, 20)  # --latest falls back past the broken one
