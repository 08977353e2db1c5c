"""Starlette apps: mounts, endpoints, exception handlers, per-app instrumentation, undo."""

from __future__ import annotations

from pathlib import Path

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

from .conftest import named

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


def test_app_started_before_instrument_gets_its_middleware_recorded(captured):
    """An app whose middleware stack was built before instrument() is rebuilt once."""
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
        assert key in _install._walked
    finally:
        stagetrace.starlette.uninstrument()
    del app
    gc.collect()
    assert key not in _install._walked
    # A stale id would now skip the walk of any new app at that address: simulate that app.
    later = make_app()
    TestClient(later).get("/json")  # stack built, not instrumented
    _install._walked.pop(id(later), None)
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
    applied = [(o, a, orig, had) for o, a, orig, had, _ in patcher._undo]
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
