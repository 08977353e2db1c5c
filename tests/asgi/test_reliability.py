"""Regression tests for the ASGI, Starlette and FastAPI defects of issues 7 and 8: each failed on
the code before its fix."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import stagetrace
import stagetrace.starlette
from stagetrace.asgi import StagetraceMiddleware

from ..servers import free_port, read_timelines, serve
from .conftest import assert_nested, descendants, named

SEEN: list[tuple[str, bool, str]] = []


class Inspecting:
    """A pure ASGI middleware that looks at the layer it wraps, as real ones do."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            inner = self.app
            SEEN.append(
                (type(inner).__name__, isinstance(inner, GZipMiddleware), type(inner.app).__name__)
            )
        await self.app(scope, receive, send)


async def hello(request):
    return PlainTextResponse("hello " * 100)


def test_a_middleware_sees_its_real_next_layer(instrumented, captured):
    """A link object between layers used to shadow the wrapped layer's own attributes: an outer
    middleware around GZip saw ('_Link', False, 'GZipMiddleware')."""
    SEEN.clear()
    app = Starlette(
        routes=[Route("/", hello)],
        middleware=[Middleware(Inspecting), Middleware(GZipMiddleware, minimum_size=10)],
    )
    client = TestClient(app)
    assert client.get("/", headers={"accept-encoding": "gzip"}).text.startswith("hello")
    assert SEEN == [("GZipMiddleware", True, "ExceptionMiddleware")]
    (tl,) = captured
    names = [s.name for s in named(tl, "middleware")]
    assert names[1:3] == [
        "tests.asgi.test_reliability.Inspecting",
        "starlette.middleware.gzip.GZipMiddleware",
    ]
    inspecting = named(tl, "middleware", "tests.asgi.test_reliability.Inspecting")[0]
    assert inspecting.phases["in"] > 0 and inspecting.phases["out"] > 0


def test_a_stage_held_across_yield_in_a_sync_streaming_response_closes(instrumented, captured):
    """Starlette runs each next() of a sync iterator in a fresh copy of the context, so a
    `with stage()` around the yields never closed and later stages attached elsewhere."""

    def rows():
        with stagetrace.stage("produce rows"):
            for i in range(3):
                with stagetrace.stage("row"):
                    pass
                yield f"row {i}\n"
        yield "done\n"

    async def stream(request):
        return StreamingResponse(rows())

    client = TestClient(Starlette(routes=[Route("/", stream)]))
    assert client.get("/").text.endswith("done\n")
    (tl,) = captured
    (produce,) = named(tl, "custom", "produce rows")
    assert "unfinished" not in produce.attrs
    rows_ = named(tl, "custom", "row")
    assert len(rows_) == 3 and all(r.parent == produce.id for r in rows_)


@pytest.mark.parametrize("endpoint", ["async", "sync", "gzip"])
def test_a_sync_streamed_bodys_stages_nest_in_the_response_write(instrumented, captured, endpoint):
    """The work producing a streamed body nests in the ``response.write`` stage, for a sync
    iterator as for an async one, so it is counted once — behind GZip too, which holds the
    response start back until the first chunk (that chunk's work comes before the write). A
    sync iterator's stages used to start where the response was built (the view), beside the
    write stage that spans the same time: the generation counted twice, as the write's self
    time and as its own (135 ms of self time in a 72 ms request)."""
    import time

    def rows():
        for i in range(3):
            with stagetrace.stage("row"):
                time.sleep(0.01)
            yield f"row {i}\n"

    async def async_endpoint(request):
        return StreamingResponse(rows())

    def sync_endpoint(request):
        return StreamingResponse(rows())

    endpoints = {"async": async_endpoint, "sync": sync_endpoint, "gzip": async_endpoint}
    layers = [Middleware(GZipMiddleware, minimum_size=1)] if endpoint == "gzip" else []
    app = Starlette(routes=[Route("/", endpoints[endpoint])], middleware=layers)
    client = TestClient(app)
    assert client.get("/", headers={"accept-encoding": "gzip"}).text == "row 0\nrow 1\nrow 2\n"
    (tl,) = captured
    (write,) = named(tl, "response.write")
    rows_ = named(tl, "custom", "row")
    first = 1 if endpoint == "gzip" else 0
    assert len(rows_) == 3 and all(r.parent == write.id for r in rows_[first:])
    assert_nested(tl)


