"""stagetrace beside OpenTelemetry's own instrumentation, with the context hook on: each
combination makes one coherent trace. Real apps (Django's test client, FastAPI through httpx's
ASGI transport), the OpenTelemetry SDK with an in-memory exporter, real PostgreSQL.

For every combination: the OpenTelemetry spans are in the timeline's trace; OpenTelemetry's
server span is an INTERNAL child of the stage it ran in (its instrumentations make a SERVER span
only when no span is current, `opentelemetry.instrumentation.utils._start_internal_or_server_span`);
no orphans (every span's parent is an OpenTelemetry span of the request or a stage's span id);
and a query stagetrace records as a ``db.query`` stage has no OpenTelemetry DB-API span too."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.django")

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")

import django

django.setup()

from django.http import JsonResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402

import stagetrace  # noqa: E402
from tests.conftest import need_service  # noqa: E402
from tests.otel.conftest import exporting  # noqa: E402
from tests.sql.conftest import sql_integrations_start_unpatched  # noqa: E402, F401

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


def sqlite_view(request: Any) -> JsonResponse:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})


def pg_view(request: Any) -> JsonResponse:
    from django.db import connections

    with connections["pg"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.execute("SELECT %s", [2])
        row = cursor.fetchone()
    return JsonResponse({"row": list(row)})


urlpatterns = [path("sqlite/", sqlite_view), path("pg/", pg_view)]


def _coherent(tl: stagetrace.Timeline, spans: tuple[ReadableSpan, ...]) -> None:
    """One trace, no orphans."""
    assert spans
    ours = {tl.stage_span_id(s.id) for s in tl.stages}
    theirs = {f"{s.context.span_id:016x}" for s in spans}
    for span in spans:
        assert f"{span.context.trace_id:032x}" == tl.trace_id, span.name
        assert span.parent is not None, f"{span.name} is a root: a second trace"
        parent = f"{span.parent.span_id:016x}"
        assert parent in ours or parent in theirs, f"{span.name} is an orphan"


def _stage_of(tl: stagetrace.Timeline, span_id: int) -> Any:
    return next(s for s in tl.stages if tl.stage_span_id(s.id) == f"{span_id:016x}")


@pytest.fixture
def otel_django() -> Iterator[None]:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().instrument(tracer_provider=PROVIDER)
    try:
        with override_settings(ROOT_URLCONF=__name__):
            yield
    finally:
        DjangoInstrumentor().uninstrument()


def _django_get(url: str) -> tuple[stagetrace.Timeline, tuple[ReadableSpan, ...]]:
    EXPORTER.clear()
    with stagetrace.capture() as got:
        response = Client().get(url)
    stagetrace.flush()
    assert response.status_code == 200, response.content
    return got[0], EXPORTER.get_finished_spans()


def test_django_instrumentation_its_server_span_is_an_internal_child_of_a_stage(otel_django):
    """Django + OpenTelemetry's Django instrumentation: its span for the request is INTERNAL,
    in the timeline's trace, parented on the middleware stage of OpenTelemetry's middleware."""
    stagetrace.configure(**exporting(), otel_context=True)
    tl, spans = _django_get("/sqlite/")
    _coherent(tl, spans)
    (server,) = [s for s in spans if s.name.startswith("GET")]
    assert server.kind == SpanKind.INTERNAL
    stage = _stage_of(tl, server.parent.span_id)
    assert stage.kind == "middleware" and "opentelemetry" in stage.name


def test_django_instrumentation_without_the_hook_makes_a_second_trace(otel_django):
    """The same app with the hook off: OpenTelemetry's span is a SERVER root of another trace
    (what the hook fixes; shows the test above can fail)."""
    tl, spans = _django_get("/sqlite/")
    (server,) = [s for s in spans if s.name.startswith("GET")]
    assert server.kind == SpanKind.SERVER and server.parent is None
    assert f"{server.context.trace_id:032x}" != tl.trace_id


@pytest.fixture
def pg() -> Iterator[None]:
    """PostgreSQL through Django's "pg" alias, its connection closed before and after: the
    next query connects anew, through the instrumented ``connect`` (a connection another
    test left open would bypass OpenTelemetry's wrapper)."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    pytest.importorskip("psycopg")
    from django.db import connections

    connections["pg"].close()
    yield
    connections["pg"].close()


@pytest.fixture
def psycopg_instrumented(pg: None) -> Iterator[None]:
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    PsycopgInstrumentor().instrument(tracer_provider=PROVIDER)
    try:
        yield
    finally:
        PsycopgInstrumentor().uninstrument()


@pytest.fixture
def dbapi_instrumented(pg: None) -> Iterator[None]:
    import psycopg
    from opentelemetry.instrumentation import dbapi

    dbapi.wrap_connect("tests", psycopg, "connect", "postgresql", {}, tracer_provider=PROVIDER)
    try:
        yield
    finally:
        dbapi.unwrap_connect(psycopg, "connect")


@pytest.mark.parametrize("driver", ["psycopg_instrumented", "dbapi_instrumented"])
def test_django_and_opentelemetry_db_instrumentation_no_duplicate_sql_spans(
    otel_django, driver, request
):
    """Django + OpenTelemetry's Django and psycopg (or generic DB-API) instrumentation: the
    queries are db.query stages and there is no OpenTelemetry DB span for them — the hook's
    context suppresses OpenTelemetry's DB-API wrapper inside db.query stages only (the
    request's own span is still made)."""
    request.getfixturevalue(driver)
    stagetrace.configure(**exporting(), otel_context=True)
    tl, spans = _django_get("/pg/")
    _coherent(tl, spans)
    recorded = {s.attrs.get("db.query.text") for s in tl.stages if s.kind == "db.query"}
    assert {"SELECT 1", "SELECT %s"} <= recorded
    # What OpenTelemetry still records is what stagetrace has no db.query stage for: the
    # statement Django runs while opening the connection (inside the db.connect stage).
    others = [_statement(s) for s in spans if s.kind == SpanKind.CLIENT]
    assert others, "OpenTelemetry's wrapper did not see the connection"
    assert not recorded & set(others), others
    assert all("set_config" in text for text in others), others
    assert any(s.name.startswith("GET") for s in spans)


def _statement(span: ReadableSpan) -> str:
    attrs = span.attributes or {}
    return str(attrs.get("db.query.text") or attrs.get("db.statement") or "")


@pytest.mark.parametrize("driver", ["psycopg_instrumented", "dbapi_instrumented"])
def test_without_the_hook_the_same_queries_are_recorded_twice(otel_django, driver, request):
    """The same request with the hook off: OpenTelemetry makes a CLIENT span per query besides
    stagetrace's db.query stages (what the suppression removes; shows the test can fail)."""
    request.getfixturevalue(driver)
    _, spans = _django_get("/pg/")
    statements = [_statement(s) for s in spans if s.kind == SpanKind.CLIENT]
    assert {"SELECT 1", "SELECT %s"} <= set(statements), statements


def test_suppression_is_only_inside_db_query_stages(otel_django, psycopg_instrumented, monkeypatch):
    """A query run by the application outside any db.query stage (a raw psycopg connection
    opened in the view, with stagetrace.dbapi not recording drivers) still gets its
    OpenTelemetry span, in the trace, parented on the span OpenTelemetry's Django middleware
    made current for the view."""
    import psycopg

    from stagetrace.dbapi import _query

    # Another test module may have left the ASGI adapter (which installs stagetrace.dbapi)
    # instrumented: its wrappers record nothing while their patcher is not applied.
    monkeypatch.setattr(_query.patcher, "applied", False)

    def raw_view(request: Any) -> JsonResponse:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as conn:
            conn.execute("SELECT 42")
        return JsonResponse({})

    global urlpatterns
    saved = urlpatterns
    urlpatterns = [path("raw/", raw_view)]
    try:
        stagetrace.configure(**exporting(), otel_context=True)
        tl, spans = _django_get("/raw/")
    finally:
        urlpatterns = saved
    _coherent(tl, spans)
    client = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert any("SELECT" in s.name for s in client), [s.name for s in spans]
    # Parented on OpenTelemetry's own request span, which its middleware made current.
    (request_span,) = [s for s in spans if s.name.startswith("GET")]
    assert all(s.parent.span_id == request_span.context.span_id for s in client)


@pytest.fixture
def stagetrace_dbapi(request: pytest.FixtureRequest) -> Iterator[None]:
    """stagetrace's own DB-API driver recording (`stagetrace.dbapi`), as the ASGI adapters
    install it — installed by this fixture, so the order against OpenTelemetry's fixtures is
    the test's (another module's adapter may have left it installed)."""
    import stagetrace.dbapi

    request.getfixturevalue("sql_integrations_start_unpatched")

    stagetrace.dbapi.instrument()
    try:
        yield
    finally:
        stagetrace.dbapi.uninstrument()


def _raw_psycopg_view(request: Any) -> JsonResponse:
    import psycopg

    # Through a cursor: the generic DB-API wrapper proxies ``cursor()``, not
    # ``Connection.execute``.
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as conn:
        cur = conn.cursor()
        cur.execute("SELECT 42")
        cur.execute("SELECT %s::int", [7])
        row = cur.fetchone()
    return JsonResponse({"row": list(row)})


def _raw_sqlite_view(request: Any) -> JsonResponse:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (x INTEGER)")
        cur.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        row = cur.execute("SELECT count(*) FROM t").fetchone()
    finally:
        conn.close()
    return JsonResponse({"row": list(row)})


def _django_get_view(view: Any) -> tuple[stagetrace.Timeline, tuple[ReadableSpan, ...]]:
    global urlpatterns
    saved = urlpatterns
    urlpatterns = [path("raw/", view)]
    try:
        return _django_get("/raw/")
    finally:
        urlpatterns = saved


@pytest.mark.parametrize("driver", ["psycopg_instrumented", "dbapi_instrumented"])
def test_raw_driver_queries_recorded_by_stagetrace_dbapi_get_no_second_span(
    otel_django, stagetrace_dbapi, driver, request
):
    """A raw psycopg connection (no ORM) recorded by stagetrace.dbapi beside OpenTelemetry's
    psycopg (or generic DB-API) instrumentation, whose cursor wrapper runs outside the driver
    methods stagetrace patches: each query is one db.query stage and no OpenTelemetry span,
    with its rows counted."""
    request.getfixturevalue(driver)
    stagetrace.configure(**exporting(), otel_context=True)
    tl, spans = _django_get_view(_raw_psycopg_view)
    _coherent(tl, spans)
    queries = [s for s in tl.stages if s.kind == "db.query"]
    texts = [s.attrs.get("db.query.text") for s in queries]
    assert texts == ["SELECT 42", "SELECT %s::int"], texts
    assert queries[1].attrs.get("db.response.returned_rows") == 1
    assert queries[1].attrs.get("db.namespace") == "test"
    client = [_statement(s) for s in spans if s.kind == SpanKind.CLIENT]
    assert not any("42" in text or "::int" in text for text in client), client


def test_raw_sqlite_queries_recorded_by_stagetrace_dbapi_get_no_second_span(
    otel_django, stagetrace_dbapi
):
    """The same for sqlite3 under OpenTelemetry's DB-API ``wrap_connect`` (the proxy its
    sqlite3 instrumentation uses): execute and executemany are one db.query stage each."""
    import sqlite3

    from opentelemetry.instrumentation import dbapi

    dbapi.wrap_connect("tests", sqlite3, "connect", "sqlite", {}, tracer_provider=PROVIDER)
    try:
        stagetrace.configure(**exporting(), otel_context=True)
        tl, spans = _django_get_view(_raw_sqlite_view)
    finally:
        dbapi.unwrap_connect(sqlite3, "connect")
    texts = [s.attrs.get("db.query.text") for s in tl.stages if s.kind == "db.query"]
    assert texts == [
        "CREATE TABLE t (x INTEGER)",
        "INSERT INTO t VALUES (?)",
        "SELECT count(*) FROM t",
    ], texts
    assert [s.name for s in spans if s.kind == SpanKind.CLIENT] == []


def test_without_stagetrace_in_the_way_opentelemetry_records_raw_queries_as_usual(
    otel_django, psycopg_instrumented, stagetrace_dbapi
):
    """Outside any timeline (a query at start-up, say), OpenTelemetry's wrapper makes its span
    as it always does: stagetrace only takes the queries it records."""
    import psycopg

    EXPORTER.clear()
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as conn:
        conn.cursor().execute("SELECT 42")
    assert "SELECT 42" in [_statement(s) for s in EXPORTER.get_finished_spans()]


def test_async_raw_psycopg_in_fastapi_gets_no_second_span(psycopg_instrumented):
    """FastAPI (whose adapter installs stagetrace.dbapi) with an async psycopg connection and
    OpenTelemetry's psycopg instrumentation: the async wrapper (``traced_execution_async``)
    too leaves each query to its db.query stage."""
    import psycopg
    from fastapi import FastAPI

    import stagetrace.starlette

    stagetrace.starlette.instrument()
    app = FastAPI()

    @app.get("/rows")
    async def rows() -> dict[str, Any]:
        conn = await psycopg.AsyncConnection.connect("host=127.0.0.1 user=postgres dbname=test")
        async with conn:
            cur = conn.cursor()
            await cur.execute("SELECT %s::int", [5])
            (value,) = await cur.fetchone()  # type: ignore[misc]
        # OpenTelemetry's cursor wrapper ran (not vacuous: its span was possible).
        return {"value": value, "cursor": type(cur).__name__}

    stagetrace.configure(**exporting(), otel_context=True)
    try:
        tl, spans, response = _asgi_get(app, "/rows")
    finally:
        stagetrace.starlette.uninstrument()
    assert response.json() == {"value": 5, "cursor": "TracedCursorAsyncFactory"}
    texts = [s.attrs.get("db.query.text") for s in tl.stages if s.kind == "db.query"]
    assert texts == ["SELECT %s::int"], texts
    client = [_statement(s) for s in spans if s.kind == SpanKind.CLIENT]
    assert not any("::int" in text for text in client), client


def test_an_async_cursor_behind_the_generic_sync_proxy_is_recorded_once(otel_django, pg):
    """OpenTelemetry's generic ``instrument_connection`` around an async psycopg connection
    calls the *sync* ``traced_execution``, which only creates the coroutine: the query is
    recorded once, when it runs, with its real duration (not also as an empty stage around
    the coroutine's creation, which made a false duplicate-query finding)."""
    import psycopg
    from opentelemetry.instrumentation import dbapi

    import stagetrace.dbapi

    async def run() -> None:
        raw = await psycopg.AsyncConnection.connect("host=127.0.0.1 user=postgres dbname=test")
        conn = dbapi.instrument_connection("tests", raw, "postgresql", tracer_provider=PROVIDER)
        try:
            await conn.cursor().execute("SELECT pg_sleep(0.02)")
        finally:
            await raw.close()

    stagetrace.dbapi.instrument()
    try:
        with stagetrace.capture() as got, stagetrace.timeline("job"):
            asyncio.run(run())
    finally:
        stagetrace.dbapi.uninstrument()
    queries = [s for s in got[0].stages if s.kind == "db.query"]
    assert [q.attrs["db.query.text"] for q in queries] == ["SELECT pg_sleep(0.02)"]
    assert queries[0].duration_ns >= 20_000_000
    assert got[0].findings == ()


@pytest.mark.parametrize("driver", ["psycopg_instrumented", "dbapi_instrumented"])
@pytest.mark.parametrize("entry", ["psycopg.connect", "Connection", "AsyncConnection"])
def test_stagetrace_dbapi_installed_after_opentelemetry_keeps_its_connect_wrapper(
    driver, request, entry
):
    """stagetrace.dbapi installed after OpenTelemetry's psycopg (or generic DB-API)
    instrumentation wrapped ``connect`` (with wrapt): OpenTelemetry's wrapper keeps working
    (a query outside any timeline gets its span) and, inside a timeline, opening the
    connection is still a ``db.connect`` stage — whichever way the application connects."""
    import psycopg

    import stagetrace.dbapi

    request.getfixturevalue(driver)
    request.getfixturevalue("sql_integrations_start_unpatched")
    stagetrace.dbapi.instrument()
    conninfo = "host=127.0.0.1 user=postgres dbname=test"

    def query(text: str) -> None:
        if entry == "psycopg.connect":
            with psycopg.connect(conninfo) as conn:
                conn.cursor().execute(text)
        elif entry == "Connection":
            with psycopg.Connection.connect(conninfo) as conn:
                conn.cursor().execute(text)
        else:

            async def run() -> None:
                async with await psycopg.AsyncConnection.connect(conninfo) as conn:
                    await conn.cursor().execute(text)

            asyncio.run(run())

    try:
        EXPORTER.clear()
        query("SELECT 44")
        traced = entry == "psycopg.connect" or driver == "psycopg_instrumented"
        if traced:  # the generic wrap_connect wraps psycopg.connect only
            assert "SELECT 44" in [_statement(s) for s in EXPORTER.get_finished_spans()]
        with stagetrace.capture() as got, stagetrace.timeline("job"):
            query("SELECT 45")
    finally:
        stagetrace.dbapi.uninstrument()
    kinds = [s.kind for s in got[0].stages]
    assert kinds.count("db.connect") == 1, kinds
    assert kinds.count("db.query") == 1, kinds


def test_a_wrapper_between_opentelemetrys_and_psycopg_connect_is_never_cut_out(
    pg, psycopg_instrumented, request
):
    """An application's own wrapt wrapper around ``psycopg.connect``, then OpenTelemetry's
    around it: stagetrace.dbapi installed afterwards does not go beneath OpenTelemetry's (it
    would cut the application's out); the application's wrapper still runs."""
    import psycopg
    import wrapt
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    import stagetrace.dbapi

    PsycopgInstrumentor().uninstrument()
    calls: list[str] = []

    def audit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append("connect")
        return wrapped(*args, **kwargs)

    before = psycopg.connect
    wrapt.wrap_function_wrapper(psycopg, "connect", audit)
    PsycopgInstrumentor().instrument(tracer_provider=PROVIDER)
    request.getfixturevalue("sql_integrations_start_unpatched")
    stagetrace.dbapi.instrument()
    try:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as conn:
            conn.cursor().execute("SELECT 47")
    finally:
        stagetrace.dbapi.uninstrument()
        PsycopgInstrumentor().uninstrument()
        psycopg.connect = before
    assert calls == ["connect"]


@pytest.mark.parametrize("first_off", ["opentelemetry", "stagetrace"])
def test_either_uninstrument_order_leaves_psycopg_connect_working(pg, request, first_off):
    """OpenTelemetry's psycopg instrumentation, then stagetrace.dbapi beneath its wrapper of
    ``psycopg.connect``; both undone in either order: ``psycopg.connect`` still connects, and
    neither records anything any more."""
    import psycopg
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    import stagetrace.dbapi

    request.getfixturevalue("sql_integrations_start_unpatched")
    PsycopgInstrumentor().instrument(tracer_provider=PROVIDER)
    stagetrace.dbapi.instrument()
    if first_off == "opentelemetry":
        PsycopgInstrumentor().uninstrument()
        stagetrace.dbapi.uninstrument()
    else:
        stagetrace.dbapi.uninstrument()
        PsycopgInstrumentor().uninstrument()
    EXPORTER.clear()
    conninfo = "host=127.0.0.1 user=postgres dbname=test"
    with (
        stagetrace.capture() as got,
        stagetrace.timeline("job"),
        psycopg.connect(conninfo) as conn,
    ):
        assert conn.cursor().execute("SELECT 46").fetchone() == (46,)
    assert [s.kind for s in got[0].stages] == ["task"]
    assert EXPORTER.get_finished_spans() == ()


# --- FastAPI -----------------------------------------------------------------------------


def _fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return app


def _asgi_get(app: Any, url: str, headers: dict[str, str] | None = None) -> Any:
    import httpx

    async def run() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get(url, headers=headers)

    EXPORTER.clear()
    with stagetrace.capture() as got:
        response = asyncio.run(run())
    stagetrace.flush()
    assert response.status_code == 200
    return got[0], EXPORTER.get_finished_spans(), response


def test_fastapi_instrumentor_spans_nest_in_the_timeline():
    """FastAPI + FastAPIInstrumentor (OpenTelemetry's ASGI middleware inside the app, below
    stagetrace's gateway): its request span is INTERNAL, all its spans in the timeline's
    trace, none orphaned; an incoming traceparent is the timeline's parent."""
    pytest.importorskip("opentelemetry.instrumentation.fastapi")
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    import stagetrace.starlette

    stagetrace.starlette.instrument()
    app = _fastapi_app()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=PROVIDER)
    stagetrace.configure(**exporting(), otel_context=True)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        tl, spans, _ = _asgi_get(app, "/items/3", {"traceparent": parent})
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
        stagetrace.starlette.uninstrument()
    assert tl.trace_id == "0af7651916cd43dd8448eb211c80319c"
    _coherent(tl, spans)
    (server,) = [s for s in spans if s.name == "GET /items/{item_id}"]
    assert server.kind == SpanKind.INTERNAL
    assert _stage_of(tl, server.parent.span_id).kind in ("gateway", "middleware")


