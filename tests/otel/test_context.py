"""The OpenTelemetry context during a recorded request (`stagetrace.otel._context`), on a real
Django app (the test client) and a real FastAPI app (httpx's ASGI transport): the current span
is the running stage, `propagate.inject()` writes this trace's traceparent, spans made with the
SDK nest under the stage that made them, baggage arrives, malformed headers are ignored, and
nothing of it exists when the option is off or after the request."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("opentelemetry.sdk")

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")

import django

django.setup()

from django.http import JsonResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from opentelemetry import baggage, context, propagate, trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import stagetrace  # noqa: E402
from stagetrace._options import ConfigurationError  # noqa: E402
from tests.otel.conftest import exporting  # noqa: E402

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("tests.otel.test_context")


def _now() -> dict[str, Any]:
    sc = trace.get_current_span().get_span_context()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {
        "valid": sc.is_valid,
        "trace": f"{sc.trace_id:032x}",
        "span": f"{sc.span_id:016x}",
        "flags": int(sc.trace_flags),
        "state": sc.trace_state.to_header(),
        "carrier": carrier,
        "baggage": dict(baggage.get_all()),
    }


def ctx_view(request: Any) -> JsonResponse:
    from django.db import connection

    out = {"view": _now()}
    with TRACER.start_as_current_span("user work"):
        out["inside_user_span"] = _now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.execute("SELECT 2")
    out["after"] = _now()
    return JsonResponse(out)


def discarding_view(request: Any) -> JsonResponse:
    stagetrace.discard()
    return ctx_view(request)


def streaming_view(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    def body() -> Any:
        yield b"["
        with TRACER.start_as_current_span("made while streaming"):
            yield json.dumps(_now()).encode()
        yield b"]"

    return StreamingHttpResponse(body())


def holding_view(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    def body() -> Any:
        with TRACER.start_as_current_span("held across chunks"):
            yield b"a"
            with TRACER.start_as_current_span("inside"):
                yield b"b"
            yield b"c"

    return StreamingHttpResponse(body())


def closing_view(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    def body() -> Any:
        try:
            yield b"a"
            yield b"b"
        finally:
            with TRACER.start_as_current_span("cleanup"):
                pass

    return StreamingHttpResponse(body())


KEPT: list[Any] = []


def keeping_view(request: Any) -> JsonResponse:
    KEPT.append(context.get_current())  # as a task the request leaves running holds it
    return JsonResponse({})


urlpatterns = [
    path("ctx/", ctx_view),
    path("keep/", keeping_view),
    path("discarded/", discarding_view),
    path("stream/", streaming_view),
    path("holding/", holding_view),
    path("closing/", closing_view),
]


def _stage(tl: stagetrace.Timeline, kind: str) -> Any:
    return next(s for s in tl.stages if s.kind == kind)


@pytest.fixture
def client() -> Any:
    with override_settings(ROOT_URLCONF=__name__):
        yield Client()


def _get(client: Any, **headers: str) -> tuple[dict[str, Any], stagetrace.Timeline]:
    EXPORTER.clear()
    with stagetrace.capture() as got:
        response = client.get("/ctx/", headers=headers)
    stagetrace.flush()
    assert response.status_code == 200
    return json.loads(response.content), got[0]


def test_inside_a_view_the_current_span_is_the_view_stage_of_this_trace(client):
    """With otel_context on, OpenTelemetry's current span inside a Django view is a valid,
    non-remote span context of the timeline's trace whose span id is the view stage's, and
    `propagate.inject()` writes that as the traceparent."""
    stagetrace.configure(**exporting(), otel_context=True)
    body, tl = _get(client)
    view = _stage(tl, "view")
    now = body["view"]
    assert now["valid"]
    assert now["trace"] == tl.trace_id
    assert now["span"] == tl.stage_span_id(view.id)
    assert now["carrier"]["traceparent"] == f"00-{tl.trace_id}-{now['span']}-01"
    assert body["after"]["span"] == now["span"]
    assert trace.get_current_span().get_span_context().is_valid is False


def test_an_incoming_traceparent_and_tracestate_carry_through(client):
    """An incoming traceparent makes the request part of the caller's trace: the current span
    inside the view has its trace id, and the tracestate travels on in inject()."""
    stagetrace.configure(**exporting(), otel_context=True)
    body, tl = _get(client, traceparent=f"00-{TRACE}-{PARENT}-01", tracestate="vendor=abc")
    assert tl.trace_id == TRACE and tl.parent_span_id == PARENT
    assert body["view"]["trace"] == TRACE
    assert body["view"]["carrier"]["traceparent"].startswith(f"00-{TRACE}-")
    assert body["view"]["carrier"]["tracestate"] == "vendor=abc"


@pytest.mark.parametrize(("incoming", "sampled"), [("09", 1), ("ff", 1), ("08", 0)])
def test_trace_flags_other_than_sampled_are_not_passed_on(client, incoming, sampled):
    """An incoming ``traceparent`` with flag bits W3C Trace Context does not define set
    (``09``, ``ff``) is read for its sampled bit only: the stages' span contexts, what
    ``inject()`` writes for the next service and the exported spans' flags carry ``01`` (or
    ``00``), as OpenTelemetry's SDK gives its own child spans — W3C says vendors must set
    those bits to zero, not propagate what they do not understand."""
    from opentelemetry.sdk.trace import TracerProvider as Provider

    exporter = InMemorySpanExporter()
    provider = Provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stagetrace.configure(sinks=["otel"], tracer_provider=provider)
    body, tl = _get(client, traceparent=f"00-{TRACE}-{PARENT}-{incoming}")
    assert body["view"]["flags"] == sampled
    assert body["view"]["carrier"]["traceparent"].endswith(f"-0{sampled}")
    assert tl.trace_flags == sampled
    assert {int(s.context.trace_flags) for s in exporter.get_finished_spans()} <= {sampled}


def test_sdk_spans_made_in_a_view_nest_under_the_view_stage(client):
    """A span the application starts with the SDK inside a view is a child of the view
    stage's span, in the timeline's trace; inside it, the current span is the SDK span."""
    stagetrace.configure(**exporting(), otel_context=True)
    body, tl = _get(client)
    (span,) = EXPORTER.get_finished_spans()
    view = _stage(tl, "view")
    assert f"{span.context.trace_id:032x}" == tl.trace_id
    assert f"{span.parent.span_id:016x}" == tl.stage_span_id(view.id)
    assert body["inside_user_span"]["span"] == f"{span.context.span_id:016x}"


def test_the_current_span_follows_the_running_stage(client):
    """The span context is computed from the stage running when it is asked for: inside a
    db.query stage it is that stage's span id (what an OpenTelemetry DB client span would
    take as its parent)."""
    stagetrace.configure(**exporting(), otel_context=True)
    from stagetrace import _recorder

    seen: list[str] = []
    real_enter = _recorder.enter

    def enter(kind: str, name: Any, attrs: Any = None) -> Any:
        rec = real_enter(kind, name, attrs)
        if kind == "db.query":
            seen.append(f"{trace.get_current_span().get_span_context().span_id:016x}")
        return rec

    _recorder.enter = enter  # type: ignore[assignment]
    try:
        _, tl = _get(client)
    finally:
        _recorder.enter = real_enter  # type: ignore[assignment]
    queries = [tl.stage_span_id(s.id) for s in tl.stages if s.kind == "db.query"]
    assert queries and seen == queries


def test_baggage_from_the_incoming_header_is_in_the_context(client):
    """The W3C baggage header's entries are OpenTelemetry baggage during the request (and
    inject() passes them on); malformed members are dropped, the rest kept."""
    stagetrace.configure(**exporting(), otel_context=True)
    body, _ = _get(client, baggage="user=alice, bad member;;, tier=gold")
    assert body["view"]["baggage"] == {"user": "alice", "tier": "gold"}
    assert "user=alice" in body["view"]["carrier"]["baggage"]


def test_malformed_baggage_from_a_client_writes_nothing_to_the_log(client, caplog):
    """Bad members of an incoming ``baggage`` header are dropped without a word: a client
    cannot make each request write dozens of warnings — each quoting a member's value, a
    token, say — nor an oversized header be copied whole into the log. The good members are
    baggage, percent-decoded (``+`` stays ``+``), their properties left out."""
    stagetrace.configure(**exporting(), otel_context=True)
    caplog.set_level("DEBUG")
    bad = ",".join(f"user id{i}=secret-token-{i}" for i in range(50))
    body, _ = _get(client, baggage=f"{bad},tier=gold%20plus;prop=1,n=a+b")
    assert body["view"]["baggage"] == {"tier": "gold plus", "n": "a+b"}
    _get(client, baggage="k=" + "v" * 9000)
    assert "secret-token" not in caplog.text and "vvvvvvvv" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "00-zzzz-b7ad6b7169203331-01"},
        {"traceparent": f"ff-{TRACE}-{PARENT}-01"},
        {"traceparent": f"00-{'0' * 32}-{PARENT}-01"},
        {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "=,,,bad key=1"},
        {"baggage": "%%%;;;=,=="},
    ],
)
def test_malformed_headers_are_ignored(client, headers):
    """A malformed traceparent, tracestate or baggage header is ignored: the request is served,
    recorded, and the view still has a valid current span of the timeline's trace."""
    stagetrace.configure(**exporting(), otel_context=True)
    body, tl = _get(client, **headers)
    assert body["view"]["valid"] and body["view"]["trace"] == tl.trace_id
    assert stagetrace.stats()["internal_errors"] == 0


