"""Start the stub model server (scripts/fake_openai.py) on a free port and read its request log."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from support import SCRIPTS


@dataclass
class StubServer:
    """A running scripts/fake_openai.py. url is the base URL (no /v1)."""

    url: str
    port: int
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request_log(self) -> list[dict]:
        """Every request received so far, oldest first: {"t", "method", "path", "body"}
        (the stub's LOG file; a POST is logged when it arrives, before any DELAY_S)."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def requests(self) -> int:
        """How many requests (any method, any path) the stub has received so far."""
        return len(self.request_log())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()


def start_stub(
    folder: Path,
    name: str = "stub",
    reply: str | None = None,
    delay_s: float | None = None,
    model_id: str | None = None,
) -> StubServer:
    """Start scripts/fake_openai.py on a free port of 127.0.0.1 (port 0), with the interpreter running
    this code; its request log and stderr go to folder/NAME.requests.jsonl and folder/NAME.stderr."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{name}.requests.jsonl"
    env = dict(os.environ, LOG=str(log_path))
    for variable, value in (("REPLY", reply), ("DELAY_S", delay_s), ("MODEL_ID", model_id)):
        if value is not None:
            env[variable] = str(value)
    stderr = open(folder / f"{name}.stderr", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "fake_openai.py"), "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    stderr.close()
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        proc.wait()
        err = (folder / f"{name}.stderr").read_text(errors="replace")
        raise RuntimeError(f"fake_openai.py did not start: {line!r} {err[-2000:]}")
    port = int(match.group(1))
    return StubServer(url=f"http://127.0.0.1:{port}", port=port, log_path=log_path, proc=proc)
