"""The Server-Timing response header (option ``server_timing``) on a real Django app (test
client, WSGI and ASGI handlers) and a real FastAPI app (httpx's ASGI transport): present and
parseable when on, values plausible against the recorded timeline, absent when off, after the
application's own Server-Timing value, on by default under Django's DEBUG."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import pytest

pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")

import django

django.setup()

from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

import stagetrace  # noqa: E402

_ENTRY = re.compile(r'^([A-Za-z0-9_-]+)(?:;dur=([0-9.]+))?(?:;desc=(?:"([^"]*)"|([^;,"]+)))?$')


def parse(value: str) -> dict[str, tuple[float, str | None]]:
    """A Server-Timing value as {name: (dur ms, desc)}; fails on anything malformed."""
    out: dict[str, tuple[float, str | None]] = {}
    for part in value.split(","):
        m = _ENTRY.match(part.strip())
        assert m, f"malformed Server-Timing entry {part!r}"
        out[m.group(1)] = (float(m.group(2) or 0), m.group(3) or m.group(4))
    return out


def db_view(request: Any) -> JsonResponse:
    from django.db import connection

    with connection.cursor() as cursor:
        for _ in range(3):
            cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})


def own_header_view(request: Any) -> HttpResponse:
    response = HttpResponse("hi")
    response["Server-Timing"] = 'app;dur=7;desc="mine"'
    return response


#: One response object served to every request (a module-level response, a per-process cache).
SHARED = HttpResponse("shared")
SHARED["Server-Timing"] = 'app;desc="first"'


def shared_view(request: Any) -> HttpResponse:
    """Serves the shared response; with ``?v=``, sets the app's own Server-Timing on it first."""
    if "v" in request.GET:
        SHARED["Server-Timing"] = f'app;desc="{request.GET["v"]}"'
    return SHARED


urlpatterns = [path("db/", db_view), path("own/", own_header_view), path("shared/", shared_view)]


def _django(url: str) -> tuple[Any, stagetrace.Timeline]:
    with override_settings(ROOT_URLCONF=__name__), stagetrace.capture() as got:
        response = Client().get(url)
    stagetrace.flush()
    assert response.status_code == 200
    return response, got[0]


def _ms(tl: stagetrace.Timeline, kind: str) -> float:
    return sum(s.self_ns for s in tl.stages if s.kind == kind) / 1e6


def test_django_response_has_per_kind_totals():
    """With server_timing on, a Django response carries db, mw, view and total entries; db
    counts the three queries; each value is at most the timeline's own self time for that
    kind plus a little (the header is computed just before the response goes out), and the
    entries add up to no more than total."""
    stagetrace.configure(server_timing=True)
    response, tl = _django("/db/")
    timing = parse(response["Server-Timing"])
    assert {"db", "mw", "view", "total"} <= set(timing)
    assert timing["db"][1] == "n=3"
    for name, kind in (("db", "db.query"), ("view", "view")):
        assert 0 < timing[name][0] <= _ms(tl, kind) + 0.05, (name, timing, _ms(tl, kind))
    total = timing["total"][0]
    assert sum(d for n, (d, _) in timing.items() if n != "total") <= total + 0.05
    assert 0 < total <= tl.duration_ns / 1e6


def test_off_by_default_outside_debug():
    """Without the option (DEBUG is False in the test project), no header."""
    response, _ = _django("/db/")
    assert not response.has_header("Server-Timing")


def test_on_by_default_under_debug():
    """Under DEBUG, the Django adapter proposes server_timing (like the console sink); an
    explicit False wins."""
    from stagetrace.django._install import load_settings

    with override_settings(DEBUG=True):
        stagetrace.reset()
        load_settings()
        assert stagetrace.settings().server_timing is True
        stagetrace.configure(server_timing=False, sinks=[])
        assert stagetrace.settings().server_timing is False
    stagetrace.reset()
    load_settings()
    assert stagetrace.settings().server_timing is False


