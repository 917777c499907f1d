"""Real commands seen through a wrapper first on PATH: call counters and the docker stand-in.

Each wrapper runs the real program (a process-boundary counter, not a mock); Slurm jobs inherit
PATH, so calls from inside jobs count too.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CallCounter:
    """Counts the calls of one real command through a wrapper first on PATH."""

    command: str
    calls_file: Path
    env: dict[str, str]

    def calls(self) -> list[str]:
        """One line per call, oldest first: the shell-quoted arguments, or with `timed`
        `START_NS END_NS RC`."""
        if not self.calls_file.exists():
            return []
        return self.calls_file.read_text().splitlines()

    def count(self) -> int:
        return len(self.calls())

    def seconds(self) -> float:
        """Time spent inside the calls (a `timed` counter only)."""
        spans = [line.split()[:2] for line in self.calls()]
        return sum(int(end) - int(start) for start, end in spans) / 1e9

    def reset(self) -> None:
        self.calls_file.unlink(missing_ok=True)


def write_counter(command: str, bin_dir: Path, calls_file: Path, *, timed: bool = False) -> CallCounter:
    """Put a wrapper named `command` into bin_dir that appends one line per call to calls_file and
    runs the real command (the first one on PATH outside bin_dir). `.env` has PATH with bin_dir first."""
    path = os.environ.get("PATH", "").replace(f"{bin_dir}{os.pathsep}", "")
    real = shutil.which(command, path=path)
    if real is None:
        raise RuntimeError(f"cannot count `{command}`: not on PATH")
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / command
    if timed:
        body = (
            "start=$(date +%s%N)\n"
            f"'{real}' \"$@\"\n"
            "rc=$?\n"
            f"echo \"$start $(date +%s%N) $rc\" >> '{calls_file}'\n"
            "exit $rc\n"
        )
    else:
        body = (
            "line=$(printf '%q ' \"$@\")\n"
            f"printf '%s\\n' \"$line\" >> '{calls_file}'   # one write: safe for concurrent calls\n"
            f"exec '{real}' \"$@\"\n"
        )
    wrapper.write_text(f"#!/bin/bash\n# counts calls of {real}, then runs it\n" + body)
    wrapper.chmod(0o755)
    return CallCounter(command, calls_file, {"PATH": f"{bin_dir}{os.pathsep}{path}"})
