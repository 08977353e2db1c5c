"""A Django request yields the full stage timeline, recorded through the test Client."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.test import Client

import stagetrace

from .conftest import by_kind, descendants, one

STANDARD_MIDDLEWARE = settings.MIDDLEWARE


@pytest.fixture
def client() -> Client:
    return Client()


def test_n_plus_one_json_view_has_every_stage(client, captured):
    """Gateway, each middleware with both phases, route, view, compile+query per query,
    fetch and serialization, in one timeline."""
    response = client.get("/books.json")
    assert response.status_code == 200
    (tl,) = captured
    assert tl.framework == "django" and tl.protocol == "http"
    assert tl.method == "GET" and tl.path == "/books.json"
    assert tl.route == "books.json" and tl.status == 200
    assert tl.service == "djapp-tests"
    gateway = tl.stages[0]
    assert gateway.kind == "gateway" and gateway.name == "test client"
    assert gateway.attrs["http.request.method"] == "GET"
    assert gateway.attrs["http.response.status_code"] == 200

    chain = [s for s in by_kind(tl, "middleware") if not s.name.endswith(".process_view")]
    assert [s.name for s in chain] == STANDARD_MIDDLEWARE
    parent = gateway.id
    for st in chain:
        assert st.parent == parent, st.name  # each middleware nests in the previous one
        assert st.short_circuit is False
        assert st.phases["in"] > 0 and st.phases["out"] > 0
        assert st.phases["in"] + st.phases["out"] <= st.duration_ns
        parent = st.id
    innermost = chain[-1]

    route = one(tl, "route")
    assert route.name == "books.json" and route.parent == innermost.id
    assert route.attrs["django.view_name"] == "books-json"
    view = one(tl, "view")
    assert view.name == "tests.djapp.views.books_json" and view.parent == innermost.id

    queries = by_kind(tl, "db.query")
    compiles = by_kind(tl, "orm.compile")
    fetches = by_kind(tl, "orm.fetch")
    assert len(queries) == 7  # 1 for the books + 6 authors: the N+1
    assert len(compiles) == 7 and len(fetches) == 7
    inside_view = {s.id for s in descendants(tl, view)}
    assert all(q.id in inside_view for q in queries + compiles + fetches)
    assert fetches[0].name == "djapp.Book" and fetches[0].attrs["rows"] == 6
    assert {f.name for f in fetches[1:]} == {"djapp.Author"}
    for q in queries:
        assert q.parent in {f.id for f in fetches}
        assert q.attrs["db.system.name"] == "sqlite"
    assert all("%s" in q.attrs["db.query.text"] for q in queries[1:])  # placeholders only
    assert queries[0].name == "SELECT djapp_book"
    assert queries[1].name == "SELECT djapp_author"
    assert compiles[0].name == "SELECT djapp.Book"
    for c, q in zip(compiles, queries, strict=True):
        assert c.end_ns <= q.start_ns  # compiled, then executed
    (ser,) = by_kind(tl, "serialize")
    assert ser.name == "JsonResponse" and ser.parent == view.id
    write = one(tl, "response.write")
    assert write.parent == gateway.id
    assert tl.by_kind["db.query"].count == 7


def test_template_page_nests_extends_and_includes(client, captured):
    """A Django template page yields nested template stages: page, parent, each include."""
    assert client.get("/books/").status_code == 200
    (tl,) = captured
    templates = by_kind(tl, "template")
    page = next(t for t in templates if t.name == "books/list.html")
    base = next(t for t in templates if t.name == "base.html")
    rows = [t for t in templates if t.name == "books/_row.html"]
    assert base.parent == page.id
    assert len(rows) == 6 and all(r.parent == base.id for r in rows)
    assert page.attrs["template.engine"] == "django"
    view = one(tl, "view")
    assert page.parent == view.id
    assert tl.route == "books/"


def test_template_response_is_serialized_after_the_view(client, captured):
    """A TemplateResponse renders after the view returns: a serialize stage outside it."""
    client.get("/books/template-response/")
    (tl,) = captured
    ser = one(tl, "serialize")
    assert ser.name == "TemplateResponse books/list.html"
    view = one(tl, "view")
    assert ser.parent == view.parent and ser.start_ns >= view.end_ns
    assert any(t.parent == ser.id for t in by_kind(tl, "template"))


def test_jinja2_backend_templates_nest(client, captured):
    """Jinja2 pages, their parent layout and includes are nested template stages."""
    assert client.get("/jinja/").status_code == 200
    (tl,) = captured
    templates = by_kind(tl, "template")
    names = [t.name for t in templates]
    assert names[:2] == ["page.jinja", "layout.jinja"]
    assert names.count("item.jinja") == 3
    page, layout = templates[0], templates[1]
    assert layout.parent == page.id
    assert all(t.parent == layout.id for t in templates if t.name == "item.jinja")
    assert page.attrs["template.engine"] == "jinja2"


def test_class_based_view_and_namespaced_include_route(client, captured):
    """Routes from include() with a namespace are joined; CBVs are named Class.method."""
    assert client.get("/shop/books/1/").status_code == 200
    (tl,) = captured
    assert tl.route == "shop/books/<int:pk>/"
    route = one(tl, "route")
    assert route.attrs["django.view_name"] == "shop:book-detail"
    assert route.attrs["django.namespace"] == "shop"
    assert one(tl, "view").name == "tests.djapp.views.BookDetail.get"


def test_regex_route_is_its_pattern(client, captured):
    client.get("/legacy/abc/")
    assert captured[0].route == "^legacy/(?P<slug>[a-z]+)/$"


def test_unresolved_url_records_a_failed_route_and_404(client, captured):
    """A 404 from URL resolution is a route stage carrying Resolver404; no route template."""
    assert client.get("/nowhere/").status_code == 404
    (tl,) = captured
    route = one(tl, "route")
    assert route.error.type == "django.urls.exceptions.Resolver404"
    assert route.attrs["url.path"] == "/nowhere/"
    assert tl.route is None and tl.status == 404
    # No view ran; building the 404 response (handler404 and its template) is its own stage,
    # inside the innermost middleware instead of being counted as that middleware's self time.
    (handler,) = by_kind(tl, "view")
    assert handler.name == "error response Resolver404"
    innermost = one(tl, "middleware", "tests.djapp.middleware.ViewSpyMiddleware")
    assert handler.parent == innermost.id and handler.start_ns >= route.end_ns


def test_short_circuiting_middleware_is_marked(client, captured):
    """A middleware answering without the next layer has short_circuit and no inner stages."""
    assert client.get("/short/").content == b"short"
    (tl,) = captured
    short = one(tl, "middleware", "tests.djapp.middleware.ShortCircuitMiddleware")
    assert short.short_circuit is True
    assert short.phases == {"in": short.duration_ns, "out": 0}
    assert descendants(tl, short) == []
    outer = one(tl, "middleware", "django.middleware.security.SecurityMiddleware")
    assert outer.short_circuit is False


def test_process_view_hooks_are_their_own_stages_and_see_the_real_view(client, captured):
    """process_view is recorded as <path>.process_view and receives the user's own view."""
    from tests.djapp import views
    from tests.djapp.middleware import SEEN_VIEWS

    SEEN_VIEWS.clear()
    client.get("/books.json")
    assert [views.books_json] == SEEN_VIEWS  # identity, not a wrapper
    (tl,) = captured
    hooks = [s for s in by_kind(tl, "middleware") if s.name.endswith(".process_view")]
    assert "tests.djapp.middleware.ViewSpyMiddleware.process_view" in [h.name for h in hooks]
    assert "django.middleware.csrf.CsrfViewMiddleware.process_view" in [h.name for h in hooks]
    assert all(h.short_circuit is False for h in hooks)


