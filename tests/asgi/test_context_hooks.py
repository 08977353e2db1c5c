"""The per-request context hook a sink can install (OpenTelemetry context propagation uses it),
and the span ids stages have during the request and once exported."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import stagetrace
from stagetrace import _recorder

from .conftest import named

SEEN: list = []


class HookSink:
    """A sink with a context hook: records what the gateway hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.context_hook = self

    def emit(self, timeline) -> None:
        pass

    def enter(self, tl, request):
        self.calls.append(("enter", request.headers.get("baggage")))
        return "token"

    def exit(self, token):
        self.calls.append(("exit", token))


async def endpoint(request):
    with stagetrace.stage("inner"):
        SEEN.append(_recorder.current_span())
    return JSONResponse({})


def test_context_hook_runs_around_each_request_and_span_ids_match_the_export(
    instrumented, captured
):
    """enter() runs when the request's timeline begins (seeing its headers), exit() when the
    gateway gives the context back; the span id of the stage current during the request is the
    one the finished timeline gives that stage."""
    sink = HookSink()
    stagetrace.configure(sinks=[sink])
    SEEN.clear()
    client = TestClient(Starlette(routes=[Route("/", endpoint)]))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client.get("/", headers={"baggage": "user=42", "traceparent": parent})
    assert sink.calls == [("enter", b"user=42"), ("exit", "token")]
    (tl,) = captured
    assert tl.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tl.parent_span_id == "00f067aa0ba902b7" and tl.trace_flags == 1
    (inner,) = named(tl, "custom", "inner")
    trace_id, span_id, flags = SEEN[0]
    assert flags == 1
    assert f"{trace_id:032x}" == tl.trace_id
    assert f"{span_id:016x}" == tl.stage_span_id(inner.id)
    assert tl.stage_span_id(0) == tl.span_id
    ids = {tl.stage_span_id(s.id) for s in tl.stages}
    assert len(ids) == len(tl.stages)