def test_django_appends_to_the_apps_own_header():
    """An application's own Server-Timing value is kept, first; ours follows it."""
    stagetrace.configure(server_timing=True)
    response, _ = _django("/own/")
    value = response["Server-Timing"]
    assert value.startswith('app;dur=7;desc="mine", ')
    assert "total" in parse(value)


def test_a_reused_response_keeps_the_value_the_app_set_for_this_request():
    """A response object served more than once carries, each time, the Server-Timing value the
    application set on it for that request, then this request's totals only: a value the
    application changed between requests is not replaced by the one it had the first time, and
    one it left alone is not followed by the totals of earlier requests."""
    stagetrace.configure(server_timing=True)
    values = []
    for url in ("/shared/", "/shared/?v=second", "/shared/", "/shared/?v=third"):
        response, _ = _django(url)
        values.append(response["Server-Timing"])
    expected = ["first", "second", "second", "third"]
    for value, app in zip(values, expected, strict=True):
        assert value.startswith(f'app;desc="{app}", '), (values, expected)
        timing = parse(value)
        assert value.count("total;dur=") == 1 and "total" in timing, value


def test_django_asgi_handler_adds_the_header():
    """Django's ASGI handler: the header is in the http.response.start message."""
    from django.core.handlers.asgi import ASGIHandler

    stagetrace.configure(server_timing=True)
    sent: list[dict[str, Any]] = []

    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(5)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/db/",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }
    with override_settings(ROOT_URLCONF=__name__):
        asyncio.run(ASGIHandler()(scope, receive, send))
    headers = dict(sent[0]["headers"])
    assert "db" in parse(headers[b"Server-Timing"].decode())


# --- FastAPI -------------------------------------------------------------------------------


def _fastapi_get(url: str) -> tuple[Any, stagetrace.Timeline]:
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse, StreamingResponse

    import stagetrace.starlette

    app = FastAPI()

    @app.get("/work")
    def work() -> dict[str, int]:
        with stagetrace.stage("compute"):
            sum(range(20000))
        return {"ok": 1}

    @app.get("/own")
    def own() -> PlainTextResponse:
        return PlainTextResponse("x", headers={"Server-Timing": "cache;desc=hit"})

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]))

    async def run() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(url)

    stagetrace.starlette.instrument()
    try:
        with stagetrace.capture() as got:
            response = asyncio.run(run())
        stagetrace.flush()
    finally:
        stagetrace.starlette.uninstrument()
    assert response.status_code == 200
    return response, got[0]


def test_fastapi_response_has_per_kind_totals():
    """FastAPI through the ASGI gateway: view, custom and total entries, plausible against
    the timeline, the whole no longer than the request."""
    stagetrace.configure(server_timing=True)
    response, tl = _fastapi_get("/work")
    timing = parse(response.headers["server-timing"])
    assert {"view", "custom", "total"} <= set(timing)
    assert 0 < timing["custom"][0] <= _ms(tl, "custom") + 0.05
    assert timing["total"][0] <= tl.duration_ns / 1e6


def test_fastapi_off_and_appended():
    """Off: no header. On, with the app's own header: one header, the app's value first."""
    response, _ = _fastapi_get("/work")
    assert "server-timing" not in response.headers
    stagetrace.configure(server_timing=True)
    response, _ = _fastapi_get("/own")
    values = response.headers.get_list("server-timing")
    assert len(values) == 1 and values[0].startswith("cache;desc=hit, ")
    assert "total" in parse(values[0])


def test_fastapi_streaming_response_gets_the_totals_before_the_body():
    """A streamed response gets the header with the response start: totals up to then."""
    stagetrace.configure(server_timing=True)
    response, tl = _fastapi_get("/stream")
    assert response.content == b"ab"
    assert parse(response.headers["server-timing"])["total"][0] <= tl.duration_ns / 1e6


# --- WSGI: the generic middleware and Flask --------------------------------------------------


