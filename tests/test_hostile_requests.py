"""Malformed and hostile requests through real servers (gunicorn serving the Django example,
uvicorn serving the FastAPI example), each server run with and without stagetrace: every
request is answered exactly as without it, and every one that reached the application is
recorded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from .servers import ROOT, free_port, read_timelines, serve

SITE = ROOT / "examples" / "django_site"
FASTAPI = ROOT / "examples" / "fastapi_app"

HOSTILE_HEADERS = [
    "X-Request-Start: t=1e400",
    "X-Request-Start: inf",
    "X-Queue-Start: " + "9" * 400,
    "traceparent: 00-zzzz-0000-01",
    "traceparent: 00-00000000000000000000000000000000-0000000000000000-01",
    "traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate: ,,,=,=x,@@@",
    "baggage: %%%,,;;=,k=%ff%fe",
    "X-Request-ID: <script>alert(1)</script>",
    "X-Request-ID: " + "a" * 5000,
    "Host: [::1:bad",
    "User-Agent: " + "A" * 6000,
    "Content-Length: 00000000000000000000000000000",
]
HOSTILE_TARGETS = [
    "/books/%ff%fe/",
    "/books/?q=%ff&q=%00&%3D=%3D&" + "x=1&" * 300,
    "/%2e%2e/%2e%2e/etc/passwd",
    "/books/?" + "a" * 4000,
]


def raw(port: int, target: str, header: str | None = None) -> tuple[bytes, bytes, bool]:
    """Send one raw HTTP/1.1 request; (status line, body, answered by the application)."""
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if header:
        if header.startswith(("Host:", "Content-Length:")):
            lines = [line for line in lines if not line.startswith(header.split(":")[0])]
        lines.append(header)
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    # The server's own refusals (before any application code runs) say so in their body.
    refused = b"Invalid HTTP request" in body or b"Bad Request</title>" in body
    return status, body, not refused


def exercise(port: int, path: str) -> list[tuple[bytes, bytes, bool]]:
    out = [raw(port, path, h) for h in HOSTILE_HEADERS]
    out += [raw(port, t) for t in HOSTILE_TARGETS]
    return out


@pytest.fixture(scope="module")
def site_db(tmp_path_factory) -> str:
    db = tmp_path_factory.mktemp("site") / "bookshop.sqlite3"
    env = {**os.environ, "BOOKSHOP_SQLITE": str(db), "DJANGO_SETTINGS_MODULE": "bookshop.settings"}
    for cmd in (["migrate", "-v0"], ["seed"]):
        subprocess.run(
            [sys.executable, "manage.py", *cmd], cwd=SITE, env=env, check=True, timeout=120
        )
    return str(db)


def _run(args: list[str], env: dict[str, str], tmp, name: str, port: int, path: str):
    with serve(args, env, tmp / f"{name}.log", port):
        return exercise(port, path)


def test_gunicorn_answers_hostile_requests_as_without_stagetrace(site_db, tmp_path):
    pytest.importorskip("gunicorn")
    results = {}
    jsonl = tmp_path / "t.jsonl"
    for mode in ("off", "on"):
        port = free_port()
        env = {
            "BOOKSHOP_SQLITE": site_db,
            "DJANGO_SETTINGS_MODULE": "bookshop.settings",
            "BOOKSHOP_STAGETRACE": "0" if mode == "off" else "1",
            "STAGETRACE_JSONL": str(jsonl) if mode == "on" else "",
        }
        args = ["gunicorn", "--bind", f"127.0.0.1:{port}", "--chdir", str(SITE)]
        results[mode] = _run(
            [*args, "bookshop.wsgi:application"], env, tmp_path, mode, port, "/api/books/"
        )
    assert results["on"] == results["off"]
    reached = sum(1 for _, _, app in results["on"] if app)
    assert reached >= len(HOSTILE_HEADERS)
    timelines = read_timelines(jsonl, reached)
    assert len(timelines) == reached


def test_uvicorn_answers_hostile_requests_as_without_stagetrace(tmp_path):
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    results = {}
    jsonl = tmp_path / "t.jsonl"
    for mode in ("off", "on"):
        port = free_port()
        env = {
            "EXAMPLE_STAGETRACE": "0" if mode == "off" else "1",
            "STAGETRACE_JSONL": str(jsonl) if mode == "on" else "",
        }
        args = ["uvicorn", "--app-dir", str(FASTAPI), "--port", str(port), "--no-access-log"]
        results[mode] = _run([*args, "app:app"], env, tmp_path, mode, port, "/items/3")
    assert results["on"] == results["off"]
    reached = sum(1 for _, _, app in results["on"] if app)
    assert reached >= len(HOSTILE_HEADERS)
    timelines = read_timelines(jsonl, reached)
    assert len(timelines) == reached
