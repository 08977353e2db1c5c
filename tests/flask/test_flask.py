"""The Flask adapter: the stages of a Flask request, through Flask's test client and real
servers, with the app's behaviour unchanged."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from werkzeug.serving import make_server

import flask
import stagetrace
import stagetrace.flask
from stagetrace.wsgi import StagetraceMiddleware
from tests.flask import app as app_module
from tests.helpers import wsgi_environ


def rows(tl):
    """(depth, kind, name) of each stage, in order."""
    depth = {}
    out = []
    for s in tl.stages:
        depth[s.id] = 0 if s.parent is None else depth[s.parent] + 1
        out.append((depth[s.id], s.kind, s.name))
    return out


def only(tl, kind, name=None):
    found = [s for s in tl.stages if s.kind == kind and (name is None or s.name == name)]
    assert len(found) == 1, (kind, name, rows(tl))
    return found[0]


@contextmanager
def served(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


M = "tests.flask.app.create_app.<locals>."


def test_a_json_request_has_every_stage_in_order(client, captured):
    """GET /books/1: gateway, the URL rule as the route, each before_request function, the
    view with its sqlite3 query and jsonify nested (the Flask adapter records DB-API drivers
    too), the after_request and teardown functions after the view, and the body write."""
    r = client.get("/books/1", headers={"X-User": "ann"})
    assert r.json == {"id": 1, "title": "Dune"} and r.headers["X-User"] == "ann"
    tl = captured[0]
    assert (tl.framework, tl.route, tl.status, tl.method, tl.path) == (
        "flask",
        "/books/<int:book_id>",
        200,
        "GET",
        "/books/1",
    )
    assert rows(tl) == [
        (0, "gateway", "WSGI"),
        (1, "route", "/books/<int:book_id>"),
        (1, "middleware", M + "load_user"),
        (1, "middleware", M + "maintenance"),
        (1, "view", M + "book"),
        (2, "db.query", "SELECT book"),
        (2, "serialize", "jsonify"),
        (1, "middleware", M + "add_header"),
        (1, "middleware", M + "close_db"),
        (1, "response.write", "body"),
    ]
    route = only(tl, "route")
    assert route.attrs == {"http.route": "/books/<int:book_id>", "flask.endpoint": "book"}
    before = only(tl, "middleware", M + "load_user")
    assert before.attrs == {"flask.hook": "before_request"}
    assert before.short_circuit is False and before.phases["out"] == 0
    after = only(tl, "middleware", M + "add_header")
    assert after.attrs == {"flask.hook": "after_request"}
    assert after.phases["in"] <= after.phases["out"]
    assert only(tl, "middleware", M + "close_db").attrs == {"flask.hook": "teardown_request"}
    write = only(tl, "response.write")
    assert write.attrs["http.response.body.size"] == len(r.data)
    root = tl.stages[0]
    assert root.attrs["http.response.status_code"] == 200
    assert "http.response.sent_ns" in root.attrs
    assert all("unfinished" not in s.attrs for s in tl.stages)


def test_a_response_the_test_holds_unread_is_recorded_once_its_body_was_taken(client, captured):
    """Werkzeug's test client takes the body's first chunk and leaves the rest, and
    ``close()``, to the test. A response whose bytes it took in full (its ``Content-Length``)
    is sent: its timeline ends then, while the test still holds the response unread, so
    ``r = client.get(...); assert r.status_code == 200`` and then an assertion on the timelines
    sees the request (it used to end only once the response was read or dropped)."""
    r = client.get("/books/1")
    assert r.status_code == 200
    assert [t.path for t in captured] == ["/books/1"]
    write = only(captured[0], "response.write")
    assert write.attrs == {"chunks": 1, "http.response.body.size": int(r.headers["Content-Length"])}
    error = client.get("/books/9")  # an error page: its length is known as well
    assert error.status_code == 404
    assert [t.status for t in captured] == [200, 404]
    assert r.json == {"id": 1, "title": "Dune"} and error.data == b"nothing here"
    r.close()
    error.close()
    assert len(captured) == 2


def test_a_dict_returned_by_the_view_is_serialized_after_it(client, captured):
    """A view returning a list: the JSON encoding happens when Flask makes the response, after
    the view, as a serialize stage of its own."""
    assert len(client.get("/books").json) == 3
    names = [(d, k, n) for d, k, n in rows(captured[0]) if k in ("view", "serialize")]
    assert names == [(1, "view", M + "books"), (1, "serialize", "jsonify")]


def test_templates_nest_inside_the_view(client, captured):
    """render_template: the page, its parent (extends) and each include nested as rendered."""
    r = client.get("/page")
    assert b"<p>Emma</p>" in r.data
    tl = captured[0]
    view = only(tl, "view")
    page = only(tl, "template", "page.html")
    assert page.parent == view.id and page.attrs == {"template.engine": "jinja2"}
    base = only(tl, "template", "base.html")
    assert base.parent == page.id
    includes = [s for s in tl.stages if s.name == "row.html"]
    assert len(includes) == 3 and {s.parent for s in includes} <= {page.id, base.id}


def test_an_error_is_recorded_where_it_was_raised_and_the_handler_is_a_stage(client, captured):
    """The view's exception is on the view stage; the error handler that turned it into a
    response is a stage of its own, naming the exception type it handled."""
    r = client.get("/boom")
    assert r.status_code == 400 and r.json == {"error": "bad value"}
    tl = captured[0]
    view = only(tl, "view", M + "boom")
    assert view.error.type == "ValueError" and view.error.message == "bad value"
    handler = only(tl, "view", M + "handle_value_error")
    assert handler.attrs == {"flask.error_handler": "ValueError"}
    assert handler.parent == 0 and handler.start_ns >= view.start_ns + view.duration_ns
    assert tl.status == 400


def test_an_unmatched_url_carries_not_found_on_the_route(client, captured):
    """No rule matched: the route stage carries NotFound, the 404 handler answers."""
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.data == b"nothing here"
    tl = captured[0]
    route = only(tl, "route")
    assert route.name == "<unmatched>"
    assert route.error.type == "werkzeug.exceptions.NotFound"
    handler = only(tl, "view", M + "not_found")
    assert handler.attrs == {"flask.error_handler": "werkzeug.exceptions.NotFound"}
    assert tl.route is None and tl.status == 404


def test_abort_in_the_view(client, captured):
    """abort(404) inside the view: recorded on the view, handled by the 404 handler."""
    r = client.get("/books/99")
    assert r.status_code == 404 and r.data == b"nothing here"
    tl = captured[0]
    assert only(tl, "view", M + "book").error.type == "werkzeug.exceptions.NotFound"
    only(tl, "view", M + "not_found")


def test_an_unhandled_exception_becomes_a_500_as_without_stagetrace(app, captured):
    """Outside testing mode Flask turns an unhandled exception into a 500: it is recorded on
    the view, and the response is Flask's own."""
    app.testing = False
    with app.test_client().get("/crash") as r:
        assert r.status_code == 500
    tl = captured[0]
    assert only(tl, "view", M + "crash").error.type == "KeyError"
    assert tl.status == 500