def _wsgi_call(app: Any, path: str = "/") -> tuple[list[tuple[str, str]], bytes]:
    """Call a WSGI app as a server does: start_response, iterate the body, close it."""
    from io import BytesIO

    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
        seen.append(headers)
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": BytesIO(),
        "wsgi.errors": BytesIO(),
    }
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return seen[0], body


def _wsgi_app(own: str | None = None) -> Any:
    import time

    def app(environ: Any, start_response: Any) -> list[bytes]:
        with stagetrace.stage("work"):
            time.sleep(0.002)
        headers = [("Content-Type", "text/plain")]
        if own is not None:
            headers.append(("Server-Timing", own))
        start_response("200 OK", headers)
        return [b"ok"]

    return app


def test_wsgi_middleware_adds_the_header_after_the_apps_own():
    """The generic WSGI middleware: off by default; on, one Server-Timing header with the
    app's value first, then stagetrace's, whose `custom` entry covers the stage the app ran
    and whose total is no longer than the request."""
    from stagetrace.wsgi import StagetraceMiddleware

    headers, _ = _wsgi_call(StagetraceMiddleware(_wsgi_app()))
    assert not [v for k, v in headers if k.lower() == "server-timing"]

    stagetrace.configure(server_timing=True)
    with stagetrace.capture() as got:
        headers, body = _wsgi_call(StagetraceMiddleware(_wsgi_app('app;dur=7;desc="mine"')))
    stagetrace.flush()
    assert body == b"ok"
    values = [v for k, v in headers if k.lower() == "server-timing"]
    assert len(values) == 1 and values[0].startswith('app;dur=7;desc="mine", ')
    timing = parse(values[0])
    assert 2.0 <= timing["custom"][0] <= _ms(got[0], "custom") + 0.05
    assert timing["total"][0] <= got[0].duration_ns / 1e6


def test_flask_response_has_per_kind_totals():
    """Flask through its adapter (`stagetrace.flask.instrument()`): the header carries the
    view's and the custom stage's self times and the total."""
    flask = pytest.importorskip("flask")
    import time

    import stagetrace.flask

    stagetrace.configure(server_timing=True)
    stagetrace.flask.instrument()
    try:
        app = flask.Flask("timing")

        @app.get("/work")
        def work() -> str:
            with stagetrace.stage("work"):
                time.sleep(0.002)
            return "ok"

        with stagetrace.capture() as got:
            response = app.test_client().get("/work")
            response.close()
        stagetrace.flush()
    finally:
        stagetrace.flask.uninstrument()
    assert response.status_code == 200
    timing = parse(response.headers["Server-Timing"])
    assert {"view", "custom", "total"} <= set(timing)
    assert 2.0 <= timing["custom"][0] <= _ms(got[0], "custom") + 0.05
    assert timing["total"][0] <= got[0].duration_ns / 1e6


def test_django_inside_a_generic_middleware_gets_one_set_of_totals():
    """Django's handler wrapped in stagetrace's generic WSGI or ASGI middleware (or mounted in
    an instrumented Starlette app): the outer gateway records the request and adds the header,
    so the response carries one set of totals — Django's adapter added a second one before it
    (``mw``, ``route``, ``db``, ``total`` twice)."""
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from stagetrace.asgi import StagetraceMiddleware as ASGIMiddleware
    from stagetrace.wsgi import StagetraceMiddleware as WSGIMiddleware

    stagetrace.configure(server_timing=True)
    with override_settings(ROOT_URLCONF=__name__):
        headers, _ = _wsgi_call(WSGIMiddleware(WSGIHandler()), "/db/")
        wsgi_values = [v for k, v in headers if k.lower() == "server-timing"]

        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(5)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/db/",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "http",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 1234),
            "root_path": "",
        }
        asyncio.run(ASGIMiddleware(ASGIHandler())(scope, receive, send))
    asgi_values = [v.decode() for k, v in sent[0]["headers"] if k.lower() == b"server-timing"]
    for values in (wsgi_values, asgi_values):
        assert len(values) == 1, values
        assert values[0].count("total;dur=") == 1, values
        assert values[0].count("db;dur=") == 1, values
