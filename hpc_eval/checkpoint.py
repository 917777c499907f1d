"""Find Megatron Bridge iter_* checkpoints in a training run, and validate paths users give.

Standard library only, and frugal with file system calls: a cron pass runs discovery over
thousands of directories on NFS, so each run costs one os.scandir, and only the iteration
directories selected (by name and step, before any check) are opened. What makes one iteration
directory complete lives in checkpoint_rules; this module adds discovery, selection (all, latest,
every, from, to), the run's tracker, and the directories that only look like a checkpoint.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from hpc_eval.checkpoint_rules import (
    ITER_NAME,
    TRACKER_TXT,
    Entries,
    Options,
    Verdict,
    check_iter_dir,
    is_dir,
    iteration_of,
    scan_error,
    shard_ends,
)
from hpc_eval.errors import CheckpointError

__all__ = [  # what callers use; the rules and readers are re-exported from checkpoint_rules
    "ITER_NAME",
    "TRACKER_TXT",
    "CheckpointError",
    "Discovery",
    "Verdict",
    "discover",
    "is_run_dir",
    "latest",
    "shard_ends",
    "validate",
    "validate_many",
]

TRACKER_PT = "latest_train_state.pt"  # Bridge tracker (a torch pickle we never open)
HF_WEIGHTS = re.compile(
    r"^(model\.safetensors|pytorch_model\.bin)(\.index\.json)?$"
    r"|^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$"
)
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ENERGON_STATE = re.compile(r"^train_dataloader_dprank\d+\.pt$")


@dataclass(frozen=True)
class Discovery:
    """The iter_* checkpoints found directly under a training run's checkpoint directory."""

    run_dir: Path
    valid: list[Verdict]  # ascending by iteration
    invalid: list[Verdict]  # candidates in range that failed, with reasons


def validate_many(
    paths: Iterable[str | os.PathLike], *, quiet_seconds: float = 0.0, now: float | None = None
) -> list[Verdict]:
    """validate() each path, reading each run's tracker file once (`validate run/iter_*`)."""
    trackers: dict[Path, int | None] = {}
    return [validate(path, quiet_seconds=quiet_seconds, now=now, trackers=trackers) for path in paths]


def validate(
    path: str | os.PathLike,
    *,
    quiet_seconds: float = 0.0,
    now: float | None = None,
    trackers: dict[Path, int | None] | None = None,
) -> Verdict:
    """Say whether `path` is a complete Megatron Bridge iter_* checkpoint that can be served.

    `trackers` memoizes the parent's tracker between calls of one batch (see validate_many).
    """
    path = Path(os.path.abspath(path))
    try:
        entries = _scan(path)
    except OSError as error:
        return Verdict(path, ok=False, reason=scan_error(path, error))
    lookalike = _lookalike(path, entries)
    if lookalike is not None:
        return lookalike
    in_run = ITER_NAME.match(path.name) is not None
    tracker = None
    if in_run:
        trackers = {} if trackers is None else trackers
        if path.parent not in trackers:
            trackers[path.parent] = _read_tracker(path.parent)
        tracker = trackers[path.parent]
    verdict = check_iter_dir(path, entries, Options(tracker, quiet_seconds, now))
    return verdict if verdict.ok or not in_run else _with_latest_hint(verdict)


def discover(
    run_dir: str | os.PathLike,
    *,
    select: str = "all",
    every: int | None = None,
    from_step: int | None = None,
    to_step: int | None = None,
    quiet_seconds: float = 0.0,
    now: float | None = None,
) -> Discovery:
    """List the iter_* checkpoints directly under `run_dir`; raise CheckpointError if unreadable.

    select="all" validates every candidate in range; select="latest" tries the tracker's
    iteration first, then the others from the highest down, and stops at the first valid one.
    """
    if select not in ("all", "latest"):
        raise ValueError(f"select must be 'all' or 'latest', not {select!r}")
    run_dir = Path(os.path.abspath(run_dir))
    try:
        entries = _scan(run_dir)
    except OSError as error:
        raise CheckpointError(scan_error(run_dir, error)) from None

    def wanted(step: int) -> bool:
        in_range = (from_step is None or step >= from_step) and (to_step is None or step <= to_step)
        return in_range and (not every or step % every == 0)

    return _discover(run_dir, entries, select, wanted, Options(None, quiet_seconds, now))


def latest(run_dir: str | os.PathLike) -> Verdict | None:
    """Return the run's latest valid checkpoint (tracker first, then highest valid), or None."""
    found = discover(run_dir, select="latest").valid
    return found[0] if found else None


