"""The FastAPI example app: every middleware with both phases, routes, endpoints, FastAPI's
dependencies and validation, serialization, templates, background tasks, websockets, 404."""

from __future__ import annotations

import asyncio

import pytest

import stagetrace

from .conftest import assert_nested, descendants, named

pytest.importorskip("fastapi")
from fastapi import FastAPI
from fastapi.testclient import TestClient

USER_STACK = [
    "app.ServedByHeader",
    "starlette.middleware.cors.CORSMiddleware",
    "starlette.middleware.gzip.GZipMiddleware",
    "app.RequireJSONForWrites",
]


@pytest.fixture
def client(example_app):
    with TestClient(example_app.app) as c:
        yield c


def middleware_chain(tl):
    return [s for s in tl.stages if s.kind == "middleware"]


def test_json_endpoint_with_response_model(client, captured):
    """GET /items/3: the whole middleware stack nested in order with both phases, the route
    template, the endpoint, dependencies, validation and response model serialization."""
    response = client.get("/items/3")
    assert response.json() == {"id": 3, "name": "Item 3", "price": 12.5}
    assert response.headers["x-served-by"] == "fastapi-example"
    (tl,) = captured
    assert tl.framework == "fastapi" and tl.route == "/items/{item_id}" and tl.status == 200
    chain = middleware_chain(tl)
    names = [s.name for s in chain]
    assert names[0] == "starlette.middleware.errors.ServerErrorMiddleware"
    assert [n for n in names if n in USER_STACK] == USER_STACK
    assert "starlette.middleware.exceptions.ExceptionMiddleware" in names
    parent = tl.stages[0].id
    for st in chain:
        assert st.parent == parent, st.name
        assert st.short_circuit is False, st.name
        assert st.phases["in"] > 0, st.name
        assert st.phases["in"] + st.phases["out"] <= st.duration_ns
        parent = st.id
    served = named(tl, "middleware", "app.ServedByHeader")[0]
    assert served.phases["out"] > 0  # split at call_next: the header is set afterwards
    (route,) = named(tl, "route")
    assert route.name == "/items/{item_id}" and route.parent == chain[-1].id
    (view,) = named(tl, "view", "app.read_item")
    inside = {s.name for s in descendants(tl, view)}
    assert {"dependencies", "validate request params", "response model"} <= inside
    (write,) = named(tl, "response.write")
    assert write.attrs["http.response.body.size"] == len(response.content)


def test_template_page_nests_includes(client, captured):
    assert client.get("/page").status_code == 200
    (tl,) = captured
    templates = named(tl, "template")
    by = {t.name: t for t in templates}
    assert by["base.html"].parent == by["page.html"].id
    items = [t for t in templates if t.name == "_item.html"]
    assert len(items) == 5 and all(t.parent == by["base.html"].id for t in items)
    assert by["page.html"].parent == named(tl, "view", "app.page")[0].id


def test_streaming_lasts_until_the_last_chunk(client, captured):
    # identity: the example's GZip middleware would otherwise decide how the lines are
    # grouped into body messages, and that differs between Starlette versions.
    response = client.get("/stream", headers={"accept-encoding": "identity"})
    assert response.text.count("\n") == 5
    (tl,) = captured
    (write,) = named(tl, "response.write")
    assert write.attrs["chunks"] >= 5 and write.duration_ns >= 40_000_000
    assert tl.stages[0].attrs["http.response.sent_ns"] >= write.end_ns - 1_000_000


def test_background_task_after_the_response(client, example_app, captured):
    """The task is its own stage, after the response was sent; the timeline covers it, the
    response time (http.response.sent_ns) does not."""
    response = client.post("/orders", json={"item_id": 2})
    assert response.status_code == 201
    (tl,) = captured
    (task,) = named(tl, "task", "app.send_receipt")
    (write,) = named(tl, "response.write")
    sent = tl.stages[0].attrs["http.response.sent_ns"]
    assert task.start_ns >= write.end_ns and task.start_ns >= sent
    assert task.duration_ns >= 20_000_000 and tl.duration_ns >= task.end_ns
    assert sent < task.start_ns
    assert named(tl, "serialize", "validate request body")


