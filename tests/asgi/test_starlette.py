"""Starlette apps: mounts, endpoints, exception handlers, per-app instrumentation, undo."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.testclient import TestClient

import stagetrace.starlette
from stagetrace.starlette import patcher

from .conftest import assert_nested, named

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
DONE: list[str] = []


class Pass(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        return await call_next(request)


class Users(HTTPEndpoint):
    async def get(self, request):
        return JSONResponse({"user": request.path_params["user_id"]})


async def teapot(request):
    raise HTTPException(status_code=418, detail="short and stout")


async def page(request):
    return templates.TemplateResponse(request, "list.html", {"items": [1, 2]})


async def with_task(request):
    return PlainTextResponse("ok", background=BackgroundTask(DONE.append, "done"))


async def on_teapot(request, exc):
    return PlainTextResponse("handled", status_code=exc.status_code)


def make_app() -> Starlette:
    api = Starlette(routes=[Route("/users/{user_id:int}", Users)])
    return Starlette(
        routes=[
            Mount("/v1", routes=[Mount("/admin", routes=[Route("/teapot", teapot)])]),
            Mount("/api", app=api),
            Mount("/static", app=StaticFiles(directory=HERE / "templates"), name="static"),
            Route("/page", page),
            Route("/task", with_task),
            Route("/json", lambda request: JSONResponse({"a": 1})),
        ],
        middleware=[Middleware(Pass)],
        exception_handlers={418: on_teapot},
    )


def test_mount_prefixes_join_into_the_route_template(instrumented, captured):
    """Nested Mounts, a mounted sub-app and a static mount give joined templates."""
    client = TestClient(make_app())
    assert client.get("/v1/admin/teapot").status_code == 418
    assert client.get("/api/users/7").json() == {"user": 7}
    assert client.get("/static/row.html").status_code == 200
    assert [tl.route for tl in captured] == [
        "/v1/admin/teapot",
        "/api/users/{user_id}",
        "/static/{path}",
    ]
    assert [tl.framework for tl in captured] == ["starlette"] * 3


class Outermost:
    """A pure ASGI middleware."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


class Inner(Outermost):
    pass


async def slow(request):
    await asyncio.sleep(0.01)
    return JSONResponse({"n": request.path_params["n"]})


def test_a_mounted_app_runs_after_the_route_stage_that_hands_over_to_it(instrumented, captured):
    """Mount("/api", app=an app with its own middleware): routing ends where the outer router
    hands the request over to the mounted app (route stage ``/api/{path}``), whose middleware
    follows under the same parent; its own routing is a route stage of its own, with the
    joined template. Every stage ends within its parent, and the endpoint's time is counted
    once (it was also the outer middleware's, the mounted app's stages being children of a
    route stage that had ended)."""
    api = Starlette(routes=[Route("/slow/{n:int}", slow)], middleware=[Middleware(Inner)])
    app = Starlette(routes=[Mount("/api", app=api)], middleware=[Middleware(Outermost)])
    assert TestClient(app).get("/api/slow/3").json() == {"n": 3}
    (tl,) = captured
    assert_nested(tl)
    assert tl.route == "/api/slow/{n}"
    outer, inner = named(tl, "route")
    assert (outer.name, inner.name) == ("/api/{path}", "/api/slow/{n}")
    by_id = {s.id: s for s in tl.stages}
    handing_over = by_id[outer.parent]
    assert handing_over.name == "starlette.middleware.exceptions.ExceptionMiddleware"
    mounted = [s for s in tl.stages if s.parent == handing_over.id and s is not outer]
    assert [s.name for s in mounted] == ["starlette.middleware.errors.ServerErrorMiddleware"]
    assert mounted[0].start_ns >= outer.start_ns + outer.duration_ns
    (view,) = named(tl, "view")
    assert view.parent == inner.parent
    assert by_id[view.parent].name == "starlette.middleware.exceptions.ExceptionMiddleware"
    assert by_id[view.parent] is not handing_over
    assert f"{__name__}.Inner" in [s.name for s in named(tl, "middleware")]
    assert not any(s.short_circuit for s in named(tl, "middleware"))


