#!/usr/bin/env python3
"""Stub OpenAI-compatible model server for tests and local runs (stdlib only).

It stands in for a real model endpoint (vLLM, NIM, ...) at the process boundary: an
evaluation harness talks HTTP to it exactly as it would to a real server, and always gets
the same deterministic answer.

Usage:  python3 scripts/fake_openai.py PORT        (PORT 0 = pick a free port)
        python3 scripts/fake_openai.py [--port] PORT [--metrics-port PORT2]
          --metrics-port also binds PORT2 (as a real server's metrics or dashboard port does): when
          it is taken, the server dies at start with "OSError: [Errno 98] Address already in use"
Prints one line when it is ready to serve:
    fake_openai listening on http://127.0.0.1:PORT pid=PID
and exits 0 on SIGTERM or SIGINT.

Endpoints:
  GET  /health, /v1/health, /health/ready, /v1/health/ready  -> 200 {"status": "ok"}
  GET  /v1/models               -> one model (MODEL_ID)
  POST /v1/chat/completions     -> the assistant message REPLY (honours "n"), with usage
  POST /v1/completions          -> the text REPLY; "echo" and "logprobs" are supported with one
                                   pseudo-token per space-separated word (logprob -1.0, the first
                                   echoed token None): enough for loglikelihood tasks

Environment:
  REPLY      the reply text                       [Let me think. 1 + 1 = 2.\\nAnswer: 2]
  DELAY_S    seconds to sleep before answering each POST, so that an evaluation stays in its
             request phase long enough to be cancelled                               [0]
  MODEL_ID   the model id listed by /v1/models                                [fake-model]
  LOG        file to append every request to, one JSON object per line          [unset]
  DELAY_FILE file whose number, while it exists, replaces DELAY_S per request    [unset]
  PORT_FILE  file to write the bound port to, once listening                    [unset]
  BIND       the address to listen on (0.0.0.0 in a container on docker's bridge, or to be reached
             from other nodes)                                                        [127.0.0.1]
"""

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_ID = os.environ.get("MODEL_ID", "fake-model")
REPLY = os.environ.get("REPLY", "Let me think. 1 + 1 = 2.\nAnswer: 2")
DELAY_S = float(os.environ.get("DELAY_S") or 0)
DELAY_FILE = os.environ.get("DELAY_FILE")


def current_delay() -> float:
    """DELAY_S, or the number in DELAY_FILE while that file exists (a test can change it mid-run)."""
    try:
        with open(DELAY_FILE) as handle:
            return float(handle.read().strip() or 0)
    except (TypeError, OSError, ValueError):
        return DELAY_S


LOG = os.environ.get("LOG")
HEALTH_PATHS = ("/health", "/v1/health", "/health/ready", "/v1/health/ready", "")

_lock = threading.Lock()
_counter = [0]


def _usage(prompt_text, completion_text):
    p, c = len(prompt_text.split()), len(completion_text.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _logprobs_for(text):
    """One pseudo-token per space-separated word, each with logprob -1.0."""
    tokens, offsets, pos = [], [], 0
    for word in text.split(" "):
        tokens.append(word if not tokens else " " + word)
        offsets.append(pos)
        pos += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [-1.0 for _ in tokens],
        "top_logprobs": [{t: -1.0} for t in tokens],
        "text_offset": offsets,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep stderr quiet; use LOG instead
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _log(self, payload):
        if LOG:
            line = json.dumps({"t": time.time(), "method": self.command, "path": self.path, "body": payload})
            with _lock, open(LOG, "a") as f:
                f.write(line + "\n")

    def _route(self):
        return self.path.split("?")[0].rstrip("/")

    def do_GET(self):
        self._log(None)
        path = self._route()
        if path in HEALTH_PATHS:
            return self._send(200, {"status": "ok"})
        if path == "/v1/models":
            return self._send(
                200,
                {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local"}]},
            )
        return self._send(404, {"error": {"message": f"no route {path}"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        try:
            req = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._send(400, {"error": {"message": "bad json"}})
        self._log(req)
        delay = current_delay()
        if delay:
            time.sleep(delay)
        with _lock:
            _counter[0] += 1
            num = _counter[0]
        path = self._route()
        now = int(time.time())
        model = req.get("model", MODEL_ID)
        if path.endswith("/chat/completions"):
            prompt = " ".join(str(m.get("content", "")) for m in req.get("messages", []))
            return self._send(
                200,
                {
                    "id": f"chatcmpl-{num}",
                    "object": "chat.completion",
                    "created": now,
                    "model": model,
                    "choices": [
                        {"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": REPLY}}
                        for i in range(int(req.get("n") or 1))
                    ],
                    "usage": _usage(prompt, REPLY),
                },
            )
        if path.endswith("/completions"):
            prompts = req.get("prompt", "")
            if isinstance(prompts, str):
                prompts = [prompts]
            echo = bool(req.get("echo"))
            choices = []
            for i, prompt in enumerate(prompts):
                prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
                generated = "" if (echo and req.get("max_tokens", 16) == 0) else REPLY
                text = prompt + generated if echo else generated
                choice = {"index": i, "text": text, "finish_reason": "stop", "logprobs": None}
                if req.get("logprobs") is not None:
                    choice["logprobs"] = _logprobs_for(text)
                    if echo:
                        choice["logprobs"]["token_logprobs"][0] = None
                choices.append(choice)
            return self._send(
                200,
                {
                    "id": f"cmpl-{num}",
                    "object": "text_completion",
                    "created": now,
                    "model": model,
                    "choices": choices,
                    "usage": _usage(" ".join(map(str, prompts)), REPLY),
                },
            )
        return self._send(404, {"error": {"message": f"no route {path}"}})


def _stop(signum, _frame):
    raise SystemExit(0)


def main(argv):
    args = argv[1:]
    if args and not args[0].startswith("--"):
        args = ["--port", *args]
    options = dict(zip(args[::2], args[1::2]))
    port = int(options.get("--port", 8000))
    if "--metrics-port" in options:
        metrics_socket = socket.socket()
        metrics_socket.bind(("127.0.0.1", int(options["--metrics-port"])))
    server = ThreadingHTTPServer((os.environ.get("BIND") or "127.0.0.1", port), Handler)
    server.daemon_threads = True  # a request sleeping in DELAY_S does not delay exit
    port = server.server_address[1]
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if os.environ.get("PORT_FILE"):
        with open(os.environ["PORT_FILE"], "w") as f:
            f.write(f"{port}\n")
    print(f"fake_openai listening on http://127.0.0.1:{port} pid={os.getpid()}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
