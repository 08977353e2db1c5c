"""The application's OpenTelemetry propagator is honoured (``OTEL_PROPAGATORS``, or
``propagate.set_global_textmap``): with B3 (Zipkin, Istio) the incoming B3 headers make the
request a child of the caller's span, the view's context injects B3, and outgoing httpx and
requests calls carry B3 headers naming their http.client stage (checked on what a real HTTP
server on loopback received); with ``tracecontext`` alone, baggage is not read; a W3C
traceparent the configured propagator does not read is no parent. On a real Django app."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("opentelemetry.sdk")
b3 = pytest.importorskip("opentelemetry.propagators.b3")
httpx = pytest.importorskip("httpx")

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")

import django  # noqa: E402

django.setup()

from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from opentelemetry import propagate  # noqa: E402
from opentelemetry.propagators.composite import CompositePropagator  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import (  # noqa: E402
    TraceContextTextMapPropagator,
)

import stagetrace  # noqa: E402
from stagetrace import httpclients as _outbound  # noqa: E402
from tests.djapp import views as djapp_views  # noqa: E402
from tests.otel.conftest import RECEIVED, calls_and_headers, exporting  # noqa: E402
from tests.otel.test_context import ctx_view  # noqa: E402

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
B3 = {"X-B3-TraceId": TRACE, "X-B3-SpanId": PARENT, "X-B3-Sampled": "1"}

urlpatterns = [path("ctx/", ctx_view), path("outbound/", djapp_views.outbound)]


@pytest.fixture
def textmap() -> Iterator[Any]:
    """Set the global propagator for one test (what OTEL_PROPAGATORS does at start-up)."""
    before = propagate.get_global_textmap()

    def use(propagator: Any) -> None:
        propagate.set_global_textmap(propagator)
        stagetrace.configure(**exporting(), otel_context=True)

    yield use
    propagate.set_global_textmap(before)
    stagetrace.reset()


@pytest.fixture
def outbound() -> Iterator[list[dict[str, str]]]:
    """httpx/requests instrumented; the headers the loopback server received."""
    _outbound.install()
    RECEIVED.clear()
    yield RECEIVED
    _outbound.uninstall()


@pytest.fixture
def client() -> Iterator[Any]:
    with override_settings(ROOT_URLCONF=__name__):
        yield Client()


def _get(client: Any, **headers: str) -> tuple[dict[str, Any], stagetrace.Timeline]:
    with stagetrace.capture() as got:
        response = client.get("/ctx/", headers=headers)
    stagetrace.flush()
    assert response.status_code == 200
    return json.loads(response.content), got[0]


def test_b3_headers_make_the_request_a_child_of_the_b3_parent(client, textmap):
    """With the B3 propagator, the incoming X-B3-* headers are the timeline's parent (its
    trace id, the caller's span id, sampled), and inside the view `propagate.inject()` writes
    B3 headers of this trace naming the view stage."""
    textmap(b3.B3MultiFormat())
    body, tl = _get(client, **B3)
    assert tl.trace_id == TRACE and tl.parent_span_id == PARENT and tl.trace_flags == 1
    view = next(s for s in tl.stages if s.kind == "view")
    carrier = body["view"]["carrier"]
    assert carrier["x-b3-traceid"] == TRACE
    assert carrier["x-b3-spanid"] == tl.stage_span_id(view.id)
    assert "traceparent" not in carrier
    assert stagetrace.stats()["internal_errors"] == 0


def test_with_b3_a_w3c_traceparent_is_not_a_parent(client, textmap):
    """The application propagates B3 only: a W3C traceparent on the request is not read (a
    new trace, no parent), as OpenTelemetry's own instrumentation would do."""
    textmap(b3.B3MultiFormat())
    _, tl = _get(client, traceparent=f"00-{TRACE}-{PARENT}-01")
    assert tl.trace_id != TRACE and tl.parent_span_id is None


def test_tracecontext_without_baggage_reads_no_baggage(client, textmap):
    """``OTEL_PROPAGATORS=tracecontext``: the traceparent is the parent, but the baggage
    header is not read (stagetrace's own W3C reading would have)."""
    textmap(CompositePropagator([TraceContextTextMapPropagator()]))
    body, tl = _get(client, traceparent=f"00-{TRACE}-{PARENT}-01", baggage="user=alice")
    assert tl.trace_id == TRACE and tl.parent_span_id == PARENT
    assert body["view"]["baggage"] == {}


def test_malformed_b3_headers_are_ignored(client, textmap):
    """Malformed B3 headers: the request is served and recorded in a trace of its own."""
    textmap(b3.B3MultiFormat())
    body, tl = _get(client, **{"X-B3-TraceId": "zz", "X-B3-SpanId": "!!"})
    assert tl.parent_span_id is None and body["view"]["trace"] == tl.trace_id
    assert stagetrace.stats()["internal_errors"] == 0


def test_outgoing_calls_carry_b3_headers_naming_their_stage(client, textmap, server, outbound):
    """With B3, a view's httpx and requests calls carry X-B3 headers: the caller's trace id
    and the span id of their own http.client stage (and no W3C traceparent)."""
    textmap(b3.B3MultiFormat())
    with stagetrace.capture() as got:
        response = client.get("/outbound/", {"url": f"{server}/x"}, headers=B3)
    stagetrace.flush()
    assert response.status_code == 200
    tl = got[0]
    for stage, headers in calls_and_headers(tl, 2):
        assert headers["x-b3-traceid"] == TRACE
        assert headers["x-b3-spanid"] == tl.stage_span_id(stage.id)
        assert "traceparent" not in headers