def test_the_apps_exception_propagates_as_the_same_object(app, captured):
    """In testing mode Flask propagates the exception: it reaches the caller unchanged."""
    app.testing = True
    with pytest.raises(KeyError) as info:
        app.test_client().get("/crash")
    assert info.value is app_module.RAISED[-1]
    tl = captured[0]
    assert tl.stages[0].error.type == "KeyError"
    assert stagetrace.current_timeline() is None


def test_a_before_request_function_that_answers_short_circuits(client, captured):
    """A before_request function returning a response: marked short_circuit, no view."""
    r = client.get("/maintenance")
    assert r.status_code == 503 and r.data == b"down for maintenance"
    tl = captured[0]
    assert only(tl, "middleware", M + "maintenance").short_circuit is True
    assert not [s for s in tl.stages if s.kind == "view"]


def test_class_based_views_and_blueprints(client, captured):
    """MethodView: named Class.method; a blueprint's prefix is in the route, its own
    before_request function a stage too."""
    assert client.post("/items/7").status_code == 201
    assert client.get("/shop/orders/abc").data == b"order abc"
    item, order = captured
    assert only(item, "view").name == M + "ItemAPI.post"
    assert item.route == "/items/<int:item_id>"
    assert order.route == "/shop/orders/<name>"
    assert only(order, "middleware", M + "shop_open").attrs == {"flask.hook": "before_request"}


