"""The one place that imports NeMo Evaluator Launcher, and what hpc-eval caches about it.

Importing the launcher has side effects: it writes `~/.nemo-evaluator/logs/` and reads
`NEMO_EVALUATOR_EXEC_DB_FILE` and the telemetry level once, at import time. `import_launcher`
turns telemetry off unless the user chose a level, and points `HOME` at a private directory for
the length of the import only, so the launcher's logs (and its exec DB, unless
`NEMO_EVALUATOR_EXEC_DB_FILE` is set) land there and nothing is written under the user's home.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def import_launcher(state_dir: Path | None = None) -> None:
    """Import the launcher once, its logs and exec DB under `state_dir` (a temp dir if None)."""
    if "nemo_evaluator_launcher" in sys.modules:
        return
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="hpc-eval-launcher-"))
        atexit.register(shutil.rmtree, state_dir, True)
    os.environ.setdefault("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")
    # Both settings are read at import time only; the job's own environment keeps the user's.
    import_time_env = {
        "HOME": str(state_dir),
        "NEMO_EVALUATOR_LOG_LEVEL": os.environ.get("NEMO_EVALUATOR_LOG_LEVEL", "WARNING"),
    }
    saved = {name: os.environ.get(name) for name in import_time_env}
    os.environ.update(import_time_env)
    try:
        import nemo_evaluator.logging  # noqa: F401  (configures its console level on import)
        import nemo_evaluator_launcher.api.functional  # noqa: F401
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def task_catalogue() -> list[tuple[str, str]]:
    """The launcher's (harness, task) names, cached per launcher version and catalogue file.

    The launcher parses a 23k-line YAML catalogue (about a second) on every load_tasks_mapping();
    preflight needs only the names.
    """
    from nemo_evaluator_launcher.common.mapping import load_tasks_mapping

    key = launcher_key()
    path = cache_file("tasks", key)
    try:
        cached = json.loads(path.read_text())
        if cached["key"] == key:
            return [(harness, task) for harness, task in cached["tasks"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, unreadable or stale: parse the catalogue again
    tasks = list(load_tasks_mapping())  # in the launcher's order: its error messages list choices in it
    write_cache(path, {"key": key, "tasks": tasks})
    return tasks


def launcher_key() -> str:
    """The installed launcher's version and task catalogue files (mtime, size), found without
    importing the launcher (that takes 0.4 s): what the caches are keyed by."""
    import importlib.util

    spec = importlib.util.find_spec("nemo_evaluator_launcher")
    if spec is None or not spec.origin:
        return ""
    root = Path(spec.origin).parent
    versions = sorted(p.name for p in root.parent.glob("nemo_evaluator_launcher-*.dist-info"))  # name-version.dist-info
    files = [root / "package_info.py", root / "resources" / "all_tasks_irs.yaml"]
    internal = importlib.util.find_spec("nemo_evaluator_launcher_internal")  # its catalogue overrides
    if internal and internal.origin:
        files.append(Path(internal.origin).parent / "resources" / "all_tasks_irs.yaml")
    return json.dumps([versions, [(str(f), s.st_mtime_ns, s.st_size) for f in files if f.exists() for s in [f.stat()]]])


def cache_file(kind: str, key: str) -> Path:
    """A cache entry for `key` under $XDG_CACHE_HOME/hpc-eval/ (default ~/.cache/hpc-eval/)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "hpc-eval" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def write_cache(path: Path, data: Any) -> None:
    """Write atomically (temp file + os.replace); a cache that cannot be written is skipped."""
    from hpc_eval.store import write_json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except OSError:
        pass
