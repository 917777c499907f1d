"""hpc_eval.identity: which training run and which checkpoint an evaluation is of (real files, no Slurm)."""

from __future__ import annotations

import os
import subprocess

from hpc_eval import identity
from hpc_eval.store import eval_dir, find_existing, run_folder, write_json
from support.fakeckpt import iter_name, make_iter, make_run


def test_runs_with_the_same_name_get_different_hashes_and_a_symlink_the_same(tmp_path):
    first = make_run(tmp_path / "a" / "run1" / "checkpoints", [100])
    second = make_run(tmp_path / "b" / "run1" / "checkpoints", [100])
    link = tmp_path / "link"
    link.symlink_to(first)
    assert identity.run_hash(first) != identity.run_hash(second)
    assert identity.run_hash(link) == identity.run_hash(first) == identity.run_hash(f"{first}/../checkpoints")
    assert len(identity.run_hash(first)) == 8 and run_folder("run1", first) == f"run1-{identity.run_hash(first)}"
    assert identity.run_dir_of(link / iter_name(100)) == first.resolve()


def test_same_checkpoint_follows_symlinks_and_inodes(tmp_path):
    run = make_run(tmp_path / "a" / "run1" / "checkpoints", [100, 200])
    other = make_run(tmp_path / "b" / "run1" / "checkpoints", [100])
    best = tmp_path / "best"
    best.symlink_to(run / iter_name(100))
    assert identity.same_checkpoint(best, run / iter_name(100))
    assert not identity.same_checkpoint(run / iter_name(100), run / iter_name(200))
    assert not identity.same_checkpoint(run / iter_name(100), other / iter_name(100))
    assert not identity.same_checkpoint(None, run / iter_name(100))
    # a bind mount is not available unprivileged; a hard-linked file is the same (st_dev, st_ino) case
    os.link(run / iter_name(100) / "train_state.pt", tmp_path / "hard.pt")
    assert identity.same_checkpoint(tmp_path / "hard.pt", run / iter_name(100) / "train_state.pt")


def test_a_rewrite_in_place_changes_the_fingerprint_and_a_rename_does_not(tmp_path):
    run = make_run(tmp_path / "run" / "checkpoints", [100])
    checkpoint = run / iter_name(100)
    before = identity.fingerprint(checkpoint)
    assert before["stat"] and len(before["train_state_sha256"]) == 64
    assert identity.fingerprint(checkpoint) == before and identity.fingerprint_change(before, before) == ""
    assert identity.fingerprint_id(before) == identity.fingerprint_id(dict(reversed(before.items())))

    subprocess.run(["rm", "-rf", str(checkpoint)], check=True)  # relaunched from scratch: step 100 saved again
    make_iter(run, 100, extra={"train_state.pt": b"PK\x03\x04other-weights"})
    after = identity.fingerprint(checkpoint)
    change = identity.fingerprint_change(before, after)
    assert "train_state.pt sha256" in change and ".metadata size-mtime" in change, change
    assert identity.fingerprint_id(after) != identity.fingerprint_id(before)
    assert identity.changed_since(before, checkpoint) and not identity.changed_since(after, checkpoint)
    assert identity.fingerprint_change(None, after) == "", "requests written before fingerprints: nothing to compare"


def test_a_deleted_checkpoint_has_not_changed(tmp_path):
    run = make_run(tmp_path / "run" / "checkpoints", [100])
    recorded = identity.fingerprint(run / iter_name(100))
    subprocess.run(["rm", "-rf", str(run / iter_name(100))], check=True)
    assert identity.stat_key(run / iter_name(100)) is None
    assert not identity.changed_since(recorded, run / iter_name(100))


def test_shared_labels_lists_runs_that_carry_one_name():
    runs = [
        ("run1", "/a/run1/checkpoints"),
        ("run1", "/b/run1/checkpoints"),
        ("run1", "/a/run1/checkpoints"),
        ("solo", "/c/solo/checkpoints"),
        ("endpoint", None),
    ]
    assert identity.shared_labels(runs) == {"run1": ["/a/run1/checkpoints", "/b/run1/checkpoints"]}


def test_find_existing_reads_other_labels_and_the_old_layout_only_for_the_same_checkpoint(tmp_path):
    run = make_run(tmp_path / "a" / "run1" / "checkpoints", [100])
    other = make_run(tmp_path / "b" / "run1" / "checkpoints", [100])
    checkpoint, out = run / iter_name(100), tmp_path / "out"
    fingerprint = identity.fingerprint(checkpoint)
    assert find_existing(out, "run1", checkpoint, "cafe", fingerprint) is None

    old = out / "run1" / iter_name(100) / "cafe"  # as hpc-eval wrote it before runs had a hash
    old.mkdir(parents=True)
    write_json(old / "request.json", {"checkpoint": str(other / iter_name(100)), "run": "run1"})
    assert find_existing(out, "run1", checkpoint, "cafe", fingerprint) is None, "another run's evaluation"
    write_json(old / "request.json", {"checkpoint": str(checkpoint), "run": "run1"})
    assert find_existing(out, "run1", checkpoint, "cafe", fingerprint).root == old
    assert find_existing(out, "run1", checkpoint, "beef", fingerprint) is None, "another config"

    relabelled = eval_dir(out, "my-label", checkpoint, "cafe", fingerprint)  # submitted with --run my-label
    relabelled.mkdir(parents=True)
    write_json(
        relabelled / "request.json", {"checkpoint": str(checkpoint), "run": "my-label", "fingerprint": fingerprint}
    )
    old.joinpath("request.json").unlink()
    assert find_existing(out, "run1", checkpoint, "cafe", fingerprint).root == relabelled
    new = eval_dir(out, "run1", checkpoint, "cafe", fingerprint)
    new.mkdir(parents=True)
    assert find_existing(out, "run1", checkpoint, "cafe", fingerprint).root == new
    assert new.parent.parent.name == f"run1-{identity.run_hash(run)}" and new.name.startswith("cafe-")