@pytest.mark.parametrize("layer", ["middleware", "max_body_size"])
def test_a_router_behind_a_mounts_own_layers_keeps_the_mounts_prefix(instrumented, captured, layer):
    """Mount(routes=..., middleware=... or max_body_size=...): the mount's router sits behind
    the mount's own layers, and its templates still start with the mount's prefix."""
    import inspect

    if layer not in inspect.signature(Mount).parameters:
        pytest.skip(f"this Starlette's Mount takes no {layer}=")
    own = {"middleware": [Middleware(Pass)]} if layer == "middleware" else {layer: 1024}
    app = Starlette(
        routes=[Mount("/limited", routes=[Route("/teapot", teapot)], **own)],
        exception_handlers={418: on_teapot},
    )
    assert TestClient(app).get("/limited/teapot").status_code == 418
    assert [tl.route for tl in captured] == ["/limited/teapot"]
    assert [s.name for s in named(captured[0], "route")] == ["/limited/{path}", "/limited/teapot"]


def test_http_endpoint_named_by_class_and_method(instrumented, captured):
    TestClient(make_app()).get("/api/users/3")
    assert named(captured[0], "view")[0].name == "tests.asgi.test_starlette.Users.get"


def test_exception_turned_into_a_response_is_still_on_the_endpoint(instrumented, captured):
    """An exception handler answers 418; the endpoint's stage carries the HTTPException."""
    response = TestClient(make_app()).get("/v1/admin/teapot")
    assert response.text == "handled"
    (view,) = named(captured[0], "view")
    assert view.name == "tests.asgi.test_starlette.teapot"
    assert view.error.type == "starlette.exceptions.HTTPException"
    assert captured[0].status == 418


def test_json_render_template_and_background_task(instrumented, captured):
    client = TestClient(make_app())
    client.get("/json")
    client.get("/page")
    DONE.clear()
    client.get("/task")
    json_tl, page_tl, task_tl = captured
    assert [s.name for s in named(json_tl, "serialize")] == ["JSONResponse.render"]
    assert [t.name for t in named(page_tl, "template")] == ["list.html", "row.html", "row.html"]
    assert DONE == ["done"]
    (task,) = named(task_tl, "task")
    assert task.name == "list.append" or task.name.endswith("append")


def test_instrument_app_records_only_that_app(captured):
    """instrument_app(app) leaves other apps alone."""
    mine, other = make_app(), make_app()
    stagetrace.starlette.instrument_app(mine)
    try:
        TestClient(mine).get("/json")
        TestClient(other).get("/json")
    finally:
        stagetrace.starlette.uninstrument()
    assert len(captured) == 1
    assert [s.kind for s in captured[0].stages].count("middleware") >= 3


class ComparedApp(Starlette):
    """An app class defining ``__eq__`` (which makes its instances unhashable)."""

    def __eq__(self, other: object) -> bool:
        return self is other


def test_instrument_app_takes_an_app_that_cannot_be_hashed(captured):
    """instrument_app(app) on an unhashable app records it, and another app's requests are
    served and not recorded (asking whether an app was instrumented used to raise TypeError
    out of every request of every app)."""
    mine = ComparedApp(routes=[Route("/json", lambda request: JSONResponse({"a": 1}))])
    other = ComparedApp(routes=[Route("/json", lambda request: JSONResponse({"a": 1}))])
    stagetrace.starlette.instrument_app(mine)
    try:
        assert TestClient(mine).get("/json").json() == {"a": 1}
        assert TestClient(other).get("/json").json() == {"a": 1}
    finally:
        stagetrace.starlette.uninstrument()
    assert [tl.route for tl in captured] == ["/json"]


def test_app_started_before_instrument_gets_its_middleware_recorded(captured):
    """An app whose middleware stack was built before instrument() has its layers found where
    they are (by their ``app`` attributes) and recorded."""
    app = make_app()
    TestClient(app).get("/json")  # builds the stack, not recorded
    assert captured == []
    stagetrace.starlette.instrument()
    try:
        TestClient(app).get("/json")
    finally:
        stagetrace.starlette.uninstrument()
    names = [s.name for s in captured[0].stages if s.kind == "middleware"]
    assert "tests.asgi.test_starlette.Pass" in names


