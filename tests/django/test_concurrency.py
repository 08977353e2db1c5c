"""Concurrency under real servers: gunicorn prefork workers with threads, and uvicorn serving
Django's ASGI handler. Every request yields exactly one timeline, and no stage lands in another
request's timeline."""

from __future__ import annotations

import asyncio
import re

import pytest

from ..servers import free_port, read_timelines, serve

httpx = pytest.importorskip("httpx")

N = 300


async def _hammer(base: str, template: str, n: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                r = await client.get(template.format(i))
                assert r.status_code == 200 and r.json()["rid"] == f"r{i}"

        await asyncio.gather(*(one(i) for i in range(n)))


def _check(timelines: list[dict], n: int, expected_children: int) -> None:
    assert len(timelines) == n
    paths = sorted(t["path"] for t in timelines)
    assert len(set(paths)) == n  # exactly one timeline per request
    for tl in timelines:
        rid = re.search(r"/(r\d+)/", tl["path"]).group(1)
        custom = [s["name"] for s in tl["stages"] if s["kind"] == "custom"]
        assert len(custom) == expected_children, (tl["path"], custom)
        assert all(name.split()[0] == rid for name in custom), (tl["path"], custom)


def test_gunicorn_prefork_threaded_workers(tmp_path):
    """gunicorn with 3 prefork workers of 4 threads each, 300 requests 16 at a time, each
    request also running work on a thread pool of its own."""
    pytest.importorskip("gunicorn")
    port = free_port()
    jsonl = tmp_path / "t.jsonl"
    env = {"DJANGO_SETTINGS_MODULE": "tests.djapp.settings", "STAGETRACE_JSONL": str(jsonl)}
    args = [
        "gunicorn",
        "--workers",
        "3",
        "--threads",
        "4",
        "--worker-class",
        "gthread",
        "--timeout",
        "300",
        # gthread workers close a keep-alive connection idle for 2 s; on a loaded CI machine the
        # client's pooled connection can wait that long, and reusing it races the close
        # (httpx.ReadError, seen in CI: the test's client failing, not the server under test).
        "--keep-alive",
        "120",
        "--bind",
        f"127.0.0.1:{port}",
        "django.core.wsgi:get_wsgi_application()",
    ]
    with serve(args, env, tmp_path / "gunicorn.log", port) as base:
        asyncio.run(_hammer(base, "/concurrent/r{}/", N, 16))
        timelines = read_timelines(jsonl, N, timeout=120)
    _check(timelines, N, 5)


def test_uvicorn_django_asgi_with_gather_and_sync_to_async(tmp_path):
    """uvicorn serving Django's ASGI handler: async views with gather children and
    sync_to_async hops, 300 requests 64 at a time."""
    pytest.importorskip("uvicorn")
    port = free_port()
    jsonl = tmp_path / "t.jsonl"
    env = {"DJANGO_SETTINGS_MODULE": "tests.djapp.settings", "STAGETRACE_JSONL": str(jsonl)}
    args = [
        "uvicorn",
        "--factory",
        "--port",
        str(port),
        "--no-access-log",
        # uvicorn closes a keep-alive connection idle for 5 s; on a loaded CI machine a pooled
        # connection can wait that long for its next request, and the client's reuse then races
        # the close (httpx.ReadError: the test's client, not the server under test, failing).
        "--timeout-keep-alive",
        "120",
        "django.core.asgi:get_asgi_application",
    ]
    with serve(args, env, tmp_path / "uvicorn.log", port) as base:
        asyncio.run(_hammer(base, "/aconcurrent/r{}/", N, 64))
        timelines = read_timelines(jsonl, N, timeout=120)
    _check(timelines, N, 4)