def test_off_by_default(client):
    """Without otel_context (and no otel sink), nothing is attached: the current span inside
    the view is OpenTelemetry's invalid span and inject() writes nothing."""
    body, tl = _get(client)
    assert tl.stages
    assert body["view"]["valid"] is False and body["view"]["carrier"] == {}


def test_a_request_that_is_not_recorded_gets_no_context(client):
    """Sampled out means not recorded, and no context either."""
    stagetrace.configure(**exporting(), otel_context=True, sample_rate=0.0)
    EXPORTER.clear()
    body = json.loads(client.get("/ctx/").content)
    assert body["view"]["valid"] is False


@pytest.mark.parametrize("incoming", [True, False], ids=["traceparent", "none"])
def test_a_discarded_request_leaves_the_context_as_an_excluded_path_would(client, incoming):
    """After `stagetrace.discard()` none of the request's spans will exist, so none may be a
    parent: an SDK span made in the view is a child of the caller's span (an incoming
    traceparent) or a root of its own, and inject() writes the caller's traceparent or none
    — never a stage's span id (an orphan in the collector)."""
    stagetrace.configure(**exporting(), otel_context=True)
    EXPORTER.clear()
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"} if incoming else {}
    with stagetrace.capture() as got:
        response = client.get("/discarded/", headers=headers)
    stagetrace.flush()
    body = json.loads(response.content)
    assert response.status_code == 200 and got == []
    (span,) = EXPORTER.get_finished_spans()
    if incoming:
        assert f"{span.context.trace_id:032x}" == TRACE
        assert f"{span.parent.span_id:016x}" == PARENT and span.parent.is_remote
        assert body["view"]["carrier"]["traceparent"] == f"00-{TRACE}-{PARENT}-01"
    else:
        assert span.parent is None
        assert body["view"]["valid"] is False and "traceparent" not in body["view"]["carrier"]


