"""End to end: the FastAPI example under a real uvicorn on loopback, real HTTP and websocket
clients, timelines written by the JSON lines sink in the server process."""

from __future__ import annotations

import asyncio

import pytest

from ..servers import free_port, read_timelines, serve
from .conftest import EXAMPLE

httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


def stages(tl: dict, kind: str) -> list[dict]:
    return [s for s in tl["stages"] if s["kind"] == kind]


def test_fastapi_example_under_uvicorn(tmp_path):
    port = free_port()
    jsonl = tmp_path / "fastapi.jsonl"
    args = ["uvicorn", "--app-dir", str(EXAMPLE), "--port", str(port), "--no-access-log", "app:app"]
    with serve(args, {"STAGETRACE_JSONL": str(jsonl)}, tmp_path / "uvicorn.log", port) as base:
        with httpx.Client(base_url=base) as client:
            assert client.get("/items/4").json()["id"] == 4
            assert client.get("/page").status_code == 200
            with client.stream("GET", "/stream") as r:
                assert sum(1 for _ in r.iter_lines()) == 5
            assert client.post("/orders", json={"item_id": 1}).status_code == 201
            assert client.get("/nowhere").status_code == 404

        async def talk() -> list[str]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                replies = []
                for word in ("one", "two"):
                    await ws.send(word)
                    replies.append(await ws.recv())
                await ws.send("bye")
                return replies

        assert asyncio.run(talk()) == ["ONE", "TWO"]
        timelines = read_timelines(jsonl, 6)
    by = {(t["protocol"], t["path"]): t for t in timelines}
    item = by["http", "/items/4"]
    assert item["framework"] == "fastapi" and item["route"] == "/items/{item_id}"
    names = [s["name"] for s in stages(item, "middleware")]
    for expected in (
        "app.ServedByHeader",
        "starlette.middleware.cors.CORSMiddleware",
        "starlette.middleware.gzip.GZipMiddleware",
        "app.RequireJSONForWrites",
    ):
        assert expected in names
    for mw in stages(item, "middleware"):
        assert mw["phases"]["in"] > 0 and mw["short_circuit"] is False
    assert {"dependencies", "validate request params", "response model"} <= {
        s["name"] for s in item["stages"]
    }
    page = by["http", "/page"]
    assert len([s for s in stages(page, "template") if s["name"] == "_item.html"]) == 5
    stream = by["http", "/stream"]
    (write,) = stages(stream, "response.write")
    assert write["duration_ns"] >= 40_000_000
    order = by["http", "/orders"]
    (task,) = stages(order, "task")
    assert task["start_ns"] >= order["stages"][0]["attrs"]["http.response.sent_ns"]
    assert by["http", "/nowhere"]["status"] == 404 and by["http", "/nowhere"]["route"] is None
    ws = by["websocket", "/ws"]
    assert ws["status"] == 1000 and ws["stages"][0]["attrs"]["websocket.messages_sent"] == 2


def test_sigterm_right_after_a_request_loses_no_timeline(tmp_path):
    """uvicorn re-raises SIGTERM once it has shut down gracefully, so the process dies without
    running its exit handlers: a timeline that ended during the shutdown (its background task
    was still running) is delivered at the app's lifespan shutdown instead — the sink here takes
    a quarter of a second a timeline, longer than uvicorn's shutdown leaves."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from ..servers import ROOT, wait_for_port

    port = free_port()
    out_file = tmp_path / "delivered.jsonl"
    log = tmp_path / "uvicorn.log"
    here = str(ROOT / "tests" / "asgi")
    args = [
        "uvicorn",
        "--app-dir",
        here,
        "--port",
        str(port),
        "--no-access-log",
        "shutdown_app:app",
    ]
    env = {**os.environ, "SLOW_SINK_FILE": str(out_file)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        wait_for_port(port, proc, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.post("/orders").text == "ok"
        proc.send_signal(signal.SIGTERM)  # its background task is still running
        t = time.monotonic()
        code = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert code == -signal.SIGTERM  # uvicorn's own behaviour, unchanged
    assert time.monotonic() - t < 6
    lines = [json.loads(x) for x in out_file.read_text().splitlines()] if out_file.exists() else []
    assert lines == [{"path": "/orders"}], log.read_text()[-2000:]
