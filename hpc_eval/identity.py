"""Which checkpoint an evaluation is of: rules the submit, watch, payload and reports share.

* A training run is its directory's real path (symlinks resolved), not its name: two runs named
  `run1` under different projects are two runs. `run_hash` gives the short hash put beside the
  readable name on disk.
* Two paths are the same checkpoint when they resolve to the same directory (same real path,
  or the same `(st_dev, st_ino)`: a bind mount or a second mount of one file system).
* A checkpoint rewritten in place (a run relaunched into the same directory) is a new
  checkpoint. `fingerprint` records it cheaply: size and mtime of `.metadata` (one `stat`,
  which is all `watch` spends per checkpoint and pass) and a hash of `train_state.pt` (small).

Standard library only: the payload imports this inside the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

METADATA_FILE = ".metadata"  # rewritten by every save of a torch_dist checkpoint
TRAIN_STATE_FILE = "train_state.pt"  # a few KB: the step, the consumed samples, the RNG state
SHORT = 8  # hex digits of the hashes written into directory names


_resolved: dict[str, Path] | None = None  # while `resolving_once`: path -> its real path


def real_path(path: Path | str) -> Path:
    if _resolved is None:
        return Path(os.path.realpath(path))
    key = os.fspath(path)
    if key not in _resolved:
        _resolved[key] = Path(os.path.realpath(path))
    return _resolved[key]


@contextlib.contextmanager
def resolving_once():
    """Resolve each path once inside: planning a checkpoint resolves it and its run dir nine times
    (an lstat per component each), and ten thousand checkpoints share one run dir."""
    global _resolved
    outer = _resolved
    _resolved = {} if outer is None else outer
    try:
        yield
    finally:
        _resolved = outer


def run_dir_of(checkpoint: Path | str) -> Path:
    """The real directory a checkpoint lives in: the training run's checkpoint folder."""
    return real_path(checkpoint).parent


def run_hash(run_dir: Path | str) -> str:
    """A short, stable hash of a training run's real directory."""
    return hashlib.sha256(str(real_path(run_dir)).encode()).hexdigest()[:SHORT]


def same_checkpoint(a: Path | str | None, b: Path | str | None) -> bool:
    """Whether two paths name one checkpoint directory (symlinks resolved; same inode counts)."""
    if not a or not b:
        return False
    if real_path(a) == real_path(b):
        return True
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def stat_key(checkpoint: Path | str) -> str | None:
    """`<size>-<mtime_ns>` of the checkpoint's `.metadata` (its own directory's without one); None when gone."""
    for path in (Path(checkpoint) / METADATA_FILE, Path(checkpoint)):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return f"{st.st_size}-{st.st_mtime_ns}"
    return None


def fingerprint(checkpoint: Path | str) -> dict[str, Any]:
    """What a checkpoint's content is, cheaply: `.metadata`'s stat key and a hash of train_state.pt."""
    digest = hashlib.sha256()
    try:
        with open(Path(checkpoint) / TRAIN_STATE_FILE, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:  # not written (yet), or not a Megatron checkpoint: the stat key alone tells
        digest = None
    return {"stat": stat_key(checkpoint), "train_state_sha256": digest.hexdigest() if digest else None}


def fingerprint_id(recorded: dict[str, Any]) -> str:
    """The short id of a fingerprint, for directory names."""
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:SHORT]


def fingerprint_change(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """How a checkpoint differs from its recorded fingerprint ("" when it is the same, or none was recorded)."""
    if not recorded:
        return ""  # written before fingerprints were recorded: nothing to compare
    changes = []
    if recorded.get("stat") != current.get("stat"):
        changes.append(f"{METADATA_FILE} size-mtime {recorded.get('stat')} -> {current.get('stat')}")
    if recorded.get("train_state_sha256") != current.get("train_state_sha256"):
        changes.append(
            f"{TRAIN_STATE_FILE} sha256 {str(recorded.get('train_state_sha256'))[:12]} -> {str(current.get('train_state_sha256'))[:12]}"
        )
    return "; ".join(changes)


def changed_since(recorded: dict[str, Any] | None, checkpoint: Path | str | None) -> bool:
    """Whether a recorded checkpoint was rewritten since (one `stat`); a deleted one has not changed."""
    if not recorded or not checkpoint:
        return False
    now = stat_key(checkpoint)
    return now is not None and now != recorded.get("stat")


def shared_labels(runs: list[tuple[str, str | None]]) -> dict[str, list[str]]:
    """Labels that more than one training run carries: label -> the run directories, sorted."""
    dirs: dict[str, set[str]] = {}
    for label, run_dir in runs:
        dirs.setdefault(label, set()).add(run_dir or "")
    return {label: sorted(found) for label, found in dirs.items() if len(found) > 1}