def test_a_streamed_body_is_produced_in_the_requests_context(client):
    """A WSGI server iterates a streamed body after the gateway gave the request's context
    back; the body still runs in it: a span it makes is a child of the response.write stage
    that produces it, in the request's trace — not a root of a trace of its own — and the
    context is gone again between chunks and after the response."""
    stagetrace.configure(**exporting(), otel_context=True)
    EXPORTER.clear()
    with stagetrace.capture() as got:
        response = client.get("/stream/")
        outside = trace.get_current_span().get_span_context().is_valid
        (inside,) = json.loads(b"".join(response.streaming_content))
        response.close()
    stagetrace.flush()
    (tl,) = got
    (span,) = EXPORTER.get_finished_spans()
    write = _stage(tl, "response.write")
    assert f"{span.context.trace_id:032x}" == tl.trace_id
    assert f"{span.parent.span_id:016x}" == tl.stage_span_id(write.id)
    assert inside["trace"] == tl.trace_id and inside["span"] == f"{span.context.span_id:016x}"
    assert outside is False and trace.get_current_span().get_span_context().is_valid is False


@pytest.mark.parametrize("runtime", ["context variable", "API"])
def test_a_span_a_streamed_body_holds_open_across_chunks_stays_current(client, runtime):
    """A span the body makes current and holds open across ``yield``s is current again when
    the body resumes: a span made inside it is its child (each chunk is produced in the
    context as the previous one left it, not in the request's as it began) — through
    OpenTelemetry's context variable directly, and through its API (another runtime
    context)."""
    from stagetrace._state import STATE

    stagetrace.configure(**exporting(), otel_context=True)
    if runtime == "API":
        for hook in STATE.context_hooks:
            hook.context_var = None
    EXPORTER.clear()
    with stagetrace.capture() as got:
        response = client.get("/holding/")
        assert b"".join(response.streaming_content) == b"abc"
        response.close()
    stagetrace.flush()
    (tl,) = got
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    assert {f"{s.context.trace_id:032x}" for s in spans.values()} == {tl.trace_id}
    assert spans["inside"].parent.span_id == spans["held across chunks"].context.span_id


