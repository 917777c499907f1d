"""The on-disk record of evaluations: one directory per (training run, checkpoint, config hash).

    <output_dir>/<run>-<run hash>/<iter_0001000>/<config-hash>-<fingerprint id>/
      request.json  launcher_config.yaml  slurm.json  summary.json  submitit/  <launcher's tree>
    <output_dir>/<run>-<run hash>/.completed-<config-hash>/<iter_0001000>@<.metadata size>-<mtime_ns>
    <output_dir>/<run>/endpoint/<config-hash>/   (a hosted endpoint: no checkpoint)

`<run>` is a label for people (`--run`, else the run's folder name); `<run hash>` is
`identity.run_hash` of the run's real directory, so runs that share a name never share a record;
`<fingerprint id>` changes when the checkpoint is rewritten in place. Output dirs written before
(`<output_dir>/<run>/<iter>/<config-hash>/`) are still read, and `find_existing` counts them as
evaluated when their request.json names the same checkpoint.

Creating the directory with `mkdir` claims the evaluation (atomic on POSIX and network file
systems), so two passes cannot submit the same checkpoint twice and no database is needed.
Every write goes through a temp file, fsync and `os.replace`, because other passes read while we
write and a crash (or a full disk) must leave the old file or the new one, never half of one.
Readers warn about a file they cannot parse (one line on stderr) and go on without it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_eval import identity
from hpc_eval.errors import ConfigError

# Parent directories that name the checkpoint folder of a run rather than the run itself.
CHECKPOINT_FOLDER_NAMES = {"checkpoints", "checkpoint", "ckpt", "ckpts"}
NO_CHECKPOINT = "endpoint"  # the iteration folder of an evaluation of a hosted endpoint


@dataclass(frozen=True)
class EvalPaths:
    """Every file name under one evaluation directory."""

    root: Path

    @property
    def request(self) -> Path:
        return self.root / "request.json"

    @property
    def launcher_config(self) -> Path:
        return self.root / "launcher_config.yaml"

    @property
    def slurm_record(self) -> Path:
        return self.root / "slurm.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def submitit(self) -> Path:
        return self.root / "submitit"

    @property
    def launcher_state(self) -> Path:
        """The launcher's exec DB and logs for this evaluation (it writes them under $HOME otherwise)."""
        return self.root / "launcher-state"

    @property
    def payload_state(self) -> Path:
        return self.root / "payload_state.json"

    def read_request(self) -> dict[str, Any]:
        return read_record(self.request) or {}

    def read_summary(self) -> dict[str, Any] | None:
        return read_record(self.summary)

    def read_attempts(self) -> list[dict[str, Any]]:
        """One record per submission of this evaluation, oldest first; a torn or garbled line is skipped."""
        try:
            lines = self.slurm_record.read_bytes().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        except OSError as error:
            warn_bad_file(self.slurm_record, error.strerror or str(error))
            return []
        attempts = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = "bad"
            if record is None:
                continue
            if not isinstance(record, dict) or "slurm_job_id" not in record:
                warn_bad_file(self.slurm_record, f"line {number} is not a submission record")
                continue
            attempts.append(record)
        return attempts

    def record_attempt(self, record: dict[str, Any]) -> None:
        """Add a submission to slurm.json: the whole file written again (temp + fsync + rename)."""
        try:
            old = self.slurm_record.read_bytes()
        except FileNotFoundError:
            old = b""
        if old and not old.endswith(b"\n"):
            old = old[: old.rfind(b"\n") + 1]  # drop a torn last line rather than glue a record to it
        write_bytes(self.slurm_record, old + (json.dumps(record, sort_keys=True) + "\n").encode())


def run_name(checkpoint: Path | None, fallback: str) -> str:
    """The training run a checkpoint belongs to (see `run_of`); `fallback` without a checkpoint."""
    return fallback if checkpoint is None else run_of(checkpoint.absolute().parent, fallback)