class OwnStackApp(Starlette):
    """An app class building its stack its own way: a layer around Starlette's stack that no
    ``Middleware`` entry names."""

    def build_middleware_stack(self):
        return Outermost(super().build_middleware_stack())


def test_an_app_class_building_its_own_stack_has_every_layer_recorded_from_the_first_request(
    instrumented, captured
):
    """The stack is built on the first request (no lifespan), by the app class's own
    ``build_middleware_stack``: that request, like the next, records every layer."""
    app = OwnStackApp(
        routes=[Route("/json", lambda request: JSONResponse({"a": 1}))],
        middleware=[Middleware(Pass)],
    )
    client = TestClient(app)
    for _ in range(2):
        assert client.get("/json").json() == {"a": 1}
    first, second = ([s.name for s in named(tl, "middleware")] for tl in captured)
    assert first == second
    assert first[:3] == [
        f"{__name__}.Outermost",
        "starlette.middleware.errors.ServerErrorMiddleware",
        f"{__name__}.Pass",
    ]


def test_an_app_that_is_gone_is_forgotten_so_a_new_one_at_its_address_is_walked(captured):
    """Which apps' prebuilt stacks were looked at is kept by id (asked on every request): an
    app's id leaves that record when the app is collected, so a new app that Python puts at the
    same address, its stack also built before instrumentation, still gets its middleware
    recorded."""
    import gc

    from stagetrace.starlette import _install

    app = make_app()
    TestClient(app).get("/json")  # stack built, not instrumented
    stagetrace.starlette.instrument_app(app)
    try:
        TestClient(app).get("/json")
        key = id(app)
        assert key in _install._walked.ids
    finally:
        stagetrace.starlette.uninstrument()
    del app
    gc.collect()
    assert key not in _install._walked.ids
    # A stale id would now skip the walk of any new app at that address: simulate that app.
    later = make_app()
    TestClient(later).get("/json")  # stack built, not instrumented
    _install._walked.ids.pop(id(later), None)
    stagetrace.starlette.instrument_app(later)
    try:
        TestClient(later).get("/json")
    finally:
        stagetrace.starlette.uninstrument()
    names = [s.name for s in captured[-1].stages if s.kind == "middleware"]
    assert "tests.asgi.test_starlette.Pass" in names


def test_uninstrument_restores_every_patched_attribute(captured):
    """uninstrument() puts every original back; proxies left in built stacks go quiet."""
    stagetrace.starlette.instrument()
    app = make_app()
    TestClient(app).get("/json")
    applied = [(o, a, orig, had) for o, a, orig, had, _ in patcher.patches()]
    assert len(applied) >= 10
    stagetrace.starlette.uninstrument()
    for owner, attr, original, had_own in applied:
        if had_own:
            assert vars(owner)[attr] is original, (owner, attr)
        else:
            assert attr not in vars(owner), (owner, attr)
    captured.clear()
    assert TestClient(app).get("/json").json() == {"a": 1}
    assert captured == []


async def test_lifespan_shutdown_delivers_without_freezing_the_event_loop(instrumented):
    """At the app's lifespan shutdown stagetrace delivers what is queued (uvicorn's re-raised
    SIGTERM skips exit handlers) — waiting in a thread: with the collector unreachable the
    wait lasts the flush deadline, and the event loop's other tasks run meanwhile."""
    import asyncio
    import itertools
    import socket
    import time

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import stagetrace

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stagetrace.configure(
        sinks=["otel"], otlp_endpoint=f"http://127.0.0.1:{port}", otel_flush_timeout=1.0
    )

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", hello)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/")).text == "ok"
    messages: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        await messages.put({"type": kind})
    sent: list[str] = []

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    ticker = asyncio.create_task(tick())
    t0 = time.monotonic()
    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, send)
    took = time.monotonic() - t0
    ticker.cancel()
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert 0.5 < took < 3  # it waited for the collector, up to the deadline
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 10 and max(gaps) < 0.3, f"the event loop stood still: {ticks}"