def test_a_streamed_bodys_cleanup_at_close_runs_in_the_requests_context(client):
    """The client read one chunk and went away: the server closes the response, and the
    body's ``finally`` runs then — in the request's trace, as its chunks did."""
    stagetrace.configure(**exporting(), otel_context=True)
    EXPORTER.clear()
    with stagetrace.capture() as got:
        response = client.get("/closing/")
        assert next(iter(response.streaming_content)) == b"a"
        response.close()
    stagetrace.flush()
    (tl,) = got
    (span,) = EXPORTER.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == tl.trace_id


def test_a_flask_streamed_body_is_produced_in_the_requests_context():
    """The same under the generic WSGI gateway (Flask, ``stream_with_context``): the span
    the body makes is a child of the response.write stage, in the request's trace."""
    flask = pytest.importorskip("flask")
    import stagetrace.flask

    app = flask.Flask(__name__)

    @app.get("/stream")
    def stream() -> Any:
        def body() -> Any:
            yield "a"
            with TRACER.start_as_current_span("made while streaming"):
                yield "b"

        return flask.Response(flask.stream_with_context(body()))

    stagetrace.configure(**exporting(), otel_context=True)
    stagetrace.flask.instrument(app)
    EXPORTER.clear()
    try:
        with stagetrace.capture() as got:
            response = app.test_client().get("/stream")
            assert response.get_data() == b"ab"
            response.close()
    finally:
        stagetrace.flask.uninstrument()
    stagetrace.flush()
    (tl,) = got
    (span,) = EXPORTER.get_finished_spans()
    write = _stage(tl, "response.write")
    assert f"{span.context.trace_id:032x}" == tl.trace_id
    assert f"{span.parent.span_id:016x}" == tl.stage_span_id(write.id)


def test_work_a_discarded_request_left_running_parents_nothing_to_it():
    """A task a discarded request started and left running (``asyncio.create_task`` in an
    endpoint) makes its span after the request ended: a root of its own, as in the request —
    not a child of the request's root span, which is never exported."""
    pytest.importorskip("starlette")
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import stagetrace.starlette

    tasks: list[Any] = []

    async def later() -> None:
        await asyncio.sleep(0.01)
        with TRACER.start_as_current_span("after the request"):
            pass

    async def endpoint(request: Any) -> Any:
        stagetrace.discard()
        with TRACER.start_as_current_span("in the request"):
            pass
        tasks.append(asyncio.create_task(later()))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/d", endpoint)])
    stagetrace.configure(**exporting(), otel_context=True)
    stagetrace.starlette.instrument()
    EXPORTER.clear()

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/d")).status_code == 200
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        stagetrace.starlette.uninstrument()
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    assert spans["in the request"].parent is None
    assert spans["after the request"].parent is None