def test_csrf_exempt_still_works(captured):
    """A csrf_exempt view accepts a POST without a token; others are still protected."""
    client = Client(enforce_csrf_checks=True)
    assert client.post("/exempt/").status_code == 200
    assert client.post("/books.json").status_code == 403
    csrf = [s for s in captured[1].stages if s.name.endswith("CsrfViewMiddleware.process_view")]
    assert csrf[0].short_circuit is True


def test_view_exception_is_recorded_and_the_app_answers_as_without_stagetrace(client, captured):
    """The view stage carries the exception; Django's 500 handling is unchanged."""
    from tests.djapp.views import ViewError

    client.raise_request_exception = True
    with pytest.raises(ViewError, match="the view failed"):
        client.get("/boom/")
    client.raise_request_exception = False
    assert client.get("/boom/").status_code == 500
    tl = captured[-1]
    view = one(tl, "view", "tests.djapp.views.boom")
    assert view.error.type == "tests.djapp.views.ViewError"
    assert view.error.message == "the view failed"
    assert tl.status == 500
    # Building the 500 response is a stage of its own, after the view, inside the chain.
    handler = one(tl, "view", "error response ViewError")
    assert handler.start_ns >= view.end_ns and handler.error is None
    assert handler.attrs["exception.type"] == "tests.djapp.views.ViewError"
    for mw in by_kind(tl, "middleware"):
        assert mw.error is None  # Django turned the exception into a response at the view