def _our_frames(tb) -> list[str]:
    """The wrappers of this adapter a traceback passed through, the app's gateway aside."""
    import traceback

    out = []
    for frame, _ in traceback.walk_tb(tb):
        code = frame.f_code
        qualname = getattr(code, "co_qualname", code.co_name)
        ours = code.co_filename.endswith(("starlette/_install.py", "starlette\\_install.py"))
        if ours and not qualname.startswith("_app_call"):
            out.append(qualname)
    return out


class Boom(Exception):
    pass


async def boom(request):
    raise Boom("from the endpoint")


class Marker:
    """A pure ASGI middleware with a coroutine ``__call__``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


def test_patched_asgi_methods_stay_coroutine_functions(instrumented):
    """Every wrapped ASGI method (a middleware's ``__call__``, the router's, a route's
    ``handle``) is still a coroutine function to ``inspect`` and ``asyncio``, with the
    original's signature — whichever form the wrapper takes on this Python."""
    import asyncio
    import inspect

    from starlette.routing import Router

    app = Starlette(routes=[Route("/boom", boom)], middleware=[Middleware(Marker)])
    TestClient(app, raise_server_exceptions=False).get("/boom")
    for func in (Marker.__call__, Router.__call__, Route.handle, Mount.handle):
        assert getattr(func, "__stagetrace_patch__", False), func
        assert inspect.iscoroutinefunction(func), func
        assert asyncio.iscoroutinefunction(func), func
        assert inspect.signature(func) == inspect.signature(func.__wrapped__)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="inspect.markcoroutinefunction: 3.12+")
def test_an_unrecorded_request_runs_through_none_of_the_wrappers(instrumented):
    """Sampled out, a request's exception passes through the app's own layers only: the
    middleware, router and route wrappers hand out the originals' coroutines (no coroutine of
    ours awaited at every step); recorded, they are in the way, as they must be."""
    app = Starlette(routes=[Route("/boom", boom)], middleware=[Middleware(Marker)])
    seen = []
    for rate in (0.0, 1.0):
        stagetrace.configure(sample_rate=rate, sinks=[])
        client = TestClient(app)
        with pytest.raises(Boom) as info:
            client.get("/boom")
        seen.append(_our_frames(info.value.__traceback__))
    unrecorded, recorded = seen
    assert unrecorded == []
    assert any("_layer_call" in name for name in recorded)
    assert any("_leaf_handle" in name for name in recorded)


def test_each_request_is_sampled_once(instrumented, monkeypatch):
    """The gateway's sampling decision is taken once a request, whether the adapter takes it
    before the app's coroutine exists (Python 3.12+) or inside it: deciding twice would
    record ``sample_rate`` squared of the requests."""
    from stagetrace import _recorder

    calls = []
    real = _recorder.sampled

    def counting(cfg, path):
        calls.append(path)
        return real(cfg, path)

    monkeypatch.setattr(_recorder, "sampled", counting)
    stagetrace.configure(sample_rate=1.0, sinks=[])
    app = Starlette(routes=[Route("/json", lambda request: JSONResponse({"a": 1}))])
    with stagetrace.capture() as got:
        assert TestClient(app).get("/json").json() == {"a": 1}
    assert calls == ["/json"] and len(got) == 1


def test_an_app_called_in_one_context_and_awaited_in_another_leaves_the_caller_alone(
    instrumented,
):
    """asgiref's ApplicationCommunicator calls the app outside the task that awaits it: the
    request is recorded in that task, and the caller's context is left as it was."""
    import asyncio

    from asgiref.testing import ApplicationCommunicator

    from stagetrace import _recorder

    app = Starlette(routes=[Route("/json", lambda request: JSONResponse({"a": 1}))])
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/json",
        "raw_path": b"/json",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "scheme": "http",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
        "root_path": "",
    }

    async def main():
        comm = ApplicationCommunicator(app, scope)
        assert _recorder.current() is None
        await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await comm.receive_output(5)
        body = await comm.receive_output(5)
        await comm.wait(5)
        return start["status"], body["body"], _recorder.current()

    with stagetrace.capture() as got:
        status, body, position = asyncio.run(main())
    assert (status, body, position) == (200, b'{"a":1}', None)
    assert [tl.route for tl in got] == ["/json"]