def test_a_failing_discard_check_is_counted_and_the_span_still_made(monkeypatch):
    """The recorder failing inside the span context's check for a discarded request (asked by
    work the request left running): counted as an internal error; the span is made, under
    the request's own span, and the application goes on."""
    from stagetrace import _recorder

    def broken() -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(_recorder, "discarded_here", broken)
    stagetrace.configure(**exporting(), otel_context=True)
    EXPORTER.clear()
    before = stagetrace.stats()["internal_errors_by_site"].get("otel.context", 0)
    KEPT.clear()
    with stagetrace.capture() as got, override_settings(ROOT_URLCONF=__name__):
        assert Client().get("/keep/").status_code == 200
    token = context.attach(KEPT.pop())  # the request's context, after the request ended
    try:
        with TRACER.start_as_current_span("after the request"):
            pass
    finally:
        context.detach(token)
    (tl,) = got
    (span,) = EXPORTER.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == tl.trace_id
    assert stagetrace.stats()["internal_errors_by_site"]["otel.context"] > before


def test_an_outer_opentelemetry_span_becomes_the_timelines_parent():
    """When an OpenTelemetry span is current as the request begins (OpenTelemetry's own
    middleware wrapped outside stagetrace's gateway), the timeline joins its trace as its
    child instead of starting another trace."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from stagetrace.asgi import StagetraceMiddleware

    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse(_now())

    app = StagetraceMiddleware(Starlette(routes=[Route("/", endpoint)]))
    stagetrace.configure(**exporting(), otel_context=True)

    async def run() -> tuple[Any, Any]:
        import httpx

        with TRACER.start_as_current_span("outer server span") as outer:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                r = await c.get("/")
        return r.json(), outer.get_span_context()

    with stagetrace.capture() as got:
        body, outer = asyncio.run(run())
    stagetrace.flush()
    tl = got[0]
    assert tl.trace_id == f"{outer.trace_id:032x}"
    assert tl.parent_span_id == f"{outer.span_id:016x}"
    assert body["trace"] == tl.trace_id


def test_after_the_request_the_context_is_restored():
    """A context attached by the hook is detached when the gateway hands the context back:
    code running after the request sees what it saw before."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from stagetrace.asgi import StagetraceMiddleware

    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse(_now())

    app = StagetraceMiddleware(Starlette(routes=[Route("/", endpoint)]))
    stagetrace.configure(**exporting(), otel_context=True)

    async def run() -> tuple[Any, Any, Any]:
        import httpx

        before = context.get_current()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/")
        return before, r.json(), context.get_current()

    with stagetrace.capture() as got:
        before, body, after = asyncio.run(run())
    stagetrace.flush()
    assert body["valid"] and body["trace"] == got[0].trace_id
    assert after == before


def test_missing_opentelemetry_api_is_a_one_line_configuration_error(monkeypatch):
    """Without the OpenTelemetry API, otel_context=True fails at configuration with a one-line
    error that gives the pip command, and the previous configuration stays."""
    import sys

    from stagetrace.otel import _context

    options = exporting()
    monkeypatch.setattr(_context, "_api", {})
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError) as err:
        stagetrace.configure(**options, otel_context=True)
    message = str(err.value)
    assert "\n" not in message and 'pip install "stagetrace[otlp]"' in message
    assert stagetrace.settings().otel_context is False


def test_the_option_comes_from_the_environment(monkeypatch):
    """STAGETRACE_OTEL_CONTEXT=1 turns the hook on like configure(otel_context=True)."""
    from stagetrace._state import STATE
    from stagetrace.otel._context import ContextHook

    monkeypatch.setenv("STAGETRACE_OTEL_CONTEXT", "1")
    stagetrace.reset()
    stagetrace.configure(**exporting())
    assert stagetrace.settings().otel_context is True
    assert any(isinstance(h, ContextHook) for h in STATE.context_hooks)