async def test_root_path_is_not_counted_twice(captured):
    """Current servers put root_path inside path already; the ASGI gateway prepended it again
    (/api/api/items) and exclude_paths stopped matching."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = StagetraceMiddleware(app, exclude_paths=["^/api/health$"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    for path in ("/api/items", "/api/health"):
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "/api"}
        await wrapped(scope, receive, send)
    # an older server that left the mount point out of `path`
    await wrapped(
        {"type": "http", "method": "GET", "path": "/items", "root_path": "/api"}, receive, send
    )
    assert [t.path for t in captured] == ["/api/items", "/api/items"]


def test_root_path_under_a_real_uvicorn(tmp_path):
    """`uvicorn --root-path /api`: the recorded path is the request's path, once."""
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    port = free_port()
    jsonl = tmp_path / "t.jsonl"
    (tmp_path / "rootapp.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "import stagetrace.starlette\n"
        "stagetrace.starlette.instrument()\n"
        "app = Starlette(routes=[Route('/items', lambda r: PlainTextResponse('ok')),"
        " Route('/health', lambda r: PlainTextResponse('up'))])\n"
    )
    args = ["uvicorn", "--app-dir", str(tmp_path), "--root-path", "/api", "--port", str(port)]
    env = {"STAGETRACE_JSONL": str(jsonl), "STAGETRACE_EXCLUDE_PATHS": "^/api/health$"}
    # A proxy in front strips /api; uvicorn puts it back into `path` (and `root_path`).
    with serve([*args, "rootapp:app"], env, tmp_path / "log", port) as base:
        assert httpx.get(f"{base}/items").text == "ok"
        assert httpx.get(f"{base}/health").text == "up"
        assert httpx.get(f"{base}/items").text == "ok"
        (first, second) = read_timelines(jsonl, 2)
    assert first["path"] == second["path"] == "/api/items"
    assert first["route"] == "/items"


def test_fastapi_instrumented_after_the_app_exists_records_routing(captured):
    """`app = FastAPI()`, routes added, *then* instrument(): routers built before kept the
    original routing method, so timelines had no route stage and no route."""
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int):
        return {"id": thing_id}

    stagetrace.starlette.instrument()
    try:
        with TestClient(app) as client:
            assert client.get("/things/3").json() == {"id": 3}
    finally:
        stagetrace.starlette.uninstrument()
    (tl,) = captured
    assert tl.route == "/things/{thing_id}"
    (route,) = named(tl, "route")
    assert route.name == "/things/{thing_id}"
    assert named(tl, "view")[0].name == (
        "tests.asgi.test_reliability.test_fastapi_instrumented_after_the_app_exists_records_"
        "routing.<locals>.thing"
    )
    assert named(tl, "middleware")  # the stack was built before, and is still split


def test_fastapi_instrumented_in_the_lifespan_records_routing(captured):
    """instrument() called from the app's own lifespan: the same."""
    fastapi = pytest.importorskip("fastapi")
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        stagetrace.starlette.instrument()
        yield

    app = fastapi.FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping():
        return "pong"

    try:
        with TestClient(app) as client:
            assert client.get("/ping").json() == "pong"
    finally:
        stagetrace.starlette.uninstrument()
    (tl,) = captured
    assert tl.route == "/ping" and named(tl, "route")[0].name == "/ping"


def test_http_middleware_functions_are_named_after_the_function(instrumented, captured):
    """FastAPI's @app.middleware("http") showed as starlette...BaseHTTPMiddleware."""
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.middleware("http")
    async def add_timing_header(request, call_next):
        response = await call_next(request)
        response.headers["x-timing"] = "1"
        return response

    @app.get("/")
    async def root():
        return {}

    with TestClient(app) as client:
        assert client.get("/").headers["x-timing"] == "1"
    (tl,) = captured
    names = [s.name for s in named(tl, "middleware")]
    assert (
        "tests.asgi.test_reliability.test_http_middleware_functions_are_named_after_the_"
        "function.<locals>.add_timing_header" in names
    )
    assert "starlette.middleware.base.BaseHTTPMiddleware" not in names


TASKS: list[str] = []


def slow_task(name: str) -> None:
    import time

    time.sleep(0.05)
    TASKS.append(name)


class Timing:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


