"""A small FastAPI shop: middleware stack, a JSON API with a response model and a dependency,
a template page with includes, a streaming endpoint, a background task and a websocket.

Run it (from the repository root) and watch the waterfalls:

    STAGETRACE_SINKS=console uvicorn --app-dir examples/fastapi_app app:app
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import stagetrace.starlette

if os.environ.get("EXAMPLE_STAGETRACE") != "0":  # the benchmarks and tests compare without it
    stagetrace.starlette.instrument()  # every Starlette/FastAPI app in the process

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request, WebSocket  # noqa: E402
from fastapi.middleware.cors import CORSMiddleware  # noqa: E402
from fastapi.middleware.gzip import GZipMiddleware  # noqa: E402
from fastapi.responses import HTMLResponse, StreamingResponse  # noqa: E402
from fastapi.templating import Jinja2Templates  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from starlette.middleware.base import BaseHTTPMiddleware  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

import stagetrace  # noqa: E402

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


class Item(BaseModel):
    id: int
    name: str
    price: float


class Order(BaseModel):
    item_id: int
    quantity: int = 1


ITEMS = {i: Item(id=i, name=f"Item {i}", price=9.5 + i) for i in range(1, 21)}
RECEIPTS: list[int] = []


class ServedByHeader(BaseHTTPMiddleware):
    """A BaseHTTPMiddleware: work before and after call_next."""

    async def dispatch(self, request, call_next):
        response = await call_next(request)
        response.headers["x-served-by"] = "fastapi-example"
        return response


class RequireJSONForWrites:
    """A pure ASGI middleware that refuses writes without a JSON body (a short circuit)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT"):
            headers = dict(scope.get("headers") or ())
            if not headers.get(b"content-type", b"").startswith(b"application/json"):
                await send({"type": "http.response.start", "status": 415, "headers": []})
                await send({"type": "http.response.body", "body": b"JSON only"})
                return
        await self.app(scope, receive, send)


app = FastAPI(title="stagetrace FastAPI example")
app.add_middleware(RequireJSONForWrites)
app.add_middleware(GZipMiddleware, minimum_size=200)
app.add_middleware(CORSMiddleware, allow_origins=["https://shop.example"])
app.add_middleware(ServedByHeader)


async def inventory() -> dict[int, Item]:
    """A dependency (think: a database session)."""
    await asyncio.sleep(0.001)
    return ITEMS


Inventory = Annotated[dict[int, Item], Depends(inventory)]


@app.get("/items/{item_id}", response_model=Item)
async def read_item(item_id: int, db: Inventory) -> Item:
    if item_id not in db:
        raise HTTPException(status_code=404, detail="no such item")
    return db[item_id]


@app.get("/items", response_model=list[Item])
async def list_items(db: Inventory, limit: int = 10) -> list[Item]:
    with stagetrace.stage("pick items", limit=limit):
        return list(db.values())[:limit]


@app.get("/page", response_class=HTMLResponse)
async def page(request: Request):
    return templates.TemplateResponse(request, "page.html", {"items": list(ITEMS.values())[:5]})


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        for item in list(ITEMS.values())[:5]:
            await asyncio.sleep(0.01)
            yield f"{item.id},{item.name},{item.price}\n"

    return StreamingResponse(lines(), media_type="text/csv")


def send_receipt(order_id: int) -> None:
    """A background task: runs after the response has been sent."""
    time.sleep(0.02)
    RECEIPTS.append(order_id)


@app.post("/orders", status_code=201)
def create_order(order: Order, background: BackgroundTasks) -> dict[str, int]:
    order_id = len(RECEIPTS) + 1000
    background.add_task(send_receipt, order_id)
    return {"order_id": order_id, "item_id": order.item_id}


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close(code=1000)
                return
            await websocket.send_text(text.upper())
    except WebSocketDisconnect:
        pass
