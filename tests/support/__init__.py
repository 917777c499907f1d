"""What the tests and the benchmarks share: fake checkpoints, the stub model server, command counters.

Plain functions and classes (no pytest): tests/conftest.py wraps them in fixtures, and
benchmarks/bench.py calls them directly.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