def test_streaming_response_timeline_lasts_until_the_last_chunk(client, captured):
    """Streaming: the timeline ends after the last chunk; chunk work nests in response.write."""
    response = client.get("/stream/")
    assert captured == []  # not finished while the body is unread
    body = b"".join(response.streaming_content)
    assert body.count(b"chunk") == 3
    (tl,) = captured
    write = one(tl, "response.write")
    assert write.attrs["chunks"] == 3 and write.attrs["http.response.body.size"] == len(body)
    assert write.duration_ns >= 60_000_000
    assert tl.duration_ns >= write.end_ns
    inside = descendants(tl, write)
    assert [q.kind for q in inside].count("db.query") == 3


def test_file_response_ends_on_close(client, captured):
    """A FileResponse timeline ends when the response is closed after reading."""
    response = client.get("/download/")
    assert captured == []
    b"".join(response.streaming_content)
    response.close()
    (tl,) = captured
    assert tl.status == 200 and one(tl, "response.write") is not None


def test_drf_view_serializer_and_renderer(client, captured):
    """DRF: viewset action named, serializer .data and the renderer as serialize stages."""
    assert client.get("/api/books/").status_code == 200
    (tl,) = captured
    assert one(tl, "view").name == "tests.djapp.views.BookViewSet.list"
    names = [s.name for s in by_kind(tl, "serialize")]
    assert "BookSerializer(many=True).data" in names
    assert "Response rest_framework.renderers.JSONRenderer" in names
    assert tl.route == "^api/books/$"  # DRF routers use regex patterns


def test_drf_function_views_are_named_after_their_function(client, captured):
    """``@api_view`` functions: DRF builds a class for each (named after the function, but
    every one with the qualified name ``WrappedAPIView``): each view stage is named after its
    own function, as a function view is — not ``module.WrappedAPIView.get`` for all of them."""
    assert client.get("/api/titles/").status_code == 200
    assert client.get("/api/names/").status_code == 200
    assert [one(tl, "view").name for tl in captured] == [
        "tests.djapp.views.book_titles",
        "tests.djapp.views.author_names",
    ]


def test_raw_cursor_and_raw_queryset_are_recorded_without_parameter_values(client, captured):
    """Raw cursor SQL and .raw() are db.query stages; parameter values are not recorded."""
    client.get("/raw/")
    (tl,) = captured
    statements = [q.attrs["db.query.text"] for q in by_kind(tl, "db.query")]
    assert any("COUNT(*)" in s for s in statements)
    assert any("djapp_author" in s for s in statements)
    assert "secret-value" not in repr(tl.to_dict())
    assert any(f.name == "djapp.Author" for f in by_kind(tl, "orm.fetch"))


def test_sql_parameter_values_only_when_opted_in(client, captured):
    stagetrace.configure(record_sql_params=True)
    client.get("/raw/")
    assert "secret-value" in repr(captured[0].to_dict())


def test_atomic_block_commit_and_inserts(client, captured):
    """transaction.atomic is a transaction stage with the INSERTs and the commit inside."""
    client.get("/atomic/")
    (tl,) = captured
    atomic = next(s for s in by_kind(tl, "transaction") if s.name == "atomic")  # then delete()
    assert atomic.attrs["outcome"] == "commit" and atomic.attrs["stagetrace.db.alias"] == "default"
    inside = descendants(tl, atomic)
    assert [s.name for s in inside if s.kind == "db.query"].count("INSERT djapp_author") == 1
    assert any(s.kind == "transaction" and s.name == "commit" for s in inside)


def test_session_load_and_save(client, captured):
    """Reading and changing the session are session stages with their queries inside."""
    client.get("/session/")
    client.get("/session/")
    tl = captured[-1]
    names = [s.name for s in by_kind(tl, "session")]
    assert names == ["load", "save"]
    load = one(tl, "session", "load")
    assert any(s.kind == "db.query" for s in descendants(tl, load))


