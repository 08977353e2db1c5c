"""FastAPI dependencies, one `dependency` stage each: sub-dependencies nested, cached ones
marked, the work a dependency does inside its stage, ``yield`` dependencies' teardown where it
runs (after the response for request-scoped ones), errors on the dependency that raised."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import pytest

pytest.importorskip("fastapi")
from fastapi import Depends, FastAPI, HTTPException, WebSocket
from fastapi.testclient import TestClient

import stagetrace

from .conftest import descendants

EVENTS: list[str] = []


def settings() -> dict[str, int]:
    with stagetrace.stage("read settings"):
        return {"page": 10}


async def get_db(cfg: Annotated[dict, Depends(settings)]) -> AsyncIterator[str]:
    with stagetrace.stage("open db"):
        pass
    yield "db"
    with stagetrace.stage("close db"):
        EVENTS.append("db closed")


def get_file() -> Iterator[str]:
    yield "file"
    with stagetrace.stage("close file"):
        EVENTS.append("file closed")


async def current_user(
    db: Annotated[str, Depends(get_db)], cfg: Annotated[dict, Depends(settings)]
) -> str:
    with stagetrace.stage("look up user"):
        return "alice"


async def require_admin(user: Annotated[str, Depends(current_user)]) -> None:
    raise HTTPException(403, "not an admin")


def paging(limit: int = 10) -> int:
    return limit


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items")
    async def items(
        user: Annotated[str, Depends(current_user)],
        db: Annotated[str, Depends(get_db)],
        limit: Annotated[int, Depends(paging)],
    ) -> dict[str, object]:
        return {"user": user, "limit": limit}

    @app.get("/file")
    def file(f: Annotated[str, Depends(get_file, scope="function")]) -> str:
        return f

    @app.get("/admin", dependencies=[Depends(require_admin)])
    async def admin() -> str:
        return "ok"

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, user: Annotated[str, Depends(current_user)]) -> None:
        await websocket.accept()
        await websocket.send_text(user)
        await websocket.close()

    return app


def deps(tl):
    return [s for s in tl.stages if s.kind == "dependency"]


def tree(tl, stage):
    return [(s.kind, s.name) for s in descendants(tl, stage)]


def test_each_dependency_is_a_stage_nested_as_resolved(instrumented, captured):
    """/items: current_user with get_db (with settings) and settings (cached) inside, then
    get_db again (cached), then paging; each dependency's own work nests in its stage."""
    with TestClient(make_app()) as client:
        assert client.get("/items?limit=3").json() == {"user": "alice", "limit": 3}
    (tl,) = captured
    (resolution,) = [s for s in tl.stages if s.kind == "view" and s.name == "dependencies"]
    top = [s for s in deps(tl) if s.parent == resolution.id]
    mod = __name__
    assert [(s.name, s.attrs.get("cached", False)) for s in top] == [
        (f"{mod}.current_user", False),
        (f"{mod}.get_db", True),
        (f"{mod}.paging", False),
    ]
    user = top[0]
    assert tree(tl, user) == [
        ("dependency", f"{mod}.get_db"),
        ("dependency", f"{mod}.settings"),
        ("custom", "read settings"),
        ("custom", "open db"),
        ("dependency", f"{mod}.settings"),
        ("custom", "look up user"),
    ]
    inner_settings = [s for s in deps(tl) if s.name.endswith(".settings")]
    assert [s.attrs.get("cached", False) for s in inner_settings] == [False, True, True]
    for s in deps(tl):
        assert s.end_ns <= tl.stages[s.parent].end_ns


def test_a_yield_dependencys_teardown_runs_after_the_response(instrumented, captured):
    """The request-scoped get_db closes after the response was sent: a `teardown` stage of the
    root, after the view ended; its own work nests inside."""
    EVENTS.clear()
    with TestClient(make_app()) as client:
        client.get("/items")
    assert EVENTS == ["db closed"]
    (tl,) = captured
    (teardown,) = [s for s in deps(tl) if s.attrs.get("teardown")]
    assert teardown.name == f"{__name__}.get_db" and teardown.parent == 0
    (view,) = [s for s in tl.stages if s.kind == "view" and s.name.endswith(".items")]
    assert teardown.start_ns >= view.end_ns
    assert tree(tl, teardown) == [("custom", "close db")]
    assert tl.stages[0].attrs["http.response.sent_ns"] <= teardown.start_ns


