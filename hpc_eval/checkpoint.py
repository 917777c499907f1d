"""Validate Megatron Bridge iter_* checkpoint directories and discover them under a training run.

Standard library only, and frugal with file system calls: a cron pass runs discovery over
thousands of directories on NFS, so each iteration directory costs one os.scandir, a stat of
each shard and three small reads. The facts behind every check (save order, lookalikes) are in
the shared research note megatron-bridge-checkpoints.md.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hpc_eval.errors import CheckpointError

ITER_NAME = re.compile(r"^iter_(\d+)$")
TRACKER_TXT = "latest_checkpointed_iteration.txt"  # Megatron-LM text tracker: the step, no newline
TRACKER_PT = "latest_train_state.pt"  # Bridge tracker (a torch pickle we never open)
# .metadata is a pickle whose storage_data holds each shard's relative_path as raw UTF-8.
SHARD_REFERENCE = re.compile(rb"[\w.\-]*\.distcp")
HF_WEIGHTS = re.compile(
    r"^(model\.safetensors|pytorch_model\.bin)(\.index\.json)?$"
    r"|^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$"
)
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ENERGON_STATE = re.compile(r"^train_dataloader_dprank\d+\.pt$")
# run_config.yaml comes from yaml.safe_dump: top-level keys at column 0, nested keys indented by
# two spaces, block lines under a key start with a space or "- ". These patterns read just the
# facts we need without PyYAML.
MODEL_KEY = re.compile(rb"^model:", re.MULTILINE)
PEFT_KEY = re.compile(rb"^peft:[ \t]*(.*)\n?([ -])?", re.MULTILINE)  # inline value; block follows?
CKPT_FORMAT_KEY = re.compile(rb"^checkpoint:\n(?:[ -].*\n)*?  ckpt_format:[ \t]*(.*)", re.MULTILINE)

Entries = dict[str, os.DirEntry]  # one directory's listing by name, from a single os.scandir


@dataclass(frozen=True)
class Verdict:
    """What validate() found at one path: a usable checkpoint, or why it is not one."""

    path: Path
    ok: bool
    iteration: int | None = None
    format: str | None = None
    has_tokenizer: bool = False
    reason: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Return a JSON-ready dict of the verdict."""
        return {**asdict(self), "path": str(self.path), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class Discovery:
    """The iter_* checkpoints found directly under a training run's checkpoint directory."""

    run_dir: Path
    valid: list[Verdict]  # ascending by iteration
    invalid: list[Verdict]  # candidates in range that failed, with reasons


@dataclass(frozen=True)
class _Options:
    """What checking one iteration directory needs besides its listing."""

    tracker: int | None = None  # the step in the parent's latest_checkpointed_iteration.txt
    quiet_seconds: float = 0.0  # warn about files modified this recently (0: off)
    now: float | None = None  # the clock for that warning (None: time.time())


@dataclass(frozen=True)
class _RunConfig:
    """The few facts of run_config.yaml the validator needs."""

    has_model: bool
    ckpt_format: str | None
    peft: bool


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
        return Verdict(path, ok=False, reason=_scan_error(path, error))
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
    verdict = _check_iter_dir(path, entries, _Options(tracker, quiet_seconds, now))
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
        raise CheckpointError(_scan_error(run_dir, error)) from None

    def wanted(step: int) -> bool:
        in_range = (from_step is None or step >= from_step) and (to_step is None or step <= to_step)
        return in_range and (not every or step % every == 0)

    return _discover(run_dir, entries, select, wanted, _Options(None, quiet_seconds, now))


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
    run_dir: Path, entries: Entries, select: str, wanted: Callable[[int], bool], options: _Options
) -> Discovery:
    """Filter the scanned children by name and step first, then validate only those candidates."""
    candidates = []
    for name, entry in entries.items():
        match = ITER_NAME.match(name)
        if match and wanted(int(match.group(1))) and entry.is_dir():
            candidates.append((int(match.group(1)), entry))
    tracker = _read_tracker(run_dir) if TRACKER_TXT in entries else None
    if select == "latest":
        # The tracker's iteration first, then the rest from the highest step down.
        candidates.sort(key=lambda candidate: (candidate[0] != tracker, -candidate[0]))
    else:
        candidates.sort(key=lambda candidate: candidate[0])
    options = replace(options, tracker=tracker)
    valid, invalid = [], []
    for _, entry in candidates:
        verdict = _check_child(run_dir / entry.name, options)
        (valid if verdict.ok else invalid).append(verdict)
        if valid and select == "latest":
            break
    invalid.sort(key=lambda verdict: verdict.iteration)
    return Discovery(run_dir, valid, invalid)