def run_of(run_dir: Path, fallback: str) -> str:
    """A run's name: its checkpoint folder's name, or the folder above when that is `checkpoints/`."""
    run_dir = run_dir.absolute()
    if run_dir.name in CHECKPOINT_FOLDER_NAMES and run_dir.parent.name:
        return run_dir.parent.name
    return run_dir.name or fallback


def run_folder(run: str, run_dir: Path) -> str:
    """A training run's folder in the output dir: its label beside the hash of its real directory."""
    return f"{safe_name(run)}-{identity.run_hash(run_dir)}"


def eval_dir(
    output_dir: Path, run: str, checkpoint: Path | None, config_hash: str, fingerprint: dict[str, Any] | None = None
) -> Path:
    """Where an evaluation lives; a checkpoint's is named by its real path and its fingerprint."""
    if checkpoint is None:
        return output_dir / safe_name(run) / NO_CHECKPOINT / config_hash
    real = identity.real_path(checkpoint)
    leaf = f"{config_hash}-{identity.fingerprint_id(fingerprint or identity.fingerprint(real))}"
    return output_dir / run_folder(run, real.parent) / safe_name(real.name) / leaf


def completed_index(output_dir: Path, folder: str, config_hash: str) -> Path:
    """One empty file per checkpoint of the run in `folder` evaluated to completion with `config_hash`."""
    return output_dir / folder / f".completed-{config_hash}"


def index_entry(iteration_folder: str, stat_key: str | None) -> str:
    """A completed-index entry: the checkpoint and its `.metadata` stat, so a rewrite misses the index."""
    return f"{iteration_folder}@{stat_key}"


def find_existing(
    output_dir: Path,
    run: str,
    checkpoint: Path,
    config_hash: str,
    fingerprint: dict[str, Any],
    legacy_runs: tuple[str, ...] = (),
) -> EvalPaths | None:
    """An evaluation of this checkpoint, as it is now, with this config: under any label, or in the old layout.

    The new layout's name settles it (same real run dir, iteration and fingerprint); another
    label's folder and an old-layout folder count only when their request names the same checkpoint.
    """
    new = EvalPaths(eval_dir(output_dir, run, checkpoint, config_hash, fingerprint))
    if new.root.is_dir():
        return new
    real = identity.real_path(checkpoint)
    others = sorted(output_dir.glob(f"*-{identity.run_hash(real.parent)}/{new.root.parent.name}/{new.root.name}"))
    legacy = [
        output_dir / safe_name(label) / safe_name(name) / config_hash
        for label in dict.fromkeys((run, *legacy_runs))
        for name in dict.fromkeys((real.name, Path(checkpoint).name))
    ]
    for root in others + legacy:
        request = read_json(root / "request.json") if root.is_dir() else None
        if (
            request
            and identity.same_checkpoint(request.get("checkpoint"), checkpoint)
            and not identity.fingerprint_change(request.get("fingerprint"), fingerprint)
        ):
            return EvalPaths(root)
    return None


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name) or "_"


def check_output_dir(output_dir: Path) -> None:
    """Refuse an output dir that exists as a file (or under a file) before anything is claimed."""
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(
                    f"output_dir {output_dir}: {folder} is a file, not a directory; set output_dir "
                    "(config key, override or --output-dir) to a directory"
                )
            return


