"""What makes one Megatron Bridge iter_* directory a complete, servable checkpoint.

Standard library only. Each check works on one os.scandir listing of the directory and reads
only small files, plus .metadata (to learn every shard's expected size) once the cheaper checks
pass. The facts behind every rule (save order, file contents) are in the shared research note
megatron-bridge-checkpoints.md; the layouts were confirmed on checkpoints written by Megatron
Bridge 0.3.1 / Megatron-Core 0.16.1 (tests/data/real-mbridge).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

ITER_NAME = re.compile(r"^iter_(\d+)$")
TRACKER_TXT = "latest_checkpointed_iteration.txt"  # Megatron-LM text tracker: the step, no newline
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
class Options:
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


# ---- one iter_* directory ----


def check_iter_dir(path: Path, entries: Entries, options: Options) -> Verdict:
    """Validate the files of one iteration directory; an unreadable file is a rejection too."""
    iteration = iteration_of(path)
    has_tokenizer = is_dir(entries, "tokenizer")
    try:
        run_config = entries.get("run_config.yaml")
        config = _read_run_config(run_config) if run_config else None
        problem, fmt = _completeness_problem(path, entries, config)
        if problem is not None:
            return Verdict(path, False, iteration, fmt, has_tokenizer, problem)
        warnings = _warnings(path, entries, iteration, config, options)
    except OSError as error:
        reason = scan_error(Path(error.filename or path), error)
        return Verdict(path, False, iteration, None, has_tokenizer, reason)
    return Verdict(path, True, iteration, "torch_dist", has_tokenizer, None, warnings)


def _completeness_problem(path: Path, entries: Entries, config: _RunConfig | None) -> tuple[str | None, str | None]:
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
            f"{path} is incomplete: .metadata without metadata.json (the Megatron-Core finalize did not run); {earlier}"
        ), None
    problem, common_backend = _read_metadata_json(entries["metadata.json"])
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
    return _content_problem(path, entries, shards, config, common_backend), None


def _content_problem(
    path: Path, entries: Entries, shards: list[str], config: _RunConfig, common_backend: str | None
) -> str | None:
    """Check sizes and cross-references of a checkpoint whose files are all present."""
    earlier = "use an earlier iteration"
    if "train_state.pt" not in entries:
        return f"{path} is damaged: run_config.yaml without train_state.pt; {earlier}"
    if not config.has_model:
        return f"{path}/run_config.yaml has no model section (truncated write?); {earlier}"
    sized = shards + ["train_state.pt"]
    if common_backend is not None:  # Megatron-Core <= 0.18 wrote the common state to common.pt
        if "common.pt" not in entries:
            return (
                f"{path} is missing common.pt, which its metadata.json requires (common_backend "
                f"{common_backend!r}); loading it would fail: {earlier}"
            )
        sized.append("common.pt")
    empty = [name for name in sized if entries[name].stat().st_size == 0]
    if empty:
        return f"{path} is truncated: zero-byte {', '.join(empty)}; {earlier}"
    metadata = _read(entries[".metadata"])
    if not metadata:
        return f"{path} is truncated: zero-byte .metadata; {earlier}"
    try:
        ends = shard_ends(metadata)
    except _UNREADABLE as error:
        return (
            f"{path}/.metadata cannot be read ({type(error).__name__}: {error}): damaged, or not "
            f"written by torch.distributed.checkpoint; {earlier}"
        )
    missing = sorted(name for name in ends if name not in entries)
    if missing:
        return f"{path} is missing shard files named in .metadata: {', '.join(missing)}; {earlier}"
    short = [
        f"{name} has {entries[name].stat().st_size} bytes, .metadata records {end}"
        for name, end in sorted(ends.items())
        if entries[name].stat().st_size < end
    ]
    if short:
        return f"{path} is truncated: {'; '.join(short)}; {earlier}"
    return None


def _read_metadata_json(metadata_json: os.DirEntry) -> tuple[str | None, str | None]:
    """Return (problem, common_backend): a JSON object with sharded_backend torch_dist is needed."""
    try:
        config = json.loads(_read(metadata_json))
        backend = config.get("sharded_backend")
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        problem = f"{metadata_json.path} is not a JSON object (damaged); use an earlier iteration"
        return problem, None
    if backend != "torch_dist":
        return (
            f"{metadata_json.path} says sharded_backend {backend!r}, not 'torch_dist'; only "
            f"torch_dist checkpoints can be served: re-save it with a current Megatron Bridge"
        ), None
    common_backend = config.get("common_backend")
    return None, None if common_backend is None else str(common_backend)


# ---- .metadata: the torch.distributed.checkpoint Metadata pickle, read without torch ----


class _Holder:
    """Stands for every class .metadata names: keeps what the pickle gives it, runs nothing.

    Identity hash, so storage_data's keys (MetadataIndex) stay apart.
    """

    state = None

    def __init__(self, *args):  # called for REDUCE: keep the args as data, call nothing
        self.args = args

    def __setstate__(self, state):  # BUILD: a dataclass's __dict__, or what __getstate__ gave
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    """Gives _Holder for every class or callable a pickle names: no import, no call of its code.

    Plain pickle.load would run whatever callable the file names (os.system, say). OrderedDict
    alone stays real, since it holds data and runs nothing.
    """

    def find_class(self, module: str, name: str):
        return OrderedDict if (module, name) == ("collections", "OrderedDict") else _Holder

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not part of a .metadata file")


# What a damaged or foreign pickle can raise while being read by the restricted unpickler.
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    RecursionError,
    OverflowError,
    MemoryError,
)


def shard_ends(metadata: bytes) -> dict[str, int]:
    """Each shard file's minimum size: the end (offset + length) of the last item stored in it.

    `metadata` is a .metadata file: a pickled Metadata whose storage_data maps each stored item
    (MetadataIndex) to _StorageInfo(relative_path, offset, length). Raises one of _UNREADABLE
    (ValueError when the pickle is readable but not in that shape).
    """
    root = _RestrictedUnpickler(io.BytesIO(metadata)).load()
    state = root.state if isinstance(root, _Holder) else None
    storage = state.get("storage_data") if isinstance(state, dict) else None
    if not isinstance(storage, dict):
        raise ValueError("no storage_data")
    ends: dict[str, int] = {}
    for info in storage.values():
        fields = info.state if isinstance(info, _Holder) and isinstance(info.state, dict) else {}
        name, offset, length = (fields.get(key) for key in ("relative_path", "offset", "length"))
        if not (isinstance(name, str) and isinstance(offset, int) and isinstance(length, int)):
            raise ValueError("a storage_data entry without relative_path, offset and length")
        ends[name] = max(ends.get(name, 0), offset + length)
    return ends


def _warnings(
    path: Path, entries: Entries, iteration: int | None, config: _RunConfig, options: Options
) -> tuple[str, ...]:
    """Things that do not make the checkpoint unusable but that the user should know."""
    warnings = []
    if iteration is None:
        warnings.append(f"{path.name} is not named iter_NNNNNNN: the iteration is unknown")
    elif len(ITER_NAME.match(path.name).group(1)) < 7:
        warnings.append(f"{path.name} is not zero-padded; Megatron tools look for iter_{iteration:07d}")
    if not is_dir(entries, "tokenizer"):
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
        newest = max([os.stat(path).st_mtime] + [entry.stat().st_mtime for entry in entries.values()])
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
        ckpt_format=(ckpt_format.group(1).strip(b" '\"").decode(errors="replace") if ckpt_format else None),
        peft=peft_inline or peft_block,
    )


def _read(entry: os.DirEntry) -> bytes:
    """Read a whole (small) file; unbuffered, since we read it in one go."""
    with open(entry.path, "rb", buffering=0) as file:
        return file.read()


def scan_error(path: Path, error: OSError) -> str:
    """Turn an OSError met while reading `path` into a reason with the fix."""
    if isinstance(error, FileNotFoundError):
        return f"{path} does not exist (or vanished while being checked); check the path"
    if isinstance(error, NotADirectoryError):
        return f"{path} is a file, not a directory; pass the checkpoint's iter_NNNNNNN directory"
    if isinstance(error, PermissionError):
        return f"cannot read {path}: permission denied; ask its owner for read access (chmod -R a+rX)"
    return f"cannot read {path}: {error.strerror or error}"


def iteration_of(path: Path) -> int | None:
    """The step in an iter_NNNNNNN name, or None."""
    match = ITER_NAME.match(path.name)
    return int(match.group(1)) if match else None


def is_dir(entries: Entries, name: str) -> bool:
    """True when `name` is among the scanned entries and is a directory."""
    entry = entries.get(name)
    return entry is not None and entry.is_dir()