def _check_child(path: Path, options: _Options) -> Verdict:
    """Validate one iter_* directory found by discovery (one scan, no lookalike checks)."""
    try:
        entries = _scan(path)
    except OSError as error:
        return Verdict(path, ok=False, iteration=_iteration(path), reason=_scan_error(path, error))
    return _check_iter_dir(path, entries, options)


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
    if _is_dir(entries, "context") and _is_dir(entries, "weights"):
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
    found = _discover(path, entries, "latest", lambda step: True, _Options())
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
    return (
        f"{prefix}; pass an iteration directory such as {best.path} ({how}), "
        f"or give the directory to --all/--latest"
    )


# ---- one iter_* directory ----


def _check_iter_dir(path: Path, entries: Entries, options: _Options) -> Verdict:
    """Validate the files of one iteration directory; an unreadable file is a rejection too."""
    iteration = _iteration(path)
    has_tokenizer = _is_dir(entries, "tokenizer")
    try:
        run_config = entries.get("run_config.yaml")
        config = _read_run_config(run_config) if run_config else None
        problem, fmt = _completeness_problem(path, entries, config)
        if problem is not None:
            return Verdict(path, False, iteration, fmt, has_tokenizer, problem)
        warnings = _warnings(path, entries, iteration, config, options)
    except OSError as error:
        reason = _scan_error(Path(error.filename or path), error)
        return Verdict(path, False, iteration, None, has_tokenizer, reason)
    return Verdict(path, True, iteration, "torch_dist", has_tokenizer, None, warnings)


def _completeness_problem(
    path: Path, entries: Entries, config: _RunConfig | None
) -> tuple[str | None, str | None]:
    """Return (reason, format) for the first missing or broken piece, in the save's write order."""
    names = entries.keys()
    shards = sorted(name for name in names if name.endswith(".distcp"))
    earlier = "wait for the save to finish or use an earlier iteration"
    tmp = sorted(name for name in names if name.endswith(".tmp"))
    if tmp:
        return f"{path} is being saved or the save crashed: {tmp[0]} is present; {earlier}", None
    if not shards and ".metadata" not in names:
        if names & {"metadata.json", "train_state.pt", "run_config.yaml"}:
            return f"{path} has no weights: no *.distcp shards and no .metadata; {earlier}", None
        return (
            f"{path} is not a checkpoint: no *.distcp shards, .metadata, metadata.json or "
            f"run_config.yaml; pass an iter_NNNNNNN directory written by Megatron Bridge"
        ), None
    if ".metadata" not in names:
        return (
            f"{path} is incomplete: *.distcp shards without .metadata (shards still being written, "
            f"or the job died during an async save); {earlier}"
        ), None
    if not shards:
        return f"{path} is incomplete: .metadata but no *.distcp shards; {earlier}", None
    if "metadata.json" not in names:
        if config is not None and config.ckpt_format == "fsdp_dtensor":
            return (
                f"{path} is an fsdp_dtensor checkpoint, which cannot be served without conversion; "
                f"convert it to torch_dist with Megatron Bridge's "
                f"examples/conversion/mfsdp/convert_checkpoints_fsdp.py"
            ), "fsdp_dtensor"
        return (
            f"{path} is incomplete: .metadata without metadata.json (the Megatron-Core finalize "
            f"did not run); {earlier}"
        ), None
    problem = _metadata_json_problem(entries["metadata.json"])
    if problem:
        return problem, None
    if "run_config.yaml" not in names:
        if "train_state.pt" in names:
            return (
                f"{path} is incomplete: train_state.pt without run_config.yaml (the Bridge "
                f"finalize was interrupted; the tracker may already point here); {earlier}"
            ), None
        return (
            f"{path} is a Megatron-LM checkpoint, not Megatron Bridge (no run_config.yaml or "
            f"train_state.pt); convert it as in Megatron Bridge's "
            f"docs/megatron-lm-to-megatron-bridge.md, or, for a Bridge run, {earlier}"
        ), "megatron_lm"
    return _content_problem(path, entries, shards, config), None


def _content_problem(
    path: Path, entries: Entries, shards: list[str], config: _RunConfig
) -> str | None:
    """Check sizes and cross-references of a checkpoint whose files are all present."""
    earlier = "use an earlier iteration"
    if "train_state.pt" not in entries:
        return f"{path} is damaged: run_config.yaml without train_state.pt; {earlier}"
    if not config.has_model:
        return f"{path}/run_config.yaml has no model section (truncated write?); {earlier}"
    empty = [name for name in shards + ["train_state.pt"] if entries[name].stat().st_size == 0]
    if empty:
        return f"{path} is truncated: zero-byte {', '.join(empty)}; {earlier}"
    metadata = _read(entries[".metadata"])
    if not metadata:
        return f"{path} is truncated: zero-byte .metadata; {earlier}"
    present = set(shards)
    # name[1:]: a pickle length byte before a long name can itself look like a word character.
    referenced = {match.decode() for match in SHARD_REFERENCE.findall(metadata)}
    missing = sorted(name for name in referenced if name not in present and name[1:] not in present)
    if missing:
        return f"{path} is missing shard files named in .metadata: {', '.join(missing)}; {earlier}"
    return None