def test_locmem_cache_hits_and_misses(client, captured):
    """Cache calls are cache stages named alias.operation with hit or miss."""
    client.get("/cache/default/")
    (tl,) = captured
    calls = by_kind(tl, "cache")
    assert [c.name for c in calls] == [
        "default.get",
        "default.set",
        "default.get",
        "default.get_many",
    ]
    assert calls[0].attrs["cache.hit"] is False or calls[0].attrs["cache.hit"] is True
    assert calls[2].attrs["cache.hit"] is True
    assert calls[3].attrs["cache.keys"] == 2 and calls[3].attrs["cache.hits"] == 1
    assert calls[0].attrs["cache.backend"] == "LocMemCache"


def test_assert_num_queries_is_unchanged(captured):
    """stagetrace runs no queries of its own: Django counts the same with and without it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    import stagetrace.django

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            Client().get(url)
        return len(ctx.captured_queries)

    urls = ["/books.json", "/books/", "/session/", "/atomic/", "/api/books/", "/raw/"]
    with_stagetrace = [count(u) for u in urls]
    stagetrace.django.uninstrument()
    try:
        without = [count(u) for u in urls]
    finally:
        stagetrace.django.instrument()
    assert with_stagetrace == without
    assert with_stagetrace[0] == 7
    assert len(captured) == len(urls)


def test_request_id_from_header_and_not_echoed_by_default(client, captured):
    """A valid X-Request-ID becomes the request id; nothing is added to the response."""
    response = client.get("/request-id/", headers={"X-Request-ID": "req-123"})
    assert response.json() == {"request_id": "req-123"}
    assert not response.has_header("X-Request-ID")
    assert captured[0].request_id == "req-123"
    bad = client.get("/request-id/", headers={"X-Request-ID": "bad id with spaces"})
    assert bad.json()["request_id"] == captured[1].trace_id


def test_request_id_is_echoed_when_asked(client, captured):
    stagetrace.configure(echo_request_id=True)
    response = client.get("/request-id/")
    assert response["X-Request-ID"] == captured[0].request_id


def test_a_reused_response_echoes_each_requests_own_id(client, captured):
    """A response object served to more than one request (a module-level response) echoes
    each request's own id: the header stagetrace set for an earlier request is not taken for
    one the application set, which would send one client another request's id. A value the
    application sets itself is still left alone."""
    from tests.djapp.views import SHARED_RESPONSE

    stagetrace.configure(echo_request_id=True)
    try:
        echoed = [
            client.get("/shared/", headers={"X-Request-ID": rid})["X-Request-ID"]
            for rid in ("first-request", "second-request")
        ]
        assert echoed == ["first-request", "second-request"]
        SHARED_RESPONSE["X-Request-ID"] = "the-apps-own"
        assert client.get("/shared/", headers={"X-Request-ID": "third"})["X-Request-ID"] == (
            "the-apps-own"
        )
    finally:
        del SHARED_RESPONSE["X-Request-ID"]


def test_queue_time_and_traceparent_are_used(client, captured):
    """X-Request-Start gives queue time; a traceparent's trace id is kept."""
    import time

    start = f"t={time.time() - 0.25:.3f}"
    client.get(
        "/books.json",
        headers={
            "X-Request-Start": start,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    (tl,) = captured
    assert 200_000_000 <= tl.stages[0].attrs["stagetrace.queue_time_ns"] < 5_000_000_000
    assert tl.trace_id == "0af7651916cd43dd8448eb211c80319c"


def test_the_jsonl_sink_writes_the_trace_context_a_request_came_with(client, tmp_path):
    """A JSON lines file joins each timeline to its distributed trace (schema @3): the caller's
    span, its flags and tracestate are written and read back; a request without a
    traceparent has no parent."""
    from stagetrace.sinks import read_jsonl

    out = tmp_path / "timelines.jsonl"
    stagetrace.configure(sinks=["jsonl"], jsonl=str(out))
    client.get(
        "/books.json",
        headers={
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "tracestate": "congo=t61rcWkgMzE",
        },
    )
    client.get("/books.json")
    stagetrace.flush(timeout=10)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["schema"] for d in lines] == [stagetrace.SCHEMA] * 2
    first, second = lines
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert {k: first[k] for k in PARENT} == {
        "parent_span_id": "b7ad6b7169203331",
        "parent_is_remote": True,
        "trace_flags": 0,
        "tracestate": "congo=t61rcWkgMzE",
    }
    assert {k: second[k] for k in PARENT} == {
        "parent_span_id": None,
        "parent_is_remote": False,
        "trace_flags": 1,
        "tracestate": None,
    }
    with out.open() as f:
        back = list(read_jsonl(f))
    assert [t.to_dict() for t in back] == lines


PARENT = ("parent_span_id", "parent_is_remote", "trace_flags", "tracestate")


def test_excluded_paths_and_sampling_apply(client, captured):
    stagetrace.configure(exclude_paths=[r"^/books"])
    client.get("/books.json")
    client.get("/shop/books/1/")
    assert [t.path for t in captured] == ["/shop/books/1/"]


def test_middleware_exception_is_recorded_on_that_middleware(client, captured):
    """An exception raised by a middleware is on its stage; Django answers 500 as usual."""
    from tests.djapp.middleware import MiddlewareError

    client.raise_request_exception = False
    assert client.get("/mw-error/").status_code == 500
    (tl,) = captured
    broken = one(tl, "middleware", "tests.djapp.middleware.ShortCircuitMiddleware")
    assert broken.error.type == "tests.djapp.middleware.MiddlewareError"
    assert broken.short_circuit is True  # it never called the next layer
    outer = one(tl, "middleware", "django.middleware.clickjacking.XFrameOptionsMiddleware")
    assert outer.error is None and tl.status == 500
    assert outer.short_circuit is False  # the failing link still ended its in phase
    client.raise_request_exception = True
    with pytest.raises(MiddlewareError):
        client.get("/mw-error/")


class _OwnStage:
    """Calls the next layer inside a stage of its own, of the kind its request asks for."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with stagetrace.stage("session lock", kind=request.GET["kind"]):
            return self.get_response(request)


OWN_STAGE = [
    "tests.django.test_request_flow._OwnStage",
    "tests.djapp.middleware.ShortCircuitMiddleware",
]


@pytest.mark.parametrize("kind", ["custom", "middleware"])
def test_a_middleware_calling_the_next_layer_inside_its_own_stage_is_split(client, captured, kind):
    """A middleware that opens a stage of its own around calling the next layer — even one of
    kind ``middleware`` — is still split where it called the next layer: the next layer finds
    its caller by name, not by the nearest middleware-kind stage."""
    from django.test import override_settings

    with override_settings(MIDDLEWARE=OWN_STAGE):
        assert client.get(f"/books.json?kind={kind}").status_code == 200
    (tl,) = captured
    own = one(tl, "middleware", "tests.django.test_request_flow._OwnStage")
    assert own.short_circuit is False
    assert own.phases["in"] < own.duration_ns


def test_process_exception_hooks_are_stages(client, captured):
    """process_exception runs as <path>.process_exception; answering marks short_circuit."""
    client.raise_request_exception = False
    assert client.get("/boom/handled/").status_code == 503
    client.get("/boom/")
    handled, unhandled = captured
    name = "tests.djapp.middleware.ViewSpyMiddleware.process_exception"
    assert one(handled, "middleware", name).short_circuit is True
    assert one(unhandled, "middleware", name).short_circuit is False
    assert handled.status == 503


def test_gateway_records_process_thread_and_requests_in_flight(client, captured):
    import os
    import threading

    client.get("/books.json")
    attrs = captured[0].stages[0].attrs
    assert attrs["process.pid"] == os.getpid()
    assert attrs["thread.id"] == threading.get_ident()
    assert attrs["stagetrace.in_flight"] == 1


def test_outbound_http_calls_are_stages_inside_the_view(client, captured):
    """httpx and requests calls made by a view are http.client stages nested in it."""
    import http.server
    import threading

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/rates?key=secret"
        assert client.get("/outbound/", {"url": url}).json() == {"statuses": [204, 204]}
    finally:
        srv.shutdown()
        srv.server_close()
    tl = captured[0]
    view = one(tl, "view")
    calls = by_kind(tl, "http.client")
    assert len(calls) == 2 and all(c.parent == view.id for c in calls)
    assert calls[0].attrs["url.query"] == "key=REDACTED" and calls[0].attrs["url.path"] == "/rates"
