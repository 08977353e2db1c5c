"""Async views, AsyncClient, and asgiref's thread hops under ASGI."""

from __future__ import annotations

import functools
import logging
import threading

import pytest
from asgiref.sync import iscoroutinefunction
from django.test import AsyncClient, override_settings

from .conftest import by_kind, descendants, one


async def test_async_view_through_async_client(captured):
    """An async view records its async ORM calls, in a timeline like any other."""
    response = await AsyncClient().get("/async/")
    assert response.status_code == 200
    (tl,) = captured
    assert tl.stages[0].name == "async test client"
    view = one(tl, "view")
    assert view.name == "tests.djapp.views.async_books"
    inside = descendants(tl, view)
    assert [s.kind for s in inside].count("db.query") == 2
    assert tl.route == "async/" and tl.status == 200


async def test_a_connection_opened_in_another_thread_while_uninstrumented_gets_recorded(
    captured,
):
    """Instrumenting again after ``uninstrument()``: a connection that asgiref's executor
    thread opened in between (persistent, so no ``connection_created`` will come) still gets
    the execute wrapper before its next ORM query, so its queries are ``db.query`` stages."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    import stagetrace.django
    from tests.djapp.models import Book

    def reopen() -> int:
        connections["default"].close()
        return Book.objects.count()  # a fresh connection, in the executor thread

    stagetrace.django.uninstrument()
    try:
        await sync_to_async(reopen)()
    finally:
        stagetrace.django.instrument()
    response = await AsyncClient().get("/async/")
    assert response.status_code == 200
    (tl,) = captured
    assert len(by_kind(tl, "db.query")) == 2


async def test_sync_view_under_asgi_records_its_thread_wait(captured):
    """A sync view served by the async handler waits for asgiref's thread: recorded."""
    response = await AsyncClient().get("/books.json")
    assert response.status_code == 200
    (tl,) = captured
    view = one(tl, "view")
    assert view.attrs["asgi.thread_wait_ns"] >= 0
    first_sync = one(tl, "middleware", "django.middleware.security.SecurityMiddleware")
    assert first_sync.attrs["asgi.thread_wait_ns"] >= 0
    assert len(by_kind(tl, "db.query")) == 7


async def test_async_streaming_response_lasts_until_the_last_chunk(captured):
    response = await AsyncClient().get("/async-stream/")
    assert captured == []
    chunks = [chunk async for chunk in response.streaming_content]
    assert len(chunks) == 3
    (tl,) = captured
    write = one(tl, "response.write")
    assert write.attrs["chunks"] == 3 and write.duration_ns >= 60_000_000


class AsyncOnly:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        from asgiref.sync import markcoroutinefunction

        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request):
        request.async_only_thread = threading.get_ident()
        return await self.get_response(request)


class Both:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            from asgiref.sync import markcoroutinefunction

            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self.get_response(request)

    async def __acall__(self, request):
        return await self.get_response(request)


MIXED = [
    "tests.django.test_async.Both",
    "django.middleware.security.SecurityMiddleware",
    "tests.django.test_async.AsyncOnly",
    "tests.djapp.middleware.ShortCircuitMiddleware",
    "tests.django.test_async.Both",
    "django.middleware.common.CommonMiddleware",
]


def wrapping_async(get_response):
    """A function middleware, async only, that ``functools.wraps`` the layer it calls (as
    decorator-style middleware often do): its function carries that layer's attributes."""

    @functools.wraps(get_response)
    async def middleware(request):
        return await get_response(request)

    return middleware


wrapping_async.sync_capable = False  # type: ignore[attr-defined]
wrapping_async.async_capable = True  # type: ignore[attr-defined]

ASYNC_OVER_SYNC = [
    "tests.django.test_async.AsyncOnly",
    "tests.django.test_async.wrapping_async",
    "tests.djapp.middleware.ShortCircuitMiddleware",
]


@pytest.mark.parametrize("gateway", ["asgi", "wsgi"])
async def test_async_middleware_over_a_sync_one_is_split_where_it_awaits_the_next(
    gateway, captured
):
    """An async middleware whose next layer is a sync one (Django puts a thread hop between,
    through asgiref's ``sync_to_async``, which copies the wrapped function's attributes): its
    stage is split where it awaits the next layer — it did not answer by itself."""
    from asgiref.sync import sync_to_async
    from django.test import Client

    with override_settings(MIDDLEWARE=ASYNC_OVER_SYNC):
        if gateway == "asgi":
            response = await AsyncClient().get("/books.json")
        else:
            response = await sync_to_async(Client().get)("/books.json")
    assert response.status_code == 200
    (tl,) = captured
    for name in ("tests.django.test_async.AsyncOnly", "tests.django.test_async.wrapping_async"):
        layer = one(tl, "middleware", name)
        assert layer.short_circuit is False, name
        assert layer.phases["in"] < layer.duration_ns, name