def _metadata_json_problem(metadata_json: os.DirEntry) -> str | None:
    """Require metadata.json to be a JSON object with sharded_backend torch_dist."""
    try:
        backend = json.loads(_read(metadata_json)).get("sharded_backend")
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        return f"{metadata_json.path} is not a JSON object (damaged); use an earlier iteration"
    if backend != "torch_dist":
        return (
            f"{metadata_json.path} says sharded_backend {backend!r}, not 'torch_dist'; only "
            f"torch_dist checkpoints can be served: re-save it with a current Megatron Bridge"
        )
    return None


def _warnings(
    path: Path, entries: Entries, iteration: int | None, config: _RunConfig, options: _Options
) -> tuple[str, ...]:
    """Things that do not make the checkpoint unusable but that the user should know."""
    warnings = []
    if iteration is None:
        warnings.append(f"{path.name} is not named iter_NNNNNNN: the iteration is unknown")
    elif len(ITER_NAME.match(path.name).group(1)) < 7:
        warnings.append(
            f"{path.name} is not zero-padded; Megatron tools look for iter_{iteration:07d}"
        )
    if not _is_dir(entries, "tokenizer"):
        warnings.append(
            "no tokenizer/ directory: serving uses the tokenizer named in run_config.yaml, which "
            "must be reachable from the compute node (or the save is still finishing)"
        )
    if config.peft:
        warnings.append(
            "run_config.yaml sets peft: this is an adapter-only checkpoint; serving needs the "
            "base model from checkpoint.pretrained_checkpoint"
        )
    if "non_persistent" in path.parts:
        warnings.append("non-persistent checkpoint: training may delete it at any time")
    tracker = options.tracker
    if tracker is not None and iteration is not None and iteration > tracker:
        warnings.append(
            f"iteration {iteration} is newer than the run's tracker ({TRACKER_TXT} says "
            f"{tracker}): the save may not be finalized, or this is a stale directory"
        )
    if options.quiet_seconds > 0:  # stat every entry only when asked: that is the costly part
        newest = max(
            [os.stat(path).st_mtime] + [entry.stat().st_mtime for entry in entries.values()]
        )
        age = (time.time() if options.now is None else options.now) - newest
        if age < options.quiet_seconds:
            warnings.append(
                f"files were modified {age:.0f}s ago (quiet window {options.quiet_seconds:g}s): "
                f"a save may still be running; validate again later"
            )
    return tuple(warnings)


# ---- small readers ----


def _read_run_config(run_config: os.DirEntry) -> _RunConfig:
    """Read model/peft/checkpoint.ckpt_format from run_config.yaml without PyYAML (stdlib only)."""
    text = _read(run_config)
    ckpt_format = CKPT_FORMAT_KEY.search(text)
    peft = PEFT_KEY.search(text)
    # "peft: null" or "~" means none; any other inline value or an indented block is an adapter.
    peft_inline = peft is not None and peft.group(1).strip() not in (b"", b"null", b"~")
    peft_block = peft is not None and peft.group(2) is not None
    return _RunConfig(
        has_model=MODEL_KEY.search(text) is not None,
        ckpt_format=(
            ckpt_format.group(1).strip(b" '\"").decode(errors="replace") if ckpt_format else None
        ),
        peft=peft_inline or peft_block,
    )


def _read_tracker(run_dir: Path) -> int | None:
    """Return the step in latest_checkpointed_iteration.txt; None if absent, 'release' or bad."""
    try:
        with open(run_dir / TRACKER_TXT, "rb") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def _read(entry: os.DirEntry) -> bytes:
    """Read a whole (small) file; unbuffered, since we read it in one go."""
    with open(entry.path, "rb", buffering=0) as file:
        return file.read()


def _scan(path: Path) -> Entries:
    """List a directory once; DirEntry caches type and stat so later checks cost no extra calls."""
    with os.scandir(path) as iterator:
        return {entry.name: entry for entry in iterator}


def _scan_error(path: Path, error: OSError) -> str:
    """Turn an OSError met while reading `path` into a reason with the fix."""
    if isinstance(error, FileNotFoundError):
        return f"{path} does not exist (or vanished while being checked); check the path"
    if isinstance(error, NotADirectoryError):
        return f"{path} is a file, not a directory; pass the checkpoint's iter_NNNNNNN directory"
    if isinstance(error, PermissionError):
        return (
            f"cannot read {path}: permission denied; ask its owner for read access (chmod -R a+rX)"
        )
    return f"cannot read {path}: {error.strerror or error}"


def _iteration(path: Path) -> int | None:
    """The step in an iter_NNNNNNN name, or None."""
    match = ITER_NAME.match(path.name)
    return int(match.group(1)) if match else None


def _is_dir(entries: Entries, name: str) -> bool:
    """True when `name` is among the scanned entries and is a directory."""
    entry = entries.get(name)
    return entry is not None and entry.is_dir()
