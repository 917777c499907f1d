"""Time checkpoint discovery and `hpc-eval validate` over a run directory of 10,000 fake iter dirs.

Usage: python scripts/bench_validate.py [COUNT]   (needs hpc-eval installed or on PYTHONPATH)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # for fakeckpt

from fakeckpt import make_run  # noqa: E402
from hpc_eval.checkpoint import discover  # noqa: E402


def timed(label: str, action) -> None:
    """Run `action` once and print how long it took."""
    start = time.perf_counter()
    detail = action()
    print(f"{label}: {time.perf_counter() - start:.3f} s  {detail}")


def main() -> None:
    """Build the fake run, then time discovery and the CLI over it."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = make_run(Path(tmp) / "checkpoints", range(0, count * 100, 100))
        print(f"built {count} iter dirs in {time.perf_counter() - start:.1f} s under {run}")

        timed("discover(select='all')", lambda: f"{len(discover(run).valid)} valid")
        timed(
            "discover(select='latest')",
            lambda: f"iter {discover(run, select='latest').valid[0].iteration}",
        )
        children = sorted(str(path) for path in run.glob("iter_*"))
        cli = [sys.executable, "-c", "from hpc_eval.cli import main; main()", "validate"]
        timed(
            "hpc-eval validate <run>/iter_* (process incl. startup)",
            lambda: f"exit {subprocess.run(cli + children, stdout=subprocess.DEVNULL).returncode}",
        )
        timed(
            "hpc-eval validate <run> (parent: latest suggestion)",
            lambda: f"exit {subprocess.run(cli + [str(run)], stdout=subprocess.DEVNULL).returncode}",
        )
        timed(
            "python startup + import hpc_eval.cli (baseline)",
            lambda: subprocess.run([sys.executable, "-c", "import hpc_eval.cli"]).returncode,
        )


if __name__ == "__main__":
    main()