def test_async_view(client, captured):
    """An async view (run by Flask through asgiref) is the view stage."""
    assert client.get("/async").data == b"async ok"
    only(captured[0], "view", M + "async_view")


def test_streaming_with_context_nests_under_response_write(client, captured):
    """stream_with_context: each chunk's production nests under response.write; the teardown
    functions run when the stream ends, inside the timeline."""
    r = client.get("/stream")
    assert r.data == b"0,/stream\n1,/stream\n2,/stream\n"
    tl = captured[0]
    write = only(tl, "response.write")
    assert write.attrs["chunks"] == 3
    assert [s.parent for s in tl.stages if s.name.startswith("row ")] == [write.id] * 3


def test_a_stream_the_client_leaves_early_closes_cleanly_and_tears_down(app, captured):
    """stream_with_context, the client gone after two chunks: the server's close() raises
    nothing and the request's teardown functions run, as without stagetrace. (Producing the
    chunks in a context of stagetrace's own made Flask reset its request context there and
    raise from close(): the body must run in the server's context.)"""
    app_module.TORN_DOWN.clear()
    result = app(wsgi_environ("/stream"), lambda status, headers, exc_info=None: lambda data: None)
    body = iter(result)
    assert [next(body), next(body)] == [b"0,/stream\n", b"1,/stream\n"]
    result.close()
    assert "/stream" in app_module.TORN_DOWN  # (Flask 3.1 runs them twice for a stream)
    stagetrace.flush()
    (tl,) = captured
    assert only(tl, "response.write").attrs["chunks"] == 2


def test_under_a_real_server_with_an_outbound_call(app):
    """Werkzeug's threaded server on loopback: the timeline covers the request, an outbound
    httpx call to another loopback server nests under the view, and the backend's timeline
    is a child of that call in the same trace."""
    import httpx

    backend = app_module.create_app()
    stagetrace.configure(propagate_traceparent=True)
    with stagetrace.capture() as got, served(backend) as backend_url, served(app) as url:
        app_module.OUTBOUND_URL.append(backend_url)
        r = httpx.get(url + "/outbound", headers={"X-Request-ID": "flask-1"})
        assert r.json() == {"status": 200}
        import time

        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    outer = next(t for t in got if t.path == "/outbound")
    inner = next(t for t in got if t.path == "/books/1")
    assert outer.request_id == "flask-1"
    call = only(outer, "http.client")
    assert call.parent == only(outer, "view").id
    assert call.attrs["url.query"] == "secret=REDACTED"
    assert call.attrs["http.response.status_code"] == 200
    # The outbound call carried a traceparent naming its http.client stage (option
    # propagate_traceparent; on by default with the otel sink): the backend continues the trace.
    assert inner.trace_id == outer.trace_id
    assert inner.parent_span_id == outer.stage_span_id(call.id)


def test_instrument_one_app_only(captured):
    """instrument(app) records that app only; uninstrument() undoes it."""
    from tests.flask.app import create_app

    one, other = create_app(), create_app()
    assert stagetrace.flask.instrument(one) is one
    try:
        one.test_client().get("/books/1")
        other.test_client().get("/books/1")
        assert len(captured) == 1
        assert stagetrace.flask.is_instrumented(one)
        assert not stagetrace.flask.is_instrumented(other)
    finally:
        stagetrace.flask.uninstrument()
    one.test_client().get("/books/1")
    assert len(captured) == 1


class ComparedApp(flask.Flask):
    """An app class defining ``__eq__`` (which makes its instances unhashable)."""

    def __eq__(self, other: object) -> bool:
        return self is other