def is_run_dir(path: str | os.PathLike) -> bool:
    """Say whether `path` looks like a training run's checkpoint root (iter_* dirs or trackers)."""
    try:
        return _looks_like_run_dir(_scan(Path(path)))
    except OSError:
        return False


# ---- discovery ----


def _discover(
    run_dir: Path, entries: Entries, select: str, wanted: Callable[[int], bool], options: Options
) -> Discovery:
    """Filter the scanned children by name and step first, then validate only those candidates."""
    candidates, unreadable = [], []
    for name, entry in entries.items():
        match = ITER_NAME.match(name)
        try:
            if match and wanted(int(match.group(1))) and entry.is_dir():
                candidates.append((int(match.group(1)), entry))
        except OSError as error:  # a symlink loop, no permission: that checkpoint is invalid, the rest go on
            unreadable.append(
                Verdict(
                    run_dir / name, ok=False, iteration=int(match.group(1)), reason=scan_error(run_dir / name, error)
                )
            )
    tracker = _read_tracker(run_dir) if TRACKER_TXT in entries else None
    if select == "latest":
        # The tracker's iteration first, then the rest from the highest step down.
        candidates.sort(key=lambda candidate: (candidate[0] != tracker, -candidate[0]))
    else:
        candidates.sort(key=lambda candidate: candidate[0])
    options = replace(options, tracker=tracker)
    valid, invalid = [], unreadable
    for _, entry in candidates:
        verdict = _check_child(run_dir / entry.name, options)
        (valid if verdict.ok else invalid).append(verdict)
        if valid and select == "latest":
            break
    invalid.sort(key=lambda verdict: verdict.iteration)
    return Discovery(run_dir, valid, invalid)


def _check_child(path: Path, options: Options) -> Verdict:
    """Validate one iter_* directory found by discovery (one scan, no lookalike checks)."""
    try:
        entries = _scan(path)
    except OSError as error:
        return Verdict(path, ok=False, iteration=iteration_of(path), reason=scan_error(path, error))
    return check_iter_dir(path, entries, options)


def _with_latest_hint(verdict: Verdict) -> Verdict:
    """Append the run's latest complete checkpoint to the reason, when there is one."""
    try:
        best = latest(verdict.path.parent)
    except CheckpointError:
        return verdict
    if best is None:
        return verdict
    hint = f" (latest complete checkpoint of this run: {best.path})"
    return replace(verdict, reason=verdict.reason + hint)


# ---- lookalikes: directories that are something else than one iter_* checkpoint ----


def _lookalike(path: Path, entries: Entries) -> Verdict | None:
    """Reject a Hugging Face, PEFT, NeMo 2, run or dataloader directory, saying what it is."""
    names = entries.keys()
    is_hf = "config.json" in names and any(HF_WEIGHTS.match(name) for name in names)
    is_peft = "adapter_config.json" in names and any(name in names for name in PEFT_WEIGHTS)
    if (is_hf or is_peft) and ITER_NAME.match(path.parent.name):
        reason = (
            f"{path} is the Hugging Face export saved inside {path.parent.name} "
            f"(also_save_hf_checkpoint), not the Megatron checkpoint; pass {path.parent} for "
            f"Megatron serving, or serve {path} with an HF deployment (vLLM/SGLang)"
        )
    elif is_hf:
        reason = (
            f"{path} is a Hugging Face checkpoint, not a Megatron Bridge iter_* checkpoint; serve "
            f"it with an HF deployment (vLLM/SGLang), or import it with AutoBridge.import_ckpt, "
            f"which writes <dir>/iter_0000000"
        )
    elif is_peft:
        reason = (
            f"{path} is a Hugging Face PEFT adapter, not a Megatron Bridge checkpoint; serve it on "
            f"its base model with an HF deployment that loads adapters (e.g. vLLM --lora-modules)"
        )
    if is_hf or is_peft:
        return Verdict(path, ok=False, format="hf" if is_hf else "hf_peft", reason=reason)
    if is_dir(entries, "context") and is_dir(entries, "weights"):
        reason = (
            f"{path} is a NeMo 2 checkpoint (context/ + weights/), not Megatron Bridge; export it "
            f"to Hugging Face and serve or import that, or use a NeMo 2 deployment"
        )
        return Verdict(path, ok=False, format="nemo2", reason=reason)
    if _looks_like_run_dir(entries):
        return Verdict(path, ok=False, reason=_run_dir_reason(path, entries))
    under_energon = path.parent.name == "energon" and ITER_NAME.match(path.name) is not None
    if under_energon or (names and all(ENERGON_STATE.match(name) for name in names)):
        model_dir = path.parent.parent / path.name
        fix = f"pass {model_dir} instead" if under_energon else "pass the model's iter_* directory"
        reason = f"{path} holds Megatron-Energon dataloader state, not model weights; {fix}"
        return Verdict(path, ok=False, reason=reason)
    return None