def test_an_asgi_app_reads_b3_headers_too(textmap):
    """The ASGI gateway keeps the propagator's headers as well: a FastAPI request with B3
    headers is the B3 caller's child, and its endpoint injects B3 of this trace."""
    import asyncio

    import httpx
    from fastapi import FastAPI

    from stagetrace.asgi import StagetraceMiddleware
    from tests.otel.test_context import _now

    api = FastAPI()

    @api.get("/")
    async def endpoint() -> dict[str, Any]:
        return _now()

    app = StagetraceMiddleware(api)
    textmap(b3.B3MultiFormat())

    async def run() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/", headers=B3)).json()

    with stagetrace.capture() as got:
        body = asyncio.run(run())
    stagetrace.flush()
    tl = got[0]
    assert tl.trace_id == TRACE and tl.parent_span_id == PARENT
    assert body["carrier"]["x-b3-traceid"] == TRACE


def test_a_single_b3_header_and_the_debug_flag_are_read(client, textmap):
    """Everything the propagator reads is offered to it, not only the headers it writes: the
    single ``b3`` header, and ``X-B3-Flags: 1`` (debug, which means sampled)."""
    textmap(b3.B3MultiFormat())
    _, tl = _get(client, b3=f"{TRACE}-{PARENT}-1")
    assert tl.trace_id == TRACE and tl.parent_span_id == PARENT
    _, tl = _get(client, **{"X-B3-TraceId": TRACE, "X-B3-SpanId": PARENT, "X-B3-Flags": "1"})
    assert tl.trace_id == TRACE and tl.trace_flags == 1


def test_otel_propagators_none_reads_and_writes_nothing(client, textmap, server, outbound):
    """``OTEL_PROPAGATORS=none`` (a composite of no propagators): an incoming traceparent is
    no parent, and outgoing calls get no trace headers."""
    textmap(CompositePropagator([]))
    _, tl = _get(client, traceparent=f"00-{TRACE}-{PARENT}-01")
    assert tl.trace_id != TRACE and tl.parent_span_id is None
    with stagetrace.timeline("job"):
        httpx.get(f"{server}/x")
    assert RECEIVED and "traceparent" not in RECEIVED[0] and "x-b3-traceid" not in RECEIVED[0]


def test_outgoing_b3_names_the_http_client_stage_in_any_timeline(textmap, server, outbound):
    """Outside a web request too (a `stagetrace.timeline` job), and while the application holds
    a span of its own current, the B3 headers name the call's http.client stage."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("tests")
    textmap(b3.B3MultiFormat())
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        httpx.get(f"{server}/plain")
        with tracer.start_as_current_span("mine"):
            httpx.get(f"{server}/inside-my-span")
    stagetrace.flush()
    tl = got[0]
    for stage, headers in calls_and_headers(tl, 2):
        assert headers["x-b3-traceid"] == tl.trace_id
        assert headers["x-b3-spanid"] == tl.stage_span_id(stage.id)


def test_baggage_the_application_set_does_not_stop_the_trace_headers(textmap, server, outbound):
    """With W3C and B3 together, a call whose ``baggage`` header the application set still
    gets this trace's traceparent and B3 headers, and keeps its own baggage."""
    textmap(CompositePropagator([TraceContextTextMapPropagator(), b3.B3MultiFormat()]))
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        httpx.get(f"{server}/x", headers={"baggage": "k=v"})
    stagetrace.flush()
    (headers,) = RECEIVED
    assert headers["baggage"] == "k=v"
    assert headers["traceparent"].startswith(f"00-{got[0].trace_id}-")
    assert headers["x-b3-traceid"] == got[0].trace_id


def test_a_trace_header_the_application_set_is_kept_and_ours_are_not_added(
    textmap, server, outbound
):
    """The application propagates a call itself (its own B3 headers): nothing of ours is
    added or replaced."""
    textmap(b3.B3MultiFormat())
    mine = {"X-B3-TraceId": "1" * 32, "X-B3-SpanId": "2" * 16}
    with stagetrace.timeline("job"):
        httpx.get(f"{server}/x", headers=mine)
    (headers,) = RECEIVED
    assert headers["x-b3-traceid"] == "1" * 32 and headers["x-b3-spanid"] == "2" * 16
    assert "x-b3-sampled" not in headers


def test_turning_the_context_off_beside_a_b3_propagator_is_warned_about_once(textmap, caplog):
    """otel_context=False with the otel sink and a B3 propagator: stagetrace will read and write
    W3C headers only, so configure() says so (naming the propagator and its headers) — once,
    not at every configure() — and says nothing with W3C's default propagator."""
    from stagetrace import _runtime

    _runtime._warned_propagators.clear()
    with caplog.at_level("WARNING", logger="stagetrace"):
        stagetrace.configure(**exporting(), otel_context=False)
        assert not [r for r in caplog.records if "propagator" in r.getMessage()]
        propagate.set_global_textmap(b3.B3MultiFormat())
        stagetrace.configure(**exporting(), otel_context=False)
        stagetrace.configure(**exporting(), otel_context=False)
        stagetrace.configure(**exporting())  # the context on: nothing to say
    warned = [r.getMessage() for r in caplog.records if "propagator" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "B3MultiFormat" in warned[0] and "x-b3-traceid" in warned[0]
    assert "otel_context is off" in warned[0]