def test_background_tasks_are_kept_out_of_middleware_phases_and_the_view(instrumented, captured):
    """A middleware's out-phase (and the view) used to include the body write and the
    background tasks run after the response: [in 0.26 / out 51.95] for a 50 ms task."""
    from starlette.middleware.base import BaseHTTPMiddleware

    class Pass(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            return await call_next(request)

    async def endpoint(request):
        return PlainTextResponse("ok", background=BackgroundTask(slow_task, "t"))

    app = Starlette(
        routes=[Route("/", endpoint)], middleware=[Middleware(Pass), Middleware(Timing)]
    )
    assert TestClient(app).get("/").text == "ok"
    (tl,) = captured
    (task,) = named(tl, "task")
    assert task.parent == 0  # a stage of the root, after the response
    assert task.duration_ns >= 50_000_000
    sent = tl.stages[0].attrs["http.response.sent_ns"]
    assert sent <= task.start_ns
    for st in named(tl, "middleware") + named(tl, "view"):
        assert st.end_ns <= task.start_ns, st.name
        assert task.id not in {d.id for d in descendants(tl, st)}
    (timing,) = named(tl, "middleware", "tests.asgi.test_reliability.Timing")
    (passing,) = named(
        tl,
        "middleware",
        "tests.asgi.test_reliability.test_background_tasks_are_"
        "kept_out_of_middleware_phases_and_the_view.<locals>.Pass",
    )
    assert passing.phases["out"] < 50_000_000 and timing.phases["out"] < 50_000_000
    assert tl.duration_ns >= task.end_ns


class LazyRows:
    """Rows behind a proxy whose attribute lookups fail outside an application context (as a
    ``LocalProxy`` does): iterable all the same, through its class."""

    def __iter__(self):
        return iter([b"a", b"b"])

    def __getattr__(self, name):
        raise RuntimeError(f"working outside of the application context ({name})")


def test_a_streamed_body_whose_attribute_lookups_fail_is_served(instrumented, captured):
    """Starlette tells an async body from a sync one by its class; stagetrace asked the object
    itself (``hasattr(content, "__aiter__")``), and a body whose ``__getattr__`` raises made
    ``StreamingResponse(...)`` raise in the endpoint: a 500 for a response served without
    stagetrace."""

    async def endpoint(request):
        return StreamingResponse(LazyRows())

    client = TestClient(Starlette(routes=[Route("/", endpoint)]))
    assert client.get("/").text == "ab"
    assert [tl.status for tl in captured] == [200]


class Auditing:
    """A pure ASGI middleware that does work of its own after the app returned."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            with stagetrace.stage("audit"):
                await asyncio.sleep(0.01)


@pytest.mark.parametrize("after", ["background task", "yield dependency"])
def test_middleware_work_after_the_response_is_not_inside_a_stage_that_ended(
    instrumented, captured, after
):
    """A background task or a ``yield`` dependency's teardown ends the request's open stages
    when the response was sent; the work a pure ASGI middleware does after the app returns
    (later still) is a stage of the root, as the task is. It used to open inside the
    middleware's stage that had ended — a child outside its parent, counted twice in self
    times."""
    if after == "background task":

        async def endpoint(request):
            return PlainTextResponse("ok", background=BackgroundTask(slow_task, "t"))

        app = Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(Auditing)])
    else:
        fastapi = pytest.importorskip("fastapi")

        async def session():
            yield "db"

        app = fastapi.FastAPI(middleware=[Middleware(Auditing)])

        @app.get("/")
        async def endpoint(db: str = fastapi.Depends(session)):
            return PlainTextResponse("ok")

    assert TestClient(app).get("/").text == "ok"
    (tl,) = captured
    (audit,) = named(tl, "custom", "audit")
    assert audit.parent == 0
    assert_nested(tl)


def test_an_overflowing_queue_start_header_under_asgi(instrumented, captured):
    """The gateway's header parsing raised OverflowError into the ASGI server for
    `X-Request-Start: t=1e400`; now the header is ignored and the request recorded."""
    client = TestClient(Starlette(routes=[Route("/", hello)]))
    assert client.get("/", headers={"x-request-start": "t=1e400"}).status_code == 200
    assert client.get("/").status_code == 200
    assert len(captured) == 2 and all(t.route == "/" for t in captured)


async def test_concurrent_tasks_of_one_request_never_cross_into_another(captured):
    """asyncio.gather children of concurrent requests each record into their own timeline."""

    async def app(scope, receive, send):
        rid = scope["path"]

        async def child(i):
            with stagetrace.stage(f"{rid} child {i}"):
                await asyncio.sleep(0.001 * (i % 3))

        await asyncio.gather(*(child(i) for i in range(5)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = StagetraceMiddleware(app)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    await asyncio.gather(
        *(
            wrapped({"type": "http", "method": "GET", "path": f"/r{i}"}, receive, send)
            for i in range(50)
        )
    )
    assert len(captured) == 50
    for tl in captured:
        children = named(tl, "custom")
        assert len(children) == 5 and all(c.name.startswith(tl.path + " ") for c in children)


def test_instrument_works_without_jinja2_installed():
    """FastAPI does not need Jinja2, but instrument() imported it unconditionally: without it
    installed, the README's one call raised ModuleNotFoundError at start-up. Jinja2 is now
    patched when (and if) it is imported."""
    code = """
import sys
sys.modules["jinja2"] = None  # as if it were not installed: `import jinja2` fails
import stagetrace, stagetrace.starlette
stagetrace.starlette.instrument()
from fastapi import FastAPI
from fastapi.testclient import TestClient
app = FastAPI()
@app.get("/items/{n}")
def item(n: int):
    return {"n": n}
with stagetrace.capture() as got:
    assert TestClient(app).get("/items/3").json() == {"n": 3}
    stagetrace.flush(10)
assert [t.route for t in got] == ["/items/{n}"], got
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_an_app_built_per_test_is_not_kept_alive_by_stagetrace(captured):
    """A test suite that builds its FastAPI app in a factory, per test: its endpoint, its
    dependency, its ``@app.middleware("http")`` function and its middleware classes are new
    objects each time. stagetrace names stages after them and caches the names, and wraps the
    ``__call__`` of a middleware class that defines its own — the caches and the record kept to
    undo the wrapping used to hold the objects themselves (and whatever their closures hold),
    thousands of apps' worth in a long suite. Whatever the app's own framework keeps (FastAPI
    caches a dependency's and an endpoint's signature) stays as it is untraced."""
    import gc
    import weakref

    pytest.importorskip("fastapi")
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient
    from starlette.middleware.base import BaseHTTPMiddleware

    def build() -> tuple[FastAPI, list[Any]]:
        app = FastAPI()

        class Tagging(BaseHTTPMiddleware):
            async def dispatch(self, request: Any, call_next: Any) -> Any:
                return await call_next(request)

        class PureASGI:  # its own __call__, which stagetrace wraps on the class
            def __init__(self, app: Any) -> None:
                self.app = app

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                await self.app(scope, receive, send)

        async def call(self: Any, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

        # made with type(): no "<locals>" in its name, made per app all the same
        Made = type("Made", (), {"__init__": PureASGI.__init__, "__call__": call})

        app.add_middleware(Tagging)
        app.add_middleware(PureASGI)
        app.add_middleware(Made)

        @app.middleware("http")
        async def timing(request: Any, call_next: Any) -> Any:
            return await call_next(request)

        def settings() -> int:
            return 1

        @app.get("/x")
        def endpoint(value: int = Depends(settings)) -> dict[str, int]:
            return {"value": value}

        return app, [app, Tagging, PureASGI, Made, timing, settings, endpoint]

    def alive_after_a_request() -> tuple[list[bool], list[str]]:
        app, objects = build()
        with TestClient(app) as client:
            assert client.get("/x").json() == {"value": 1}
        names = [s.name.rpartition("build.<locals>.")[2] for tl in captured for s in tl.stages]
        refs = [weakref.ref(o) for o in objects]
        del app, objects, client
        captured.clear()
        gc.collect()
        return [r() is not None for r in refs], names

    untraced, _ = alive_after_a_request()
    assert untraced[:5] == [False] * 5  # the app, its middleware and its middleware function
    stagetrace.starlette.instrument()
    try:
        traced, names = alive_after_a_request()
    finally:
        stagetrace.starlette.uninstrument()
    assert {"Tagging", "PureASGI", "timing", "settings", "endpoint"} <= set(names)
    assert any(n.endswith(".Made") for n in names)
    assert traced == untraced
