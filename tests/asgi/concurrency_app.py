"""A FastAPI app for the concurrency tests: gather and TaskGroup children, the thread pool,
sync endpoints, and long websockets, each stage named after its request."""

from __future__ import annotations

import asyncio
import sys
import time

import stagetrace.starlette

stagetrace.starlette.instrument()

from fastapi import FastAPI, WebSocket  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

import stagetrace  # noqa: E402

app = FastAPI()


def blocking(rid: str) -> None:
    with stagetrace.stage(f"{rid} pool"):
        time.sleep(0.001)


@app.get("/a/{rid}/")
async def async_endpoint(rid: str) -> dict[str, str]:
    async def child(i: int) -> None:
        with stagetrace.stage(f"{rid} gather {i}"):
            await asyncio.sleep(0.001 * (i % 3))

    await asyncio.gather(*(child(i) for i in range(3)))
    if sys.version_info >= (3, 11):
        async with asyncio.TaskGroup() as group:
            for i in range(2):
                group.create_task(child(10 + i))
    else:
        await asyncio.gather(child(10), child(11))
    await run_in_threadpool(blocking, rid)
    return {"rid": rid}


@app.get("/s/{rid}/")
def sync_endpoint(rid: str) -> dict[str, str]:
    with stagetrace.stage(f"{rid} sync"):
        time.sleep(0.001)
    return {"rid": rid}


@app.websocket("/ws/{rid}/")
async def websocket(ws: WebSocket, rid: str) -> None:
    await ws.accept()
    for i in range(5):
        with stagetrace.stage(f"{rid} message {i}"):
            await asyncio.sleep(0.05)
            await ws.send_text(f"{rid} {i}")
    await ws.close()
