"""Issue 15 (part A): a submission that fails claims nothing (real local Slurm, real file system).

sbatch refusing a value, the controller unreachable, a request no node can hold and a disk that
fills mid `--all`: each is one `Error:` line, and the same command afterwards submits at once.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from slurm_helpers import hpc_eval
from support.fakeckpt import make_run
from test_watch import DRY_KEY, make_quiet, watch

pytestmark = pytest.mark.slurm
HOLD = "+slurm.additional_parameters.hold=true"  # queued, never run: nothing to wait for


@pytest.fixture(autouse=True)
def _config_env(monkeypatch):
    monkeypatch.setenv("STUB_URL", "http://127.0.0.1:9")


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def claimed(out: Path) -> list[Path]:
    """Evaluation dirs left in the output dir (claimed), whatever they hold."""
    return sorted(path for path in out.glob("*/iter_*/*") if path.is_dir())


def recorded(out: Path) -> list[Path]:
    return sorted(record.parent for record in out.glob("*/iter_*/*/slurm.json"))


def one_checkpoint(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "run" / "checkpoints", [100])
    make_quiet(run)
    return run / "iter_0000100"


def test_sbatch_refusing_a_value_releases_the_claim_and_the_same_submit_then_submits(tmp_path, count_sbatch):
    checkpoint, out = one_checkpoint(tmp_path), tmp_path / "out"
    refused = hpc_eval(
        "submit",
        *DRY_KEY,
        HOLD,
        "+slurm.additional_parameters.begin=bogus",
        "--checkpoint",
        checkpoint,
        "--output-dir",
        out,
    )
    assert refused.exit_code == 1, refused.output
    assert len(error_lines(refused.output)) == 1 and "Invalid --begin" in refused.output, refused.output
    assert "Traceback" not in refused.output and claimed(out) == [] and count_sbatch.count() == 1
    again = hpc_eval("submit", *DRY_KEY, HOLD, "--checkpoint", checkpoint, "--output-dir", out)
    assert again.exit_code == 0 and "submitted job" in again.output, again.output
    assert len(recorded(out)) == 1 and count_sbatch.count() == 2


def test_a_partition_typo_is_refused_before_anything_is_claimed(tmp_path, count_sbatch):
    checkpoint, out = one_checkpoint(tmp_path), tmp_path / "out"
    typo = hpc_eval("submit", *DRY_KEY, HOLD, "slurm.partition=gpux", "--checkpoint", checkpoint, "--output-dir", out)
    assert typo.exit_code == 2, typo.output
    assert error_lines(typo.output) == [
        "Error: slurm.partition=gpux: no such partition on this cluster (it has debug, gpu); set slurm.partition"
    ], typo.output
    assert claimed(out) == [] and count_sbatch.count() == 0
    fixed = hpc_eval("submit", *DRY_KEY, HOLD, "slurm.partition=gpu", "--checkpoint", checkpoint, "--output-dir", out)
    assert fixed.exit_code == 0 and "submitted job" in fixed.output, fixed.output


def test_an_infeasible_request_is_exit_2_with_one_line_and_nothing_claimed(tmp_path, count_sbatch):
    checkpoint, out = one_checkpoint(tmp_path), tmp_path / "out"
    result = hpc_eval("submit", *DRY_KEY, "slurm.cpus_per_task=64", "--checkpoint", checkpoint, "--output-dir", out)
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        "Error: slurm.cpus_per_task=64 but the largest node of partition debug has 8 CPUs; set slurm.cpus_per_task"
    ], result.output
    assert claimed(out) == [] and count_sbatch.count() == 0
    watched = watch(checkpoint.parent, out, "slurm.cpus_per_task=64")
    assert watched.exit_code == 2 and len(error_lines(watched.output)) == 1 and claimed(out) == [], watched.output


def test_an_unreachable_controller_claims_nothing_and_submit_then_watch_submits(tmp_path, monkeypatch, count_sbatch):
    checkpoint, out = one_checkpoint(tmp_path), tmp_path / "out"
    conf = tmp_path / "slurm.conf"
    lines = [
        line for line in Path("/etc/slurm/slurm.conf").read_text().splitlines() if not line.startswith("SlurmctldPort")
    ]
    conf.write_text("\n".join(lines + ["SlurmctldPort=9"]) + "\n")  # nothing listens there
    monkeypatch.setenv("SLURM_CONF", str(conf))
    started = time.monotonic()
    down = hpc_eval("submit", *DRY_KEY, HOLD, "--checkpoint", checkpoint, "--output-dir", out)
    assert down.exit_code == 1 and len(error_lines(down.output)) == 1, down.output
    assert "Unable to contact slurm controller" in down.output and time.monotonic() - started < 60, down.output
    assert claimed(out) == []
    passed = watch(checkpoint.parent, out, HOLD)
    assert passed.exit_code == 1 and claimed(out) == [], passed.output
    monkeypatch.delenv("SLURM_CONF")
    back = watch(checkpoint.parent, out, HOLD)
    assert back.exit_code == 0 and "submitted " in back.output and len(recorded(out)) == 1, back.output


def test_output_dir_that_is_a_file_is_one_line(tmp_path):
    checkpoint = one_checkpoint(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for where in (["--output-dir", afile], [f"output_dir={afile}"], [f"output_dir={afile / 'sub'}"]):
        result = hpc_eval("submit", *DRY_KEY, "--checkpoint", checkpoint, *where)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        [line] = error_lines(result.output)
        assert str(afile) in line and "is a file" in line, line
    override = hpc_eval("submit", *DRY_KEY, "--checkpoint", checkpoint, f"output_dir={afile / 'sub'}")
    assert error_lines(override.output) == [
        f"Error: output_dir {afile / 'sub'}: {afile} is a file, not a directory; "
        "set output_dir (config key, override or --output-dir) to a directory"
    ]
    assert hpc_eval("watch", checkpoint.parent, *DRY_KEY, f"output_dir={afile}").exit_code == 2
    assert afile.read_text() == "x"


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_mid_all_releases_every_claim_and_leaves_no_half_file(tmp_path, small_tmpfs, count_sbatch):
    run = make_run(tmp_path / "run" / "checkpoints", list(range(100, 2100, 100)))
    make_quiet(run)
    full = hpc_eval("submit", *DRY_KEY, HOLD, "--checkpoint", run, "--all", "--output-dir", small_tmpfs)
    assert full.exit_code == 1 and "Traceback" not in full.output, full.output
    [line] = error_lines(full.output)
    assert "No space left on device" in line and "nothing submitted" in line and "claim(s) released" in line, line
    assert count_sbatch.count() == 0 and claimed(small_tmpfs) == []
    assert [path for path in small_tmpfs.rglob("*") if path.is_file() and path.stat().st_size == 0] == []