def _looks_like_run_dir(entries: Entries) -> bool:
    """True when the directory has trackers or iter_* subdirectories."""
    if TRACKER_TXT in entries or TRACKER_PT in entries:
        return True
    return any(ITER_NAME.match(name) and entry.is_dir() for name, entry in entries.items())


def _run_dir_reason(path: Path, entries: Entries) -> str:
    """Explain that `path` is a run directory and name the iteration directory to pass instead."""
    found = _discover(path, entries, "latest", lambda step: True, Options())
    prefix = f"{path} is a training run's checkpoint directory, not one checkpoint"
    if not found.valid:
        return (
            f"{prefix}, and none of its iter_* directories is a complete checkpoint yet; wait for "
            f"a save to finish, then pass that iter_* directory"
        )
    best = found.valid[0]
    tracker = _read_tracker(path) if TRACKER_TXT in entries else None
    if tracker == best.iteration:
        how = "latest by tracker and scan"
    elif tracker is None:
        how = f"highest complete iteration; no {TRACKER_TXT}"
    else:
        how = f"highest complete iteration; the tracker's iter_{tracker:07d} is not usable"
    return f"{prefix}; pass an iteration directory such as {best.path} ({how}), or give the directory to --all/--latest"


# ---- small readers ----


def _read_tracker(run_dir: Path) -> int | None:
    """Return the step in latest_checkpointed_iteration.txt; None if absent, 'release' or bad."""
    try:
        with open(run_dir / TRACKER_TXT, "rb") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def _scan(path: Path) -> Entries:
    """List a directory once; DirEntry caches type and stat so later checks cost no extra calls."""
    with os.scandir(path) as iterator:
        return {entry.name: entry for entry in iterator}


@dataclass
class Selection:
    """Which checkpoints of a training run's directory to take (`--all`, `--latest`, ...)."""

    all: bool = False
    latest: bool = False
    every: int | None = None
    from_step: int | None = None
    to_step: int | None = None

    @property
    def given(self) -> bool:
        return self.all or self.latest or any(v is not None for v in (self.every, self.from_step, self.to_step))


@dataclass
class CheckpointChoice:
    valid: list[tuple[Path, int | None]]
    invalid: list[tuple[str, str]]  # (path, reason)


def choose_checkpoints(
    given: list[str], selection: Selection, *, strict: bool = False, quiet_seconds: float = 0.0
) -> CheckpointChoice:
    """Validate explicit checkpoints and expand training-run directories by the selection.

    Raises:
        CheckpointError: a single checkpoint is invalid, none is valid, or --strict and any is invalid.
    """
    valid: list[tuple[Path, int | None]] = []
    invalid: list[tuple[str, str]] = []
    for pattern in given:
        paths = sorted(globlib.glob(pattern)) if globlib.has_magic(pattern) else [pattern]
        if not paths:
            invalid.append((pattern, f"no path matches {pattern}"))
        for path in paths:
            if selection.given and is_run_dir(path):
                found = discover(
                    path,
                    select="latest" if selection.latest else "all",
                    every=selection.every,
                    from_step=selection.from_step,
                    to_step=selection.to_step,
                    quiet_seconds=quiet_seconds,
                )
                valid += [(verdict.path, verdict.iteration) for verdict in found.valid]
                invalid += [(str(verdict.path), verdict.reason) for verdict in found.invalid]
                continue
            verdict = validate(path, quiet_seconds=quiet_seconds)
            if verdict.ok:
                valid.append((verdict.path, verdict.iteration))
            else:
                invalid.append((str(verdict.path), verdict.reason))
    if invalid and (strict or (len(given) == 1 and not selection.given and not valid)):
        raise CheckpointError(
            f"invalid checkpoint {invalid[0][0]}: {invalid[0][1]}"
            + (f" (and {len(invalid) - 1} more)" if len(invalid) > 1 else "")
        )
    if given and not valid:
        reason = invalid[0][1] if invalid else "nothing selected"
        raise CheckpointError(f"no valid checkpoint among {', '.join(given)}: {reason}")
    return CheckpointChoice(valid, invalid)
