"""Run real servers (gunicorn, uvicorn) on loopback for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_next_port = [0]


def free_port() -> int:
    """A loopback port no other test process will pick: CI runs test processes side by side,
    and a port the OS hands out for ``bind(0)`` can be handed to another process again
    between our releasing it and the server binding it (the server then answered for another
    test's, which went away). Each process draws from its own block below Linux's ephemeral
    range, which the OS never assigns by itself."""
    block = 10_000 + (os.getpid() % 900) * 24
    for _ in range(24):
        port = block + _next_port[0] % 24
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the whole block taken: fall back to the OS's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s:\n{log.read_text()}")


@contextlib.contextmanager
def serve(args: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[str]:
    """Start `python -m <args>` and yield its base URL; stop it (SIGTERM) afterwards."""
    full_env = {**os.environ, **env}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def read_timelines(path: Path, count: int, timeout: float = 15.0) -> list[dict]:
    """Wait until `path` holds at least `count` timelines (the sink writes in the background)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [x for x in path.read_text().splitlines() if x.strip()]
            if len(lines) >= count:
                break
        time.sleep(0.05)
    assert len(lines) >= count, f"expected {count} timelines in {path}, found {len(lines)}"
    return [json.loads(x) for x in lines]


@contextlib.contextmanager
def http_target(received: list[dict[str, str]] | None = None) -> Iterator[str]:
    """A plain HTTP server on loopback for outbound calls: GET answers 200 ``ok`` (404 under
    ``/missing``, a 302 to ``/landed`` under ``/redirect``); with `received`, the lower-cased
    headers of every request are appended to it. Yields its base URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if received is not None:
                received.append({k.lower(): v for k, v in self.headers.items()})
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "/landed")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(404 if self.path.startswith("/missing") else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