def test_opentelemetry_asgi_middleware_outside_stagetrace_is_the_timelines_parent():
    """OpenTelemetry's ASGI middleware wrapped OUTSIDE stagetrace's ASGI middleware: its SERVER
    span stays the trace's entry (child of the incoming traceparent) and the timeline is its
    child in the same trace."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from stagetrace.asgi import StagetraceMiddleware

    app = OpenTelemetryMiddleware(StagetraceMiddleware(_fastapi_app()), tracer_provider=PROVIDER)
    ours = _ours()
    stagetrace.configure(sinks=["otel"], tracer_provider=ours, otel_context=True)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tl, spans, _ = _asgi_get(app, "/items/3", {"traceparent": parent})
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert f"{server.parent.span_id:016x}" == "b7ad6b7169203331"
    assert tl.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert tl.parent_span_id == f"{server.context.span_id:016x}"
    _root_is_an_internal_child_of(ours, tl, server)


def _ours() -> Any:
    """A provider of stagetrace's own spans, kept apart from OpenTelemetry's (PROVIDER)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return provider


def _root_is_an_internal_child_of(provider: Any, tl: stagetrace.Timeline, entry: Any) -> None:
    """stagetrace's exported root span: INTERNAL, a local (not remote) child of `entry`, the
    one SERVER span of the request."""
    stagetrace.flush()
    exporter = provider._active_span_processor._span_processors[0].span_exporter
    (root,) = [s for s in exporter.get_finished_spans() if s.context.span_id == int(tl.span_id, 16)]
    assert root.kind == SpanKind.INTERNAL, root.kind
    assert root.parent.span_id == entry.context.span_id
    assert root.parent.is_remote is False
    assert not tl.parent_is_remote
    servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert servers == [], [s.name for s in servers]