def test_a_request_the_outer_app_left_out_is_not_sampled_again_in_a_mounted_app(
    instrumented, monkeypatch
):
    """The outer app's gateway decides whether a request is recorded; a mounted app (both
    instrumented) takes no second draw: a request sampled out at the door used to be drawn
    again there, and recorded as a partial timeline of the mounted app (with sample_rate 0.5,
    three requests in four recorded)."""
    from stagetrace import _recorder

    draws: list[str | None] = []

    def first_no_then_yes(cfg, path):
        draws.append(path)
        return len(draws) > 1

    monkeypatch.setattr(_recorder, "sampled", first_no_then_yes)
    stagetrace.configure(sinks=[])
    inner = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("x"))])
    outer = Starlette(routes=[Mount("/api", app=inner)])
    with stagetrace.capture() as got:
        assert TestClient(outer).get("/api/x").text == "x"
    assert got == [] and len(draws) == 1


def test_a_request_the_asgi_middleware_left_out_is_not_sampled_again_by_the_app_inside(
    instrumented, monkeypatch
):
    """Wrapped twice — `StagetraceMiddleware` around an app that `instrument()` covers too —
    a request is drawn once, at the outer gateway: one it samples out runs through the app
    unrecorded. The app's own gateway used to draw again and record it (with sample_rate
    0.5, three requests in four recorded)."""
    from stagetrace import _recorder
    from stagetrace.asgi import StagetraceMiddleware

    draws: list[str | None] = []

    def first_no_then_yes(cfg, path):
        draws.append(path)
        return len(draws) > 1

    monkeypatch.setattr(_recorder, "sampled", first_no_then_yes)
    inner = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("x"))])
    app = StagetraceMiddleware(inner, http_clients=False, sql=False, sinks=[])
    with stagetrace.capture() as got:
        assert TestClient(app).get("/x").text == "x"
    assert got == [] and draws == ["/x"]


def test_a_status_given_as_an_http_status_member_is_recorded_as_its_number(instrumented):
    """Starlette sends a response's ``status_code`` as the app gave it: an ``HTTPStatus``
    member (an ``int`` subclass) from ``Response(status_code=HTTPStatus.CREATED)`` or
    ``HTTPException(HTTPStatus.NOT_FOUND)``. The timeline's status and
    ``http.response.status_code`` are that number, a plain ``int``; they used to be left
    empty, so a 5xx given this way was not an error anywhere."""
    from http import HTTPStatus

    async def created(request):
        return PlainTextResponse("x", status_code=HTTPStatus.CREATED)

    async def unavailable(request):
        raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE)

    app = Starlette(routes=[Route("/created", created), Route("/unavailable", unavailable)])
    client = TestClient(app)
    with stagetrace.capture() as got:
        assert client.get("/created").status_code == 201
        assert client.get("/unavailable").status_code == 503
    assert [tl.status for tl in got] == [201, 503]
    codes = [tl.stages[0].attrs.get("http.response.status_code") for tl in got]
    assert codes == [201, 503] and all(type(code) is int for code in codes)


def test_a_request_the_app_left_out_is_not_sampled_again_by_the_asgi_middleware_inside(
    instrumented, monkeypatch
):
    """The other way round: `StagetraceMiddleware` added to an app `instrument()` covers. The
    app's gateway draws; a request it leaves out runs through the middleware unrecorded. On
    Python 3.12+, where the app hands an unrecorded request its own coroutine, the middleware
    used to draw again and record the rest of the request as a timeline of its own."""
    from stagetrace import _recorder
    from stagetrace.asgi import StagetraceMiddleware

    draws: list[str | None] = []

    def first_no_then_yes(cfg, path):
        draws.append(path)
        return len(draws) > 1

    monkeypatch.setattr(_recorder, "sampled", first_no_then_yes)
    stagetrace.configure(sinks=[])
    app = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("x"))])
    app.add_middleware(StagetraceMiddleware, http_clients=False, sql=False)
    with stagetrace.capture() as got:
        assert TestClient(app).get("/x").text == "x"
    assert got == [] and draws == ["/x"]