def test_an_app_mounted_under_a_prefix_has_the_prefix_in_its_route(app, captured):
    """An app mounted under ``/shop`` (Werkzeug's DispatcherMiddleware, or a server's
    ``SCRIPT_NAME``): the route includes the application root, as the path does and as
    OpenTelemetry's ``http.route`` asks, so two mounted apps' ``/books/<int:book_id>`` stay
    apart (the route was the rule alone, ``/books/<int:book_id>`` under ``/shop/books/1``)."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    front = flask.Flask("front")
    front.add_url_rule("/", "home", lambda: "home")
    front.wsgi_app = DispatcherMiddleware(front.wsgi_app, {"/shop": app})
    stagetrace.flask.instrument(front)
    client = front.test_client()
    assert client.get("/shop/books/1").json == {"id": 1, "title": "Dune"}
    assert client.get("/").data == b"home"
    mounted, home = captured
    assert (mounted.path, mounted.route) == ("/shop/books/1", "/shop/books/<int:book_id>")
    assert only(mounted, "route").name == "/shop/books/<int:book_id>"
    assert only(mounted, "route").attrs["http.route"] == "/shop/books/<int:book_id>"
    assert (home.path, home.route) == ("/", "/")


@pytest.mark.parametrize("wrong", ["factory", "wsgi_app", "blueprint", "name"])
def test_instrument_refuses_what_is_not_a_flask_app_in_one_line(wrong):
    """instrument(x) with something that is not a Flask app — the app factory, the app's
    ``wsgi_app``, a blueprint, its name — is a TypeError naming what was given and what is
    expected, and patches nothing (it was accepted silently, and no request was ever
    recorded)."""
    from tests.flask.app import create_app

    app = create_app()
    given = {
        "factory": create_app,
        "wsgi_app": app.wsgi_app,
        "blueprint": flask.Blueprint("shop", __name__),
        "name": "app",
    }[wrong]
    with pytest.raises(TypeError) as info:
        stagetrace.flask.instrument(given)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("stagetrace.flask.instrument() takes a Flask app")
    assert type(given).__name__ in message
    assert not stagetrace.flask.is_instrumented()


def test_instrument_takes_an_app_that_cannot_be_hashed(captured):
    """instrument(app) on an unhashable app records it (it used to raise a bare TypeError,
    leaving the class patches applied and counting an internal error on every request of
    every app); another app stays unrecorded, and a dead app's entry goes with it."""
    import gc

    one, other = ComparedApp(__name__), flask.Flask(__name__)
    for app in (one, other):
        app.add_url_rule("/", "index", lambda: "ok")
    assert stagetrace.flask.instrument(one) is one
    try:
        assert one.test_client().get("/").data == b"ok"
        assert other.test_client().get("/").data == b"ok"
        assert [tl.framework for tl in captured] == ["flask"]
        assert stagetrace.flask.is_instrumented(one)
        assert not stagetrace.flask.is_instrumented(other)
        assert stagetrace.stats()["internal_errors"] == 0
        third = ComparedApp(__name__)
        stagetrace.flask.instrument(third)
        key = id(third)
        del third
        gc.collect()
        from stagetrace.flask import _install

        assert key not in _install._apps.ids
    finally:
        stagetrace.flask.uninstrument()


def test_instrument_is_idempotent_and_reversible():
    """Patched attributes are restored exactly; instrumenting twice patches once."""
    from flask.json import provider

    from flask import ctx

    targets = (flask.Flask, ctx.RequestContext, provider.JSONProvider, provider.DefaultJSONProvider)
    before = [dict(vars(t)) for t in targets]
    stagetrace.flask.instrument()
    patched = [dict(vars(t)) for t in targets]
    stagetrace.flask.instrument()
    assert [dict(vars(t)) for t in targets] == patched
    assert patched != before
    stagetrace.flask.uninstrument()
    stagetrace.flask.uninstrument()
    assert [dict(vars(t)) for t in targets] == before


def test_the_apps_own_objects_are_untouched(app, client, captured):
    """The registered functions, view functions and wsgi_app are the app's own objects; a WSGI
    middleware the app puts on wsgi_app runs inside the timeline."""
    funcs = app.before_request_funcs[None]
    assert [f.__name__ for f in funcs] == ["load_user", "maintenance"]
    assert app.view_functions["book"].__name__ == "book"
    seen = []
    inner = app.wsgi_app

    def middleware(environ, start_response):
        seen.append(stagetrace.current_timeline() is not None)
        return inner(environ, start_response)

    app.wsgi_app = middleware
    client.get("/books/2")
    assert seen == [True] and len(captured) == 1
    assert app.before_request_funcs[None] is funcs