def test_fastapi_native_telemetry_is_the_entry_and_the_timeline_its_internal_child():
    """FastAPI's own OpenTelemetry telemetry (newer FastAPI releases; on by default with a
    provider) opens the request's SERVER span in ``FastAPI.__call__``, outside stagetrace's
    gateway: stagetrace's root is its INTERNAL child — one server span per request, not two —
    and an incoming traceparent stays the trace's parent."""
    from fastapi import FastAPI

    import stagetrace.starlette

    try:
        app = FastAPI(telemetry={"tracer_provider": PROVIDER, "metrics": False})
    except TypeError:
        pytest.skip("this FastAPI has no native telemetry")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    stagetrace.starlette.instrument()
    ours = _ours()
    stagetrace.configure(sinks=["otel"], tracer_provider=ours, otel_context=True)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    state = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"
    try:
        tl, spans, _ = _asgi_get(app, "/items/3", {"traceparent": parent, "tracestate": state})
    finally:
        stagetrace.starlette.uninstrument()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert f"{server.parent.span_id:016x}" == "b7ad6b7169203331"
    assert tl.trace_id == "0af7651916cd43dd8448eb211c80319c"
    _root_is_an_internal_child_of(ours, tl, server)
    # Written as JSON (schema @3), the timeline names its local parent and reads back equal:
    # the tracestate taken from OpenTelemetry's span is normalized as an incoming header's.
    data = tl.to_dict()
    assert data["parent_span_id"] == f"{server.context.span_id:016x}"
    assert data["parent_is_remote"] is False
    assert data["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert stagetrace.Timeline.from_dict(json.loads(json.dumps(data))) == tl


def test_a_failing_recorder_in_the_suppression_check_never_breaks_the_query(
    otel_django, psycopg_instrumented, monkeypatch
):
    """The suppression object's check calls the recorder inside OpenTelemetry's DB wrapper:
    if it fails, the failure is counted, OpenTelemetry records the query as usual, and the
    response is unchanged."""
    from stagetrace import _recorder

    def broken() -> None:
        raise RuntimeError("injected")

    stagetrace.configure(**exporting(), otel_context=True)
    monkeypatch.setattr(_recorder, "current_kind", broken)
    tl, spans = _django_get("/pg/")
    assert any(s.kind == "db.query" for s in tl.stages)
    assert "SELECT 1" in [_statement(s) for s in spans if s.kind == SpanKind.CLIENT]
    assert json.loads(Client().get("/pg/").content) == {"row": [2]}
    assert stagetrace.stats()["internal_errors"] >= 1
    assert "otel.suppress" in stagetrace.stats()["internal_errors_by_site"]


# --- requests and httpx ------------------------------------------------------------------


def _outbound_view(request: Any) -> JsonResponse:
    """One call to ``?url=`` with the library ``?with=`` (requests or httpx)."""
    import httpx
    import requests

    url = request.GET["url"]
    if request.GET["with"] == "requests":
        requests.get(url, timeout=5)
    else:
        httpx.get(url)
    return JsonResponse({"ok": True})


urlpatterns.append(path("outbound/", _outbound_view))

#: OpenTelemetry's instrumentation of each HTTP client library.
INSTRUMENTORS = {
    "requests": ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    "httpx": ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
}


def _instrumentor(library: str) -> Any:
    module, name = INSTRUMENTORS[library]
    return getattr(pytest.importorskip(module), name)()


@pytest.fixture
def httpclients() -> Iterator[Any]:
    """`stagetrace.httpclients` uninstalled, for the test to install when it wants (the
    adapters other tests instrumented are counted back in afterwards)."""
    from stagetrace import httpclients as module

    others = module._users
    for _ in range(others):
        module.uninstall()
    try:
        yield module
    finally:
        while module._users:
            module.uninstall()
        for _ in range(others):
            module.install()


@pytest.mark.parametrize("first", ["opentelemetry", "stagetrace"])
@pytest.mark.parametrize("library", ["requests", "httpx"])
def test_opentelemetrys_http_client_span_is_a_child_of_the_http_client_stage(
    httpclients, library, first
):
    """OpenTelemetry's requests or httpx instrumentation, installed before or after
    stagetrace's: one trace, its CLIENT span a child of the ``http.client`` stage (not a
    second client span beside it), and its header is the one the called service gets.
    requests' instrumentation wraps ``Session.send`` as stagetrace does: installed last, it
    used to wrap stagetrace's wrapper and make its span a sibling of the stage."""
    from tests.servers import http_target

    instrumentor = _instrumentor(library)
    if first == "stagetrace":
        httpclients.install()
    instrumentor.instrument(tracer_provider=PROVIDER)
    if first == "opentelemetry":
        httpclients.install()
    stagetrace.configure(**exporting(), otel_context=True)
    received: list[dict[str, str]] = []
    try:
        with http_target(received) as url, override_settings(ROOT_URLCONF=__name__):
            tl, spans = _django_get(f"/outbound/?with={library}&url={url}/x")
    finally:
        instrumentor.uninstrument()
    _coherent(tl, spans)
    (call,) = [s for s in tl.stages if s.kind == "http.client"]
    (client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert f"{client.parent.span_id:016x}" == tl.stage_span_id(call.id)
    (sent,) = received
    assert sent["traceparent"] == f"00-{tl.trace_id}-{client.context.span_id:016x}-01"


@pytest.mark.parametrize("first_off", ["opentelemetry", "stagetrace"])
@pytest.mark.parametrize("first_on", ["opentelemetry", "stagetrace"])
def test_either_order_leaves_requests_session_send_as_it_was(httpclients, first_on, first_off):
    """OpenTelemetry's requests instrumentation and stagetrace's, on and off in any order:
    ``Session.send`` is requests' own again, and neither records anything any more."""
    import requests

    from tests.servers import http_target

    instrumentor = _instrumentor("requests")
    original = requests.Session.send
    on = {"opentelemetry": lambda: instrumentor.instrument(tracer_provider=PROVIDER)}
    on["stagetrace"] = httpclients.install
    off = {"opentelemetry": instrumentor.uninstrument, "stagetrace": httpclients.uninstall}
    second = {"opentelemetry": "stagetrace", "stagetrace": "opentelemetry"}
    on[first_on]()
    on[second[first_on]]()
    off[first_off]()
    off[second[first_off]]()
    assert requests.Session.send is original
    EXPORTER.clear()
    with http_target() as url, stagetrace.capture() as got, stagetrace.timeline("job"):
        requests.get(url, timeout=5)
    assert [s.kind for s in got[0].stages] == ["task"]
    assert EXPORTER.get_finished_spans() == ()