class AsyncUnmarked:
    """Async only, with ``async def __call__`` but no ``markcoroutinefunction(self)``: Django
    calls it through a sync wrapper and awaits the coroutine it returns, which works in an
    async chain (under WSGI, asgiref warns about it)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response

    async def __call__(self, request):
        return await self.get_response(request)


UNMARKED_OVER_ASYNC = [
    "tests.django.test_async.AsyncUnmarked",
    "tests.django.test_async.AsyncOnly",
    "tests.djapp.middleware.ShortCircuitMiddleware",
]


async def test_an_async_middleware_without_the_coroutine_marker_holds_the_layers_it_awaits(
    captured,
):
    """A class middleware whose ``__call__`` is a coroutine function but whose instance is not
    marked one, in an async chain: its stage lasts until the coroutine it returned finishes,
    so the layers it awaits nest inside it and it did not answer by itself — not a stage
    closed as soon as the coroutine was made, with the rest of the chain beside it."""
    with override_settings(MIDDLEWARE=UNMARKED_OVER_ASYNC):
        response = await AsyncClient().get("/books.json")
    assert response.status_code == 200
    (tl,) = captured
    outer = one(tl, "middleware", "tests.django.test_async.AsyncUnmarked")
    inner = one(tl, "middleware", "tests.django.test_async.AsyncOnly")
    assert inner.parent == outer.id
    assert outer.short_circuit is False
    assert outer.duration_ns >= inner.duration_ns


def adaptations(handler_class, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="django.request"):
        handler_class()
    return [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()]


@pytest.mark.parametrize("gateway", ["asgi", "wsgi"])
def test_django_adapts_the_chain_exactly_as_without_stagetrace(gateway, caplog):
    """sync_capable/async_capable are seen through the proxies: the same adapters (thread
    hops) are inserted with and without stagetrace, for WSGI and ASGI."""
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    import stagetrace.django

    handler_class = ASGIHandler if gateway == "asgi" else WSGIHandler
    with override_settings(MIDDLEWARE=MIXED, DEBUG=True):
        with_stagetrace = adaptations(handler_class, caplog)
        stagetrace.django.uninstrument()
        try:
            without = adaptations(handler_class, caplog)
        finally:
            stagetrace.django.instrument()
    assert with_stagetrace == without
    assert with_stagetrace  # the mixed stack does need adapters


async def test_async_chain_stays_on_the_event_loop(captured):
    """Async-capable middleware and an async view run on the loop thread: no extra hop."""
    loop_thread = threading.get_ident()
    with override_settings(
        MIDDLEWARE=["tests.django.test_async.Both", "tests.django.test_async.AsyncOnly"]
    ):
        response = await AsyncClient().get("/async/")
    assert response.status_code == 200
    assert response.asgi_request.async_only_thread == loop_thread
    (tl,) = captured
    names = [s.name for s in by_kind(tl, "middleware")]
    assert names == ["tests.django.test_async.Both", "tests.django.test_async.AsyncOnly"]
    assert all("asgi.thread_wait_ns" not in s.attrs for s in by_kind(tl, "middleware"))
    for mw in by_kind(tl, "middleware"):
        assert mw.phases["in"] > 0 and mw.phases["out"] > 0


class ByKeyword(Both):
    """Calls the next layer with ``request=`` as a keyword, as Django's own handlers accept
    (``convert_exception_to_response``'s ``inner(request)``): legal, and seen in the wild."""

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self.get_response(request=request)

    async def __acall__(self, request):
        return await self.get_response(request=request)


BY_KEYWORD = ["tests.django.test_async.ByKeyword", "tests.django.test_async.ByKeyword"]


def test_a_middleware_calling_the_next_layer_by_keyword_works_and_is_split(captured):
    """The handler a middleware gets accepts ``get_response(request=request)`` as Django's
    does (it answered 500 with a TypeError when stagetrace's handler named its argument
    otherwise), and the in/out split is still recorded."""
    from django.test import Client

    with override_settings(MIDDLEWARE=BY_KEYWORD):
        response = Client().get("/books.json")
    assert response.status_code == 200
    (tl,) = captured
    layers = by_kind(tl, "middleware")
    assert [s.name for s in layers] == BY_KEYWORD
    assert all(s.error is None and s.short_circuit is False for s in layers)


async def test_an_async_middleware_calling_the_next_layer_by_keyword_works(captured):
    """The same through the async handler: ``await get_response(request=request)``."""
    with override_settings(MIDDLEWARE=BY_KEYWORD):
        response = await AsyncClient().get("/async/")
    assert response.status_code == 200
    (tl,) = captured
    layers = by_kind(tl, "middleware")
    assert [s.name for s in layers] == BY_KEYWORD
    assert all(s.error is None and s.short_circuit is False for s in layers)


async def test_django_mounted_in_a_starlette_app_takes_no_second_sampling_draw(
    captured, monkeypatch
):
    """Django's ASGI handler mounted in an instrumented Starlette (FastAPI) app: a request the
    Starlette gateway sampled out is not drawn again by Django's — with ``sample_rate`` 0.5
    that recorded three requests in four (220 of 300 in a run), those the outer gateway left
    out as timelines without its middleware. Only the outer gateway draws."""
    pytest.importorskip("starlette")
    import httpx
    from django.core.asgi import get_asgi_application
    from starlette.applications import Starlette
    from starlette.routing import Mount

    import stagetrace
    import stagetrace.starlette
    from stagetrace import _recorder

    draws: list[float] = []

    def rand() -> float:  # the first draw (the outer gateway's) says no, any later one yes
        draws.append(0.9 if not draws else 0.1)
        return draws[-1]

    stagetrace.starlette.instrument()
    try:
        app = Starlette(routes=[Mount("/dj", get_asgi_application())])
        stagetrace.configure(sample_rate=0.5)
        monkeypatch.setattr(_recorder, "_rand", rand)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            response = await client.get("/dj/created/")
        assert response.status_code == 201
        stagetrace.flush()
        assert captured == []
        assert draws == [0.9]
    finally:
        stagetrace.starlette.uninstrument()
