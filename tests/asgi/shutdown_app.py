"""A Starlette app for the shutdown test (tests/asgi/test_uvicorn.py): its background task ends
during the server's graceful shutdown, and its sink takes its time (``SLOW_SINK_FILE``)."""

from __future__ import annotations

import json
import os
import time

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import stagetrace
import stagetrace.starlette


class SlowSink:
    """Writes each timeline's path as a JSON line, a quarter of a second after receiving it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def emit(self, timeline: stagetrace.Timeline) -> None:
        time.sleep(0.25)
        with open(self.path, "a") as f:
            f.write(json.dumps({"path": timeline.path}) + "\n")


def receipt() -> None:
    time.sleep(0.3)


async def order(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok", background=BackgroundTask(receipt))


stagetrace.configure(sinks=[SlowSink(os.environ["SLOW_SINK_FILE"])])
stagetrace.starlette.instrument()
app = Starlette(routes=[Route("/orders", order, methods=["POST"])])