def test_pure_asgi_middleware_short_circuit(client, captured):
    """A pure ASGI middleware answering itself is marked short_circuit; nothing below runs."""
    response = client.post("/orders", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    (tl,) = captured
    (mw,) = named(tl, "middleware", "app.RequireJSONForWrites")
    assert mw.short_circuit is True and descendants(tl, mw) == []
    assert named(tl, "route") == []


def test_404_is_a_timeline_with_an_unmatched_route(client, captured):
    assert client.get("/nowhere").status_code == 404
    (tl,) = captured
    (route,) = named(tl, "route")
    assert route.error.type == "starlette.exceptions.HTTPException"
    assert tl.route is None and tl.status == 404


def test_http_exception_from_the_endpoint_is_recorded_on_it(client, captured):
    assert client.get("/items/999").status_code == 404
    (tl,) = captured
    (view,) = named(tl, "view", "app.read_item")
    assert view.error.type == "fastapi.exceptions.HTTPException" or view.error.type.endswith(
        "HTTPException"
    )
    assert tl.route == "/items/{item_id}"


def test_405_is_recorded(client, captured):
    assert client.delete("/items/3").status_code == 405
    (tl,) = captured
    assert tl.status == 405 and tl.route == "/items/{item_id}"


def test_request_validation_error_is_recorded(client, captured):
    assert client.get("/items/not-a-number").status_code == 422
    (tl,) = captured
    (view,) = named(tl, "view", "app.read_item")
    assert view.error.type == "fastapi.exceptions.RequestValidationError"


def test_one_timeline_per_websocket_connection(client, captured):
    with client.websocket_connect("/ws") as ws:
        for word in ("a", "b", "c"):
            ws.send_text(word)
            assert ws.receive_text() == word.upper()
        ws.send_text("bye")
    (tl,) = captured
    assert tl.protocol == "websocket" and tl.status == 1000 and tl.route == "/ws"
    attrs = tl.stages[0].attrs
    assert attrs["websocket.messages_received"] == 4 and attrs["websocket.messages_sent"] == 3
    assert [s.name for s in named(tl, "response.write")] == (
        ["websocket.accept"] + ["websocket.send"] * 3
    )
    assert named(tl, "view", "app.echo")


def test_included_routers_with_prefixes_and_router_dependencies(instrumented, captured):
    """include_router(prefix=...) joins the template; router-level dependencies still leave
    the endpoint as the view stage."""
    from fastapi import APIRouter, Depends, FastAPI

    async def dep() -> int:
        return 1

    router = APIRouter(dependencies=[Depends(dep)])

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    app = FastAPI()
    app.include_router(router, prefix="/r")
    with TestClient(app) as c:
        assert c.get("/r/items/3").json() == {"id": 3}
    (tl,) = captured
    assert tl.route == "/r/items/{item_id}"
    (view,) = [s for s in tl.stages if s.kind == "view" and s.name.endswith(".item")]
    assert any(s.name == "dependencies" and s.parent == view.id for s in tl.stages)


def test_the_first_request_without_a_lifespan_has_its_middleware_stages(instrumented, captured):
    """FastAPI builds its stack in its own ``build_middleware_stack``, on the first ASGI call:
    without a lifespan (``TestClient(app)`` without ``with``, ``uvicorn --lifespan off``) that
    call is the first request, whose middleware is recorded as every later request's is."""
    from fastapi import FastAPI
    from starlette.middleware.base import BaseHTTPMiddleware

    class Passing(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            return await call_next(request)

    app = FastAPI()
    app.add_middleware(Passing)

    @app.get("/")
    async def index() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)  # no lifespan
    for _ in range(2):
        assert client.get("/").json() == {"ok": True}
    first, second = ([s.name for s in middleware_chain(tl)] for tl in captured)
    assert first == second
    assert f"{__name__}.{Passing.__qualname__}" in first


def test_a_mounted_fastapi_app_is_nested_and_counted_once(instrumented, captured):
    """app.mount("/sub", another FastAPI app): the outer route stage ends where it hands the
    request over; the mounted app's stack, its route and its endpoint nest within their
    parents, and the Server-Timing entries add up to at most the total."""
    from fastapi import FastAPI

    stagetrace.configure(server_timing=True)
    app, sub = FastAPI(), FastAPI()

    @sub.get("/hello/{name}")
    async def hello(name: str) -> dict[str, str]:
        await asyncio.sleep(0.01)
        return {"hi": name}

    app.mount("/sub", sub)
    with TestClient(app) as client:
        response = client.get("/sub/hello/bob")
    assert response.json() == {"hi": "bob"}
    (tl,) = captured
    assert_nested(tl)
    entries = dict(
        (part.split(";")[0].strip(), float(part.split("dur=")[1].split(";")[0]))
        for part in response.headers["server-timing"].split(",")
    )
    total = entries.pop("total")
    assert sum(entries.values()) <= total + 0.01 * len(entries)  # each rounded to 0.01 ms
    assert tl.route == "/sub/hello/{name}"
    assert [s.name for s in named(tl, "route")] == ["/sub/{path}", "/sub/hello/{name}"]
    assert not any(s.short_circuit for s in middleware_chain(tl))


def test_a_subclass_of_fastapi_is_recorded_as_fastapi(instrumented, captured):
    """An application class derived from ``FastAPI`` in the application's own module is a
    FastAPI app: its timelines said ``starlette``, the framework being read from the module
    of the app's class alone."""

    class Shop(FastAPI):
        pass

    app = Shop()

    @app.get("/items/{item_id}")
    def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    assert TestClient(app).get("/items/3").json() == {"item_id": 3}
    assert [tl.framework for tl in captured] == ["fastapi"]
