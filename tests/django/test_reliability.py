"""Regression tests for the ways one Django request could break a request, blind a thread,
record wrong data or hold memory (issue 7). Each failed on the code before the fix."""

from __future__ import annotations

import contextvars
import gc
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client

import stagetrace
from stagetrace._state import STATE

from ..helpers import unhashable_param, wsgi_environ
from ..servers import ROOT
from .conftest import by_kind, one


@pytest.fixture
def client() -> Client:
    return Client()


def wsgi_get(handler, path: str, **headers: str) -> tuple[str, bytes]:
    environ = wsgi_environ(
        path,
        SCRIPT_NAME="",
        **{"wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False},
        **{"HTTP_" + k.upper(): v for k, v in headers.items()},
    )
    status: list[str] = []
    body = handler(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        data = b"".join(body)
    finally:
        body.close()
    return status[0], data


@pytest.mark.parametrize("value", ["t=1e400", "inf", "t=1.8e308", "9" * 400, "t=-1", "nan"])
def test_an_overflowing_queue_start_header_neither_breaks_nor_blinds(value, captured):
    """`X-Request-Start: t=1e400` (anything parsing to infinity) used to raise OverflowError out
    of the gateway and leave the context on the half-begun timeline, so every later request on
    the thread nested into it. Now the header is ignored and the next request is its own."""
    handler = WSGIHandler()
    status, _ = wsgi_get(handler, "/books.json", x_request_start=value)
    assert status.startswith("200")
    assert stagetrace.current_timeline() is None
    status, _ = wsgi_get(handler, "/books.json")
    assert status.startswith("200")
    assert len(captured) == 2
    assert all(t.path == "/books.json" and t.stages[0].kind == "gateway" for t in captured)
    assert "stagetrace.queue_time_ns" not in captured[0].stages[0].attrs


def test_a_bad_environment_value_fails_at_start_up_never_in_a_request(tmp_path):
    """STAGETRACE_SAMPLE_RATE=lots with instrument() called in code: every request used to raise
    ConfigurationError. The error now comes from instrument(), at start-up, and requests served
    anyway (the error ignored, or the environment broken after start-up) are never affected."""
    script = tmp_path / "check.py"
    script.write_text(
        """
import io, os, sys
import django
from django.conf import settings
settings.configure(
    DEBUG=False, SECRET_KEY="x", ROOT_URLCONF="urls", ALLOWED_HOSTS=["*"],
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"], INSTALLED_APPS=[],
)
with open("urls.py", "w") as f:
    f.write("from django.http import HttpResponse\\n"
            "from django.urls import path\\n"
            "urlpatterns = [path('', lambda r: HttpResponse('hi'))]\\n")
sys.path.insert(0, ".")
os.environ["STAGETRACE_SAMPLE_RATE"] = "lots"
import stagetrace, stagetrace.django
try:
    stagetrace.django.instrument()
except stagetrace.ConfigurationError as exc:
    print("startup:", exc)
django.setup()
from django.test import Client
from django.core.handlers.wsgi import WSGIHandler
# The application goes on regardless: instrumenting with a good configuration, then breaking
# the environment and forgetting the configuration, must not break a single request.
os.environ["STAGETRACE_SAMPLE_RATE"] = "1"
stagetrace.django.instrument()
os.environ["STAGETRACE_SAMPLE_RATE"] = "lots"
stagetrace.reset()
print("client:", Client().get("/").status_code)
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "x", "SERVER_PORT": "80",
           "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO()}
out = []
body = WSGIHandler()(environ, lambda s, h, e=None: out.append(s))
body.close()
print("wsgi:", out[0])
print("errors:", stagetrace.stats()["internal_errors_by_site"])
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGETRACE_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "startup: stagetrace option 'sample_rate' (environment STAGETRACE_SAMPLE_RATE)" in out
    assert "client: 200" in out and "wsgi: 200 OK" in out
    assert "'configuration': 1" in out  # reported once, not once per request


def test_an_unhashable_response_is_served_and_recorded(client, captured):
    """A response class defining __eq__ is unhashable; registering it in a dict keyed by the
    response raised TypeError inside the request."""
    response = client.get("/unhashable/")
    assert response.status_code == 200 and response.content == b"compared by content"
    (tl,) = captured
    assert tl.status == 200 and one(tl, "response.write").duration_ns >= 0


def test_a_cache_backend_returning_none_from_get_many_is_not_a_500(client, captured):
    """A backend whose get_many returns None made len(result) raise, turning a working
    request into a 500 and leaving the cache stage open."""
    response = client.get("/weird-cache/")
    assert response.status_code == 200 and response.json() == {"many": None, "has": "maybe"}
    (tl,) = captured
    caches = by_kind(tl, "cache")
    assert [c.name for c in caches] == ["weird.set", "weird.get_many", "weird.has_key"]
    assert all("unfinished" not in c.attrs for c in caches)
    assert "cache.hits" not in caches[1].attrs and caches[2].attrs["cache.hit"] is False


def test_a_cache_method_calling_its_own_backend_is_one_stage(captured):
    """``get_or_set`` calls the same backend's ``get`` and ``add``: one cache stage, the outer
    call, not three nested ones (the recorder's ``enter_owned(..., once=True)``)."""
    from django.core.cache import caches

    import stagetrace

    caches["default"].delete("once-key")
    with stagetrace.timeline("job"):
        assert caches["default"].get_or_set("once-key", 7) == 7
    (tl,) = captured
    assert [c.name.rsplit(".", 1)[-1] for c in by_kind(tl, "cache")] == ["get_or_set"]


def test_static_files_served_through_the_static_handler_end_their_timeline(captured):
    """StaticFilesHandler (what runserver and LiveServerTestCase serve through) overrides
    get_response; its timelines were never emitted and stayed counted in flight."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler

    handler = StaticFilesHandler(WSGIHandler())
    before = len(STATE.in_flight)
    for _ in range(3):
        status, body = wsgi_get(handler, "/static/site.css")
        assert status.startswith("200") and b"teal" in body
    assert len(captured) == 3
    assert all(t.path == "/static/site.css" and t.status == 200 for t in captured)
    assert len(STATE.in_flight) == before
    status, _ = wsgi_get(handler, "/books.json")  # and the application's own requests too
    assert status.startswith("200") and captured[-1].route == "books.json"


def test_a_stage_held_across_yield_in_a_streamed_body_closes(client, captured):
    """`with stage(...)` around the yields of a StreamingHttpResponse generator: Django resumes
    the generator in a restored context, which used to discard its position, so the stage ended
    'unfinished' and later stages attached to response.write."""
    response = client.get("/stream-stage/")
    body = b"".join(response.streaming_content)
    response.close()
    assert body.endswith(b"done\n")
    (tl,) = captured
    write = one(tl, "response.write")
    produce = one(tl, "custom", "produce rows")
    footer = one(tl, "custom", "footer")
    assert produce.parent == write.id and footer.parent == write.id
    assert "unfinished" not in produce.attrs and "unfinished" not in footer.attrs
    queries = by_kind(tl, "db.query")
    assert len(queries) == 3 and all(q.parent == produce.id for q in queries)
    assert footer.start_ns >= produce.end_ns


async def test_root_path_is_not_counted_twice_under_asgi(captured):
    """Behind `uvicorn --root-path /api`, current servers put the root path inside `path`
    already; prepending it again recorded /api/api/items and broke exclude_paths."""
    stagetrace.configure(exclude_paths=["^/api/health$"])
    handler = ASGIHandler()

    import asyncio

    def receiver():
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # no disconnect while the handler works

        return receive

    async def send(message):
        pass

    for path in ("/api/books.json", "/api/health"):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "root_path": "/api",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        await handler(scope, receiver(), send)
    assert [t.path for t in captured] == ["/api/books.json"]
    assert captured[0].route == "books.json"


def test_queued_timelines_keep_no_response_alive():
    """A stage named from the response object kept a 1 MB TemplateResponse alive while its
    timeline waited in the queue (49 MB after 50 requests with a slow sink). Names and
    attributes are plain data once the request ends."""
    from tests.djapp import views

    release = threading.Event()

    class SlowSink:
        def __init__(self) -> None:
            self.got: list = []

        def emit(self, timeline) -> None:
            release.wait(10)
            self.got.append(timeline)

    sink = SlowSink()
    stagetrace.configure(sinks=[sink], queue_size=100)
    views.RESPONSES.clear()
    client = Client()
    for _ in range(5):
        response = client.get("/big/")
        assert response.status_code == 200
        del response
    gc.collect()
    alive = [r for r in views.RESPONSES if r() is not None]
    release.set()
    assert stagetrace.flush(10)
    assert alive == []
    assert len(sink.got) == 5
    assert sink.got[0].of_kind("serialize")[0].name == "TemplateResponse books/list.html"


def _get_environ(path: str) -> dict[str, object]:
    """A GET of `path` as a WSGI server passes it to Django's WSGIHandler."""
    return wsgi_environ(path)


def test_a_handled_exception_keeps_no_frame_alive_until_the_response_closes():
    """A view raising Http404 under WSGIHandler: the timeline stays in flight until the server
    closes the response, and it used to keep the exception — with its traceback and the view's
    frames and locals — alive meanwhile (for ever if the response is dropped unclosed)."""
    from tests.djapp import views

    stagetrace.configure(sinks=["memory"])
    views.HELD.clear()
    environ = _get_environ("/missing-holding/")
    statuses: list[str] = []
    response = WSGIHandler()(
        environ, lambda status, headers, exc_info=None: statuses.append(status)
    )
    assert statuses == ["404 Not Found"]
    del response  # dropped without close(), as a crashed client connection can leave it
    gc.collect()
    assert [r() for r in views.HELD] == [None]


def test_a_stream_failing_mid_way_keeps_no_frame_alive():
    """A streamed body that raises after its first chunk under WSGIHandler: once the server has
    dropped the exception and closed the response, the body's frame (and what it holds) is
    freed by reference counting — the exception kept by stagetrace's body wrapper used to
    form a reference cycle that kept it until a garbage collection."""
    from tests.djapp import views

    stagetrace.configure(sinks=["memory"])
    views.HELD.clear()
    environ = _get_environ("/failing-stream-holding/")
    gc.collect()
    gc.disable()
    try:
        response = WSGIHandler()(environ, lambda status, headers, exc_info=None: None)
        body = iter(response)
        assert next(body) == b"first\n"
        with pytest.raises(RuntimeError, match="the stream failed"):
            next(body)
        del body
        response.close()
        del response
        stagetrace.flush()
        assert [r() for r in views.HELD] == [None]
    finally:
        gc.enable()


def test_a_stream_failing_mid_way_ends_the_request_with_its_exception(captured):
    """Under WSGIHandler, a streamed body that raises after its first chunk (the server then
    aborts the response and closes it): the exception is on response.write and on the
    gateway, the request's root — it ended the request, so error rules (the OpenTelemetry
    sink's keep-errors) keep it although the status sent was 200."""
    environ = _get_environ("/failing-stream-holding/")
    response = WSGIHandler()(environ, lambda status, headers, exc_info=None: None)
    body = iter(response)
    assert next(body) == b"first\n"
    with pytest.raises(RuntimeError, match="the stream failed"):
        next(body)
    response.close()
    stagetrace.flush()
    (tl,) = captured
    root = tl.stages[0]
    write = next(s for s in tl.stages if s.kind == "response.write")
    assert (tl.status, root.kind, root.error.type) == (200, "gateway", "RuntimeError")
    assert write.error.type == "RuntimeError"


def test_a_route_whose_attributes_fail_keeps_its_name(captured, monkeypatch):
    """Reading the matched route's attributes failing inside a request: counted, the response
    unchanged, and the route stage still named after the route (only its attributes lost)."""
    from stagetrace.django import _views

    def broken(match):
        raise RuntimeError("no attributes")

    monkeypatch.setattr(_views, "_route_attrs", broken)
    response = Client().get("/books.json")
    assert response.status_code == 200
    (tl,) = captured
    route = one(tl, "route")
    assert route.name == "books.json" and tl.route == "books.json"
    assert "http.route" not in route.attrs
    assert stagetrace.stats()["internal_errors_by_site"] == {"django.route": 1}


def test_a_parameter_that_cannot_be_hashed_still_closes_its_query_stage(captured):
    """Telling repeated queries apart hashes their parameters; when that raises, the query is
    still a stage that ends, and the queries after it are recorded where they run."""
    from django.db import connection

    with unhashable_param() as param, stagetrace.timeline("job"), connection.cursor() as cursor:
        cursor.execute("SELECT %s", [param])
        assert cursor.fetchone() == (7,)
        with stagetrace.stage("after"):
            cursor.execute("SELECT 2")
    (tl,) = captured
    queries = [s for s in tl.stages if s.kind == "db.query"]
    assert [tl.stages[s.parent].name for s in queries] == ["job", "after"]
    assert not any(s.attrs.get("unfinished") for s in tl.stages)


class _NoRepr(str):
    """A query parameter that cannot be turned into text (so recording it, with
    record_sql_params, fails): neither whole (``repr``) nor cut (slicing, which is what
    stagetrace takes of a long ``str``)."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __getitem__(self, key: object) -> str:  # type: ignore[override]
        raise RuntimeError("no slice")


def test_a_statements_error_is_not_chained_to_an_internal_error(captured):
    """When opening a query's stage fails (a parameter whose repr fails, with record_sql_params
    on), the statement runs unrecorded, and outside stagetrace's except block: the driver's
    error (that Django's wraps) is not "during handling of" ours."""
    from django.db import OperationalError, connection

    stagetrace.configure(record_sql_params=True)
    with (
        stagetrace.timeline("job"),
        connection.cursor() as cursor,
        pytest.raises(OperationalError, match="no such table") as raised,
    ):
        cursor.execute("SELECT * FROM missing WHERE name = %s", [_NoRepr("x")])
    driver_error = raised.value.__cause__
    assert isinstance(driver_error, sqlite3.OperationalError)
    assert driver_error.__context__ is None
    # (sqlite3's own DB-API wrapper, installed by an earlier test of the suite, may count one
    # too: it records the same parameters underneath Django's)
    assert stagetrace.stats()["internal_errors_by_site"]["django.db"] == 1


def test_a_statement_after_its_timeline_ended_runs_once(captured):
    """Work a request left running (a task holding a copy of its context) runs its statements
    after the timeline ended: unrecorded, once, and a failing one's error is the application's,
    not an internal error of stagetrace's followed by the statement run again."""
    from django.db import OperationalError, connection

    runs: list[str] = []

    def counting(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        runs.append(sql)
        return execute(sql, params, many, context)

    with stagetrace.timeline("job"):
        left_running = contextvars.copy_context()
    with (
        connection.execute_wrapper(counting),
        connection.cursor() as cursor,
        pytest.raises(OperationalError) as raised,
    ):
        left_running.run(cursor.execute, "SELECT * FROM missing")
    assert runs == ["SELECT * FROM missing"]
    assert raised.value.__cause__.__context__ is None
    assert stagetrace.stats()["internal_errors"] == 0


def test_a_query_django_knows_to_be_empty_is_no_error(captured):
    """``filter(pk__in=[])`` and a subquery that matches nothing make Django's compiler raise
    ``EmptyResultSet``, which Django catches itself: the query is simply not run (or the
    subquery is replaced by a condition). Nothing failed, so no stage of the timeline carries
    an error — an ``orm.compile`` stage with ``EmptyResultSet`` was exported as an ERROR span."""
    from tests.djapp.models import Author, Book

    with stagetrace.timeline("job"):
        assert list(Book.objects.filter(pk__in=[])) == []
        assert Book.objects.filter(pk__in=[]).count() == 0
        assert Book.objects.exclude(author__in=Author.objects.filter(pk__in=[])).count() == 6
        assert Book.objects.filter(pk__in=[]).update(title="never") == 0
    stagetrace.flush()
    (tl,) = captured
    compiles = [s for s in tl.stages if s.kind == "orm.compile"]
    assert len(compiles) >= 4
    assert [(s.name, s.error) for s in tl.stages if s.error is not None] == []


async def test_a_status_set_as_an_httpstatus_member_is_the_timelines_status(captured):
    """``response.status_code = HTTPStatus.CREATED`` (an int subclass): the timeline's status
    is 201, as a plain int, under the WSGI handler, the test client and the ASGI handler — it
    was left out (None) because only a plain int is kept once the timeline is sealed."""
    import asyncio

    from asgiref.sync import sync_to_async

    status, _ = await sync_to_async(wsgi_get)(WSGIHandler(), "/created/")
    assert status.startswith("201")
    assert (await sync_to_async(Client().get)("/created/")).status_code == 201

    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/created/",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await ASGIHandler()(scope, receive, send)
    assert sent[0]["status"] == 201
    stagetrace.flush()
    assert [(t.stages[0].name, t.status) for t in captured] == [
        ("WSGI", 201),
        ("test client", 201),
        ("ASGI", 201),
    ]
    assert all(type(t.status) is int for t in captured)
    assert all(t.stages[0].attrs["http.response.status_code"] == 201 for t in captured)


def test_one_response_object_served_to_overlapping_requests_ends_both_timelines(captured):
    """A view returning the same response object (a module-level response) to two requests a
    threaded server serves at once: each timeline ends when the server closes the response
    for its request — the second request's registration replaced the first one's, so the
    first timeline never ended, never reached a sink, and stayed in flight for good."""
    handler = WSGIHandler()

    def start(rid: str):
        environ = wsgi_environ(
            "/shared/",
            SCRIPT_NAME="",
            HTTP_X_REQUEST_ID=rid,
            **{"wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False},
        )
        return handler(environ, lambda s, h, exc_info=None: None)

    first = start("first")
    second = start("second")  # served before the server is done with the first
    assert first is second
    for body in (first, second):
        assert b"".join(body) == b"the same object every time"
        body.close()
    stagetrace.flush()
    assert sorted(t.request_id for t in captured) == ["first", "second"]
    assert not [tl for tl in STATE.in_flight if tl.request_id in ("first", "second")]


def test_requests_served_inside_a_request_leave_its_timeline_to_it(client, captured):
    """A view serving sub-requests itself (a batch view: ``BaseHandler.get_response``, or the
    test client) — their stages are the view's work, and the response Django's handler
    returns for them is theirs, not the request's: the request's timeline ends when its own
    response is closed, with its own status and its own ``response.write``, and only its own
    response gets the Server-Timing header. The sub-request's response used to be taken for
    it: a sub-request's status was the request's, the timeline ended when the test client
    closed the sub-request's response (mid-view) or never ended at all (nobody closed it)."""
    stagetrace.configure(server_timing=True)
    response = client.get("/batch/")
    assert response.status_code == 200
    assert response.json()["answers"] == [
        {"status": 201, "server_timing": False},
        {"status": 201, "server_timing": False},
    ]
    assert response.has_header("Server-Timing")
    stagetrace.flush()
    (tl,) = captured
    assert tl.path == "/batch/" and tl.status == 200
    view = one(tl, "view", "tests.djapp.views.batch")
    assert [s.name for s in by_kind(tl, "view")].count("tests.djapp.views.created_with_enum") == 2
    (write,) = by_kind(tl, "response.write")
    assert write.parent == 0 and write.start_ns >= view.start_ns + view.duration_ns
    assert not [t for t in STATE.in_flight if t.path == "/batch/"]


def test_a_view_made_per_url_configuration_is_not_kept_alive(captured):
    """A view made in a function — a URL configuration built per test (``override_settings(
    ROOT_URLCONF=...)``), a view factory — is named in its stages; the cache of view names
    used to hold a reference to the view itself, and so whatever its closure holds, for good:
    serving it recorded must leave it with as many references as serving it untraced."""
    import types

    from django.http import HttpResponse
    from django.test import override_settings

    def build() -> types.ModuleType:
        held = bytearray(1 << 20)

        def made_view(request):  # type: ignore[no-untyped-def]
            return HttpResponse(str(len(held)))

        urls = types.ModuleType("per_test_urls")
        urls.urlpatterns = [path("made/", made_view)]  # type: ignore[attr-defined]
        return urls

    from django.urls import path

    from ..djapp.middleware import SEEN_VIEWS

    urls = build()
    view = urls.urlpatterns[0].callback  # type: ignore[attr-defined]

    def references_after_a_request() -> int:
        with override_settings(ROOT_URLCONF=urls):
            assert Client().get("/made/").content == b"1048576"
        SEEN_VIEWS.clear()  # the test app's middleware notes each view it sees
        gc.collect()
        return sys.getrefcount(view)

    stagetrace.django.uninstrument()
    try:
        untraced = [references_after_a_request() for _ in range(2)]
    finally:
        stagetrace.django.instrument()
    traced = [references_after_a_request() for _ in range(2)]
    (tl, _) = captured
    assert one(tl, "view").name.endswith("build.<locals>.made_view")
    assert untraced[0] == untraced[1] == traced[0] == traced[1]


def test_a_model_made_in_a_test_is_freed_with_it(captured):
    """A model class made in a test (``isolate_apps``, as Django's and many libraries' own
    test suites do) whose queries were compiled while recording: the caches of compile and
    fetch stage names used to hold the class, and with it its registry, for good."""
    import weakref

    from django.db import connection, models
    from django.test.utils import isolate_apps

    def use_a_model() -> weakref.ref[type]:
        with isolate_apps("tests.djapp"):

            class Gadget(models.Model):
                name = models.CharField(max_length=10)

                class Meta:
                    app_label = "djapp"

            with connection.schema_editor() as editor:
                editor.create_model(Gadget)
            try:
                with stagetrace.timeline("job"):
                    assert list(Gadget.objects.filter(name="x")) == []
            finally:
                with connection.schema_editor() as editor:
                    editor.delete_model(Gadget)
            return weakref.ref(Gadget)

    gadget = use_a_model()
    (tl,) = captured
    assert one(tl, "orm.compile").name == "SELECT djapp.Gadget"
    assert one(tl, "orm.fetch").name == "djapp.Gadget"
    del tl
    captured.clear()
    gc.collect()
    assert gadget() is None


def test_request_methods_a_client_makes_up_do_not_fill_the_view_name_cache(captured):
    """The view-name cache is keyed by view and request method, and the method is whatever
    token the client sends: made-up methods are named (a 405) but not cached, so no client can
    fill the cache and push the application's own views out of it."""
    from stagetrace.django import _views

    Client().get("/books.json")
    before = len(_views._views)
    for i in range(50):
        assert Client().generic(f"JUNK{i}", "/books.json").status_code in (200, 405)
    assert len(_views._views) == before
    assert len(captured) == 51  # every request recorded all the same