def claim(directory: Path) -> bool:
    """Create the evaluation directory; False when it already exists (someone claimed it)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir()
    except FileExistsError:
        return False
    return True


STALE_CLAIM_S = 300  # a submission takes seconds between its claim and sbatch; five minutes means it died


def claim_attempt(paths: EvalPaths) -> Path | None:
    """Claim the next submission of an existing evaluation (`.attempt-<k>`, made with mkdir).

    Two passes retrying the same evaluation: one wins. A marker left by a pass that died before
    it recorded its attempt is taken over once it is older than STALE_CLAIM_S. Returns the marker
    (for `release`), or None when another pass holds the claim.
    """
    attempt = len(paths.read_attempts()) + 1
    for takeover in range(1000):
        marker = paths.root / (f".attempt-{attempt}" + (f".{takeover}" if takeover else ""))
        try:
            marker.mkdir()
            return marker
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime < STALE_CLAIM_S:
                    return None  # another pass is submitting it now
            except FileNotFoundError:
                pass
    return None


def release(claimed: Path) -> None:
    """Give back a claim whose sbatch never happened (an evaluation dir we made, or an .attempt marker),
    so that the next submit or watch submits it at once instead of skipping it."""
    shutil.rmtree(claimed, ignore_errors=True)


def write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode(), durable=durable)


def write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temp file, fsync (unless a throwaway preview), rename; on any error no temp file is left."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """The parsed file; None when it is missing, or unreadable or not JSON (with a one-line warning)."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        warn_bad_file(path, getattr(error, "strerror", None) or f"not valid JSON ({error})")
        return None


def read_record(path: Path) -> dict[str, Any] | None:
    """A record file's JSON object; None (with a warning) when it holds anything else."""
    data = read_json(path)
    if data is not None and not isinstance(data, dict):
        warn_bad_file(path, "not a JSON object")
        return None
    return data


_warned: set[str] = set()  # per command: status and watch clear it (forget_warnings) when they start


def forget_warnings() -> None:
    _warned.clear()


def warn_bad_file(path: Path, why: str) -> None:
    """One line on stderr per bad record file per command; the reader goes on with the rest."""
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"warning: {path}: {why}; skipped", file=sys.stderr)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def iter_evaluations(root: Path) -> Iterator[EvalPaths]:
    """Every evaluation under an output dir (three levels down) or under one run's folder (two)."""
    root = Path(root)
    for pattern in ("*/*/*/request.json", "*/*/request.json", "*/request.json", "request.json"):
        found = sorted(root.glob(pattern))
        if found:
            yield from (EvalPaths(request.parent) for request in found)
            return


class RequestTemplate:
    """request.json for many checkpoints of one config, the shared fields encoded once.

    A JSON scalar is written the same inside an indented document as alone, so marks put where
    a checkpoint's values go (its fingerprint's values, one level down) are replaced, in one
    pass, by each value's JSON: the text equals `json.dumps` of the whole record (tests/test_scale.py).
    Records with any other shape are encoded in full.
    """

    def __init__(self, constants: dict[str, Any]):
        self.constants = constants
        self.token = secrets.token_hex(8)
        self.mark = f"\x00{self.token}:"  # JSON writes it as \u0000<token>:, which no path or label holds
        self.marks = re.compile('"' + re.escape(json.dumps(self.mark)[1:-1]) + '([^"]*)"')
        self.texts: dict[tuple, str] = {}

    def text(self, varying: dict[str, Any]) -> str:
        values = {key: value for key, value in varying.items() if not isinstance(value, dict)}
        nested = {key: value for key, value in varying.items() if isinstance(value, dict)}
        values.update((f"{key}.{inner}", value) for key, body in nested.items() for inner, value in body.items())
        if not all(value is None or isinstance(value, (str, int, float)) for value in values.values()) or not all(
            isinstance(inner, str) for body in nested.values() for inner in body
        ):
            return dumps({**varying, **self.constants})
        shape = tuple((key, tuple(value) if isinstance(value, dict) else None) for key, value in varying.items())
        if shape not in self.texts:
            marked = {
                key: {inner: f"{self.mark}{key}.{inner}" for inner in value}
                if isinstance(value, dict)
                else f"{self.mark}{key}"
                for key, value in varying.items()
            }
            self.texts[shape] = dumps({**marked, **self.constants})
        encoded = {key: json.dumps(value) for key, value in values.items()}
        return self.marks.sub(lambda match: encoded[match.group(1)], self.texts[shape])


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"  # as store.write_json writes it