def test_a_function_scoped_teardown_runs_inside_the_view(instrumented, captured):
    """A sync generator dependency with scope="function" closes right after the endpoint,
    before the response: its teardown stage is inside the view."""
    EVENTS.clear()
    with TestClient(make_app()) as client:
        assert client.get("/file").json() == "file"
    assert EVENTS == ["file closed"]
    (tl,) = captured
    setup, teardown = deps(tl)
    (view,) = [s for s in tl.stages if s.kind == "view" and s.name.endswith(".file")]
    assert teardown.attrs == {"teardown": True} and view in tl.ancestors(teardown)
    assert tree(tl, teardown) == [("custom", "close file")]
    assert "teardown" not in setup.attrs


def test_the_dependency_that_raised_carries_the_error(instrumented, captured):
    """require_admin raises HTTPException(403): its stage has the error, the user lookup it
    depends on does not, and the endpoint never ran."""
    with TestClient(make_app()) as client:
        assert client.get("/admin").status_code == 403
    (tl,) = captured
    admin = next(s for s in deps(tl) if s.name.endswith(".require_admin"))
    assert admin.error is not None and admin.error.type == "fastapi.exceptions.HTTPException"
    assert all(s.error is None for s in deps(tl) if s is not admin and not s.attrs.get("teardown"))
    assert tl.status == 403


def test_invalid_parameters_of_a_dependency(instrumented, captured):
    """paging's parameter fails validation: its stage ends without being called, the request
    is a 422, and the timeline is complete."""
    with TestClient(make_app()) as client:
        assert client.get("/items?limit=x").status_code == 422
    (tl,) = captured
    paging_stage = next(s for s in deps(tl) if s.name.endswith(".paging"))
    assert paging_stage.error is None
    assert all("unfinished" not in s.attrs for s in tl.stages)


def test_overrides_are_recorded_under_the_overriding_function(instrumented, captured):
    """dependency_overrides: the stage is named after the function that actually ran."""
    app = make_app()

    def fake_user() -> str:
        return "bob"

    app.dependency_overrides[current_user] = fake_user
    with TestClient(app) as client:
        assert client.get("/items").json()["user"] == "bob"
    (tl,) = captured
    names = [s.name for s in deps(tl)]
    assert (
        f"{__name__}.test_overrides_are_recorded_under_the_overriding_function.<locals>.fake_user"
        in names
    )
    assert f"{__name__}.current_user" not in names


def test_websocket_dependencies(instrumented, captured):
    """A websocket endpoint's dependencies are stages of its connection's timeline."""
    with TestClient(make_app()) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "alice"
    (tl,) = captured
    assert tl.protocol == "websocket"
    assert f"{__name__}.current_user" in [s.name for s in deps(tl)]


class Unavailable(Exception):
    pass


async def unavailable_db() -> AsyncIterator[str]:
    raise Unavailable("the database is down")
    yield "db"  # a yield dependency, whose setup fails


def test_a_yield_dependencys_error_is_not_chained_to_ours(instrumented, captured, monkeypatch):
    """If timing a yield dependency's teardown cannot be set up (naming the dependency fails,
    here by injection), the dependency runs untraced, and outside stagetrace's except block:
    the error its setup raises reaches the application as untraced, not "during handling of"
    ours."""
    from stagetrace.starlette import _install

    def broken(call: object) -> str:
        raise RuntimeError("injected fault")

    app = FastAPI()

    @app.get("/")
    async def index(db: Annotated[str, Depends(unavailable_db)]) -> str:
        return db

    monkeypatch.setattr(_install, "_dependency_name", broken)
    with TestClient(app) as client, pytest.raises(Unavailable) as raised:
        client.get("/")
    assert raised.value.__context__ is None
    assert stagetrace.stats()["internal_errors_by_site"]["fastapi.teardown"] >= 1


def test_without_a_timeline_nothing_changes(instrumented):
    """Outside a recorded request (sampled out) the dependencies resolve as usual."""
    stagetrace.configure(sample_rate=0.0)
    EVENTS.clear()
    with stagetrace.capture() as got, TestClient(make_app()) as client:
        assert client.get("/items").json() == {"user": "alice", "limit": 10}
    assert got == [] and EVENTS == ["db closed"]