def test_an_app_called_in_process_from_an_endpoint_leaves_the_requests_route_alone(
    instrumented, captured
):
    """An endpoint, or a background task after the response, that calls another app in the
    same process (``httpx.ASGITransport``) gets that app's stages inside its own, but the
    timeline's route stays the template that matched the request: the inner app's routing
    used to overwrite it, so ``GET /orders/1`` was reported (and exported) as
    ``/inventory/{sku}``."""
    httpx = pytest.importorskip("httpx")

    async def sku(request):
        return PlainTextResponse("in stock")

    inventory = Starlette(routes=[Route("/inventory/{sku}", sku)])

    async def ask_inventory():
        transport = httpx.ASGITransport(inventory)
        async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
            return (await client.get("/inventory/abc")).text

    async def order(request):
        return JSONResponse({"stock": await ask_inventory()})

    async def refill(request):
        return PlainTextResponse("queued", background=BackgroundTask(ask_inventory))

    app = Starlette(routes=[Route("/orders/{order_id}", order), Route("/refill/{n}", refill)])
    client = TestClient(app)
    assert client.get("/orders/1").json() == {"stock": "in stock"}
    assert client.get("/refill/1").text == "queued"
    assert [tl.route for tl in captured] == ["/orders/{order_id}", "/refill/{n}"]
    assert [s.name for s in named(captured[0], "route")] == [
        "/orders/{order_id}",
        "/inventory/{sku}",
    ]


def test_a_bare_asgi_app_calling_an_instrumented_app_in_process_keeps_its_framework_and_route(
    instrumented, captured
):
    """A hand-written ASGI app under `StagetraceMiddleware` that calls a Starlette app in
    process (``httpx.ASGITransport``): the called app's stages join its timeline, but the
    timeline stays the bare app's — framework ``asgi``, no route. It was relabelled
    ``starlette`` with the called app's route, as if the bare app were that app."""
    httpx = pytest.importorskip("httpx")
    from stagetrace.asgi import StagetraceMiddleware

    inventory = Starlette(routes=[Route("/inventory/{sku}", lambda r: PlainTextResponse("3"))])

    async def bare(scope, receive, send):
        transport = httpx.ASGITransport(inventory)
        async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
            stock = (await client.get("/inventory/abc")).content
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": stock})

    app = StagetraceMiddleware(bare, sql=False)
    assert TestClient(app).get("/orders/1").text == "3"
    (tl,) = captured
    assert (tl.framework, tl.route, tl.path) == ("asgi", None, "/orders/1")
    assert [s.name for s in named(tl, "route")] == ["/inventory/{sku}"]


def test_a_websocket_denied_before_accept_records_the_http_status(instrumented, captured):
    """A websocket endpoint that closes before accepting (an authentication check) denies
    the handshake: the client gets HTTP 403 (the ASGI specification), or the status of a
    denial response (``send_denial_response``). The timeline used to say status 1000 — the
    close code the client never saw — and nothing of the denial."""
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def closes(websocket: WebSocket) -> None:
        await websocket.close()

    async def answers(websocket: WebSocket) -> None:
        await websocket.send_denial_response(PlainTextResponse("no token", status_code=401))

    async def accepts(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(code=4001)

    app = Starlette(
        routes=[
            WebSocketRoute("/closes", closes),
            WebSocketRoute("/answers", answers),
            WebSocketRoute("/accepts", accepts),
        ]
    )
    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/closes"):
        pass
    from starlette.testclient import WebSocketDenialResponse

    with pytest.raises(WebSocketDenialResponse) as denial, client.websocket_connect("/answers"):
        pass
    assert denial.value.status_code == 401
    with client.websocket_connect("/accepts") as ws, pytest.raises(WebSocketDisconnect):
        ws.receive_text()
    closed, answered, accepted = captured
    for tl, status in ((closed, 403), (answered, 401)):
        attrs = tl.stages[0].attrs
        assert tl.protocol == "websocket" and tl.status == status, tl.path
        assert attrs["http.response.status_code"] == status
        assert attrs["websocket.denied"] is True and "websocket.close_code" not in attrs
        assert "websocket.accepted_ns" not in attrs
    attrs = accepted.stages[0].attrs
    assert accepted.status == 4001 and attrs["websocket.close_code"] == 4001
    assert "http.response.status_code" not in attrs and "websocket.denied" not in attrs
