"""A stand-in for a model server that spans nodes (the `generic` deployment of the multi-node tests).

Run once per node by the executor's `srun --nodes=N` with the launcher's PROC_ID and MASTER_IP:
  PROC_ID 0  (the head, on the first node) listens on PORT on every address and waits until a
             worker says "JOIN <host>" over the network; only then does it become the stub model
             server (scripts/fake_openai.py) on PORT. A head without its worker never gets ready.
  PROC_ID >0 (a worker) connects to MASTER_IP:PORT until the head answers, then stays up as a
             worker does, until its step is stopped.

Usage: multinode_server.py PORT
"""

import os
import signal
import socket
import sys
import time
from pathlib import Path

FAKE_OPENAI = Path(__file__).resolve().parents[2] / "scripts" / "fake_openai.py"


def head(port: int) -> None:
    with socket.create_server(("", port)) as server:
        while True:
            conn, (address, _) = server.accept()
            with conn:
                message = conn.recv(100).decode(errors="replace").strip()
                if message.startswith("JOIN "):  # anything else is an early readiness check
                    conn.sendall(b"OK\n")
                    print(f"head on {socket.gethostname()}: worker {message[5:]} joined from {address}", flush=True)
                    break
    os.execv(sys.executable, [sys.executable, str(FAKE_OPENAI), str(port)])


def worker(port: int) -> None:
    master = os.environ["MASTER_IP"]
    while True:
        try:
            with socket.create_connection((master, port), timeout=2) as conn:
                conn.sendall(f"JOIN {socket.gethostname()}\n".encode())
                if conn.recv(10).startswith(b"OK"):
                    break
        except OSError:
            pass
        time.sleep(0.3)
    print(f"worker on {socket.gethostname()}: joined the head at {master}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    (head if os.environ.get("PROC_ID", "0") == "0" else worker)(int(sys.argv[1]))
