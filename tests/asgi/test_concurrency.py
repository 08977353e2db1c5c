"""Concurrency under a real uvicorn: 500 concurrent requests mixing async endpoints (gather and
TaskGroup children, the thread pool) and sync endpoints, while long websockets stay open.
Every request and connection yields exactly one timeline, and no stage lands in another's."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from ..servers import free_port, read_timelines, serve

httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")
pytest.importorskip("uvicorn")

HERE = Path(__file__).parent
N = 500
SOCKETS = 10


def test_500_concurrent_requests_and_long_websockets(tmp_path):
    port = free_port()
    jsonl = tmp_path / "t.jsonl"
    args = [
        "uvicorn",
        "--app-dir",
        str(HERE),
        "--port",
        str(port),
        "--no-access-log",
        "--timeout-keep-alive",
        "120",
    ]

    async def run(base: str) -> None:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

            async def one(i: int) -> None:
                kind = "a" if i % 2 else "s"
                r = await client.get(f"/{kind}/r{i}/")
                assert r.status_code == 200 and r.json() == {"rid": f"r{i}"}

            async def talk(i: int) -> None:
                url = f"ws://127.0.0.1:{port}/ws/w{i}/"
                async with websockets.connect(url) as ws:
                    got = [await ws.recv() for _ in range(5)]
                assert got == [f"w{i} {k}" for k in range(5)]

            await asyncio.gather(*(one(i) for i in range(N)), *(talk(i) for i in range(SOCKETS)))

    with serve(
        [*args, "concurrency_app:app"], {"STAGETRACE_JSONL": str(jsonl)}, tmp_path / "log", port
    ) as base:
        asyncio.run(run(base))
        timelines = read_timelines(jsonl, N + SOCKETS, timeout=120)
    assert len(timelines) == N + SOCKETS
    assert len({t["path"] for t in timelines}) == N + SOCKETS
    for tl in timelines:
        rid = re.search(r"/([rw]\d+)/", tl["path"]).group(1)
        custom = [s["name"] for s in tl["stages"] if s["kind"] == "custom"]
        i = int(rid[1:])
        expected = 5 if rid[0] == "w" else (6 if i % 2 else 1)
        assert len(custom) == expected, (tl["path"], custom)
        assert all(name.split()[0] == rid for name in custom), (tl["path"], custom)