def test_with_the_generic_middleware_one_timeline(app, captured):
    """The generic WSGI middleware around an instrumented Flask app: one timeline, named
    flask, with Flask's stages."""
    wrapped = StagetraceMiddleware(app)
    from werkzeug.test import Client

    assert Client(wrapped).get("/books/3").status_code == 200
    assert len(captured) == 1
    tl = captured[0]
    assert tl.framework == "flask" and tl.route == "/books/<int:book_id>"


def test_bad_configuration_fails_at_instrument(monkeypatch):
    """A bad option fails at instrument(), not in a request."""
    monkeypatch.setenv("STAGETRACE_SAMPLE_RATE", "lots")
    with pytest.raises(stagetrace.ConfigurationError):
        stagetrace.flask.instrument()
    assert not stagetrace.flask.is_instrumented()


class _Payload:
    """A request's object, with a method registered as an after-request hook."""

    def stamp(self, response: Any) -> Any:
        response.headers["X-Stamped"] = "1"
        return response


def _note(payload: _Payload, response: Any) -> Any:
    return response


def test_a_function_made_per_request_is_not_kept_alive(instrumented, captured):
    """``after_this_request`` registers a new closure (or ``partial``, or bound method) on every
    request: once the request is over, none of them nor what they hold (the view's objects) is
    kept."""
    import functools
    import gc
    import weakref

    import flask

    Payload = _Payload
    note = _note

    app = flask.Flask(__name__)
    alive: list[weakref.ref[Payload]] = []

    @app.get("/report")
    def report() -> str:
        payload = Payload()
        alive.append(weakref.ref(payload))

        @flask.after_this_request
        def add_header(response: flask.Response) -> flask.Response:
            response.headers["X-Payload"] = type(payload).__name__
            return response

        flask.after_this_request(functools.partial(note, payload))
        flask.after_this_request(payload.stamp)
        return "ok"

    client = app.test_client()
    for _ in range(5):
        response = client.get("/report")
        assert response.headers["X-Payload"] == "_Payload"
        response.close()
    del response
    stagetrace.flush()
    gc.collect()
    assert [ref() for ref in alive] == [None] * 5
    hooks = [s.name for s in captured[0].stages if s.attrs.get("flask.hook") == "after_request"]
    assert any("add_header" in name for name in hooks)


def test_a_request_sampled_out_is_not_drawn_again_by_a_gateway_inside(captured, monkeypatch):
    """One sampling draw per request: Flask's ``__call__`` and ``wsgi_app`` are both gateways
    (either can be the entry), and a request the outer one sampled out was drawn again by the
    inner one — with ``sample_rate`` 0.5, 220 of 300 requests were recorded. The same for an
    app inside stagetrace's WSGI middleware."""
    from stagetrace import _recorder

    draws: list[float] = []

    def rand() -> float:  # the first draw of a request says no, any later one yes
        draws.append(0.9 if not draws else 0.1)
        return draws[-1]

    app = flask.Flask("sampled")
    app.add_url_rule("/hi", "hi", lambda: "hi")
    stagetrace.flask.instrument(app)
    try:
        stagetrace.configure(sample_rate=0.5)
        monkeypatch.setattr(_recorder, "_rand", rand)
        for wsgi in (app, StagetraceMiddleware(app)):
            draws.clear()
            body = wsgi(wsgi_environ("/hi"), lambda *a: None)
            assert b"".join(body) == b"hi"
            body.close()  # type: ignore[attr-defined]
            assert draws == [0.9]
        stagetrace.flush()
        assert captured == []
        monkeypatch.setattr(_recorder, "_rand", lambda: 0.1)  # and later requests are drawn
        assert app.test_client().get("/hi").data == b"hi"
        stagetrace.flush()
        assert [t.path for t in captured] == ["/hi"]
    finally:
        stagetrace.flask.uninstrument()
