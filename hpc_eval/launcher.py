"""The one place that imports NeMo Evaluator Launcher.

Importing the launcher has side effects: it writes `~/.nemo-evaluator/logs/` and reads
`NEMO_EVALUATOR_EXEC_DB_FILE` and the telemetry level once, at import time. `import_launcher`
turns telemetry off unless the user chose a level, and points `HOME` at a private directory for
the length of the import only, so the launcher's logs (and its exec DB, unless
`NEMO_EVALUATOR_EXEC_DB_FILE` is set) land there and nothing is written under the user's home.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def import_launcher(state_dir: Path | None = None) -> None:
    """Import the launcher once, its logs and exec DB under `state_dir` (a temp dir if None)."""
    if "nemo_evaluator_launcher" in sys.modules:
        return
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="hpc-eval-launcher-"))
        atexit.register(shutil.rmtree, state_dir, True)
    os.environ.setdefault("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")
    # Both settings are read at import time only; the job's own environment keeps the user's.
    import_time_env = {"HOME": str(state_dir), "NEMO_EVALUATOR_LOG_LEVEL": os.environ.get("NEMO_EVALUATOR_LOG_LEVEL", "WARNING")}
    saved = {name: os.environ.get(name) for name in import_time_env}
    os.environ.update(import_time_env)
    try:
        import nemo_evaluator_launcher.api.functional  # noqa: F401
        import nemo_evaluator.logging  # noqa: F401  (configures its console level on import)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
