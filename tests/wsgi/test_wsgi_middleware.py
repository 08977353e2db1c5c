"""The generic WSGI middleware around a bare WSGI app (no framework), under real servers
(wsgiref in a thread, gunicorn in a process) and called directly as a server would."""

from __future__ import annotations

import threading
import time
import wsgiref.simple_server
import wsgiref.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

import stagetrace
from stagetrace.wsgi import StagetraceMiddleware
from tests.helpers import wsgi_environ
from tests.servers import free_port, read_timelines, serve
from tests.wsgi import apps


def environ(path: str = "/", **extra: object) -> dict:
    return wsgi_environ(path, **{"wsgi.file_wrapper": wsgiref.util.FileWrapper, **extra})


class Server:
    """A minimal server loop, as PEP 3333 describes one: iterate, then close."""

    def __init__(self, app) -> None:
        self.app = app
        self.status: str | None = None
        self.headers: list | None = None

    def start_response(self, status, headers, exc_info=None):
        self.status, self.headers = status, headers
        return self.written.append

    def __call__(self, env: dict, close: bool = True) -> bytes:
        self.written: list[bytes] = []
        result = self.app(env, self.start_response)
        try:
            for chunk in result:
                self.written.append(chunk)
        finally:
            if close and hasattr(result, "close"):
                result.close()
        return b"".join(self.written)


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def wsgiref_server(app) -> Iterator[str]:
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def wait_for(timelines: list, count: int = 1) -> None:
    deadline = time.monotonic() + 5
    while len(timelines) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(timelines) >= count


def test_streamed_body_under_wsgiref_is_in_the_timeline(captured):
    """Under a real server (wsgiref on loopback) the timeline covers the body: a response.write
    stage with the chunks and bytes, the chunks' production nested in it, the moment the last
    chunk was taken as http.response.sent_ns, and the request's facts on the gateway."""
    app = StagetraceMiddleware(apps.app, service="bare")
    with wsgiref_server(app) as url:
        r = requests.get(
            url + "/stream?token=secret",
            headers={
                "X-Request-ID": "req-42",
                "X-Request-Start": f"t={time.time() - 0.25:.3f}",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            },
            timeout=10,
        )
        wait_for(captured)
    assert r.content == b"x" * 30
    tl = captured[0]
    assert (tl.framework, tl.protocol, tl.method, tl.path, tl.status) == (
        "wsgi",
        "http",
        "GET",
        "/stream",
        200,
    )
    assert tl.service == "bare" and tl.request_id == "req-42"
    assert tl.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    root = tl.stages[0]
    assert (root.kind, root.name) == ("gateway", "WSGI")
    assert root.attrs["url.query"] == "token=REDACTED"
    assert 200_000_000 <= root.attrs["stagetrace.queue_time_ns"] < 60_000_000_000
    assert root.attrs["http.response.status_code"] == 200
    assert root.attrs["http.response.body.size"] == 30
    write = next(s for s in tl.stages if s.kind == "response.write")
    assert write.parent == root.id
    assert write.attrs["chunks"] == 3 and write.attrs["http.response.body.size"] == 30
    chunks = [s for s in tl.stages if s.name.startswith("chunk")]
    assert [s.parent for s in chunks] == [write.id] * 3
    sent = root.attrs["http.response.sent_ns"]
    assert write.start_ns + write.duration_ns <= sent <= tl.duration_ns
    assert apps.CLOSED[-1] == "/stream"
    assert all("unfinished" not in s.attrs for s in tl.stages)


def test_file_wrapper_goes_back_to_the_server_unchanged(captured):
    """A response that is the server's wsgi.file_wrapper is returned as that very object (the
    server's sendfile path recognises it by type); the timeline still ends when the server
    closes it, sized by Content-Length."""
    app = StagetraceMiddleware(apps.app)
    got: list = []

    def start_response(status, headers, exc_info=None):
        got.append(status)
        return lambda data: None

    result = app(environ("/file"), start_response)
    assert type(result) is wsgiref.util.FileWrapper
    assert not captured
    body = b"".join(result)
    result.close()
    assert body == apps.FILE.read_bytes()
    assert result.filelike.closed
    assert "close" not in vars(result)
    tl = captured[0]
    assert tl.stages[0].attrs["http.response.body.size"] == len(body)
    assert "http.response.sent_ns" in tl.stages[0].attrs


def test_a_file_the_server_sends_is_a_response_write_stage(captured):
    """The server's sending of a ``wsgi.file_wrapper`` response (sendfile, under gunicorn) is
    the ``response.write`` stage, from the application's return to the server's close, sized
    by ``Content-Length``, as an iterated body's is (it had no stage: a large download's time
    was the gateway's own)."""
    app = StagetraceMiddleware(apps.app)
    result = app(environ("/file"), lambda status, headers, exc_info=None: lambda data: None)
    assert type(result) is wsgiref.util.FileWrapper
    body = b"".join(result)
    time.sleep(0.02)  # the server still sending
    result.close()
    tl = captured[0]
    (write,) = [s for s in tl.stages if s.kind == "response.write"]
    assert (write.name, write.parent) == ("body", 0)
    assert write.attrs == {"http.response.body.size": len(body)}
    assert write.duration_ns >= 20_000_000
    assert write.start_ns + write.duration_ns <= tl.stages[0].attrs["http.response.sent_ns"]


def test_gunicorn_sends_the_file_and_records_every_request(tmp_path):
    """gunicorn (a real server with its own wsgi.file_wrapper and sendfile) serves the app
    wrapped by the middleware: bodies are intact, timelines reach the jsonl sink, and the
    file response keeps gunicorn's sendfile path (its size comes from Content-Length)."""
    out = tmp_path / "timelines.jsonl"
    port = free_port()
    env = {"STAGETRACE_JSONL": str(out), "APP_SERVICE": "gunicorn-bare"}
    args = ["gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "tests.wsgi.apps:make_application()"]
    with serve(args, env, tmp_path / "gunicorn.log", port) as url:
        assert requests.get(url + "/file", timeout=10).content == apps.FILE.read_bytes()
        assert requests.get(url + "/stream", timeout=10).content == b"x" * 30
        assert requests.get(url + "/boom", timeout=10).status_code == 500
        timelines = read_timelines(out, 3)
    by_path = {t["path"]: t for t in timelines}
    assert {t["service"] for t in timelines} == {"gunicorn-bare"}
    file_root = by_path["/file"]["stages"][0]
    assert file_root["attrs"]["http.response.body.size"] == apps.FILE.stat().st_size
    file_write = next(s for s in by_path["/file"]["stages"] if s["kind"] == "response.write")
    assert file_write["attrs"] == {"http.response.body.size": apps.FILE.stat().st_size}
    stream = by_path["/stream"]
    write = next(s for s in stream["stages"] if s["kind"] == "response.write")
    assert write["attrs"]["chunks"] == 3
    boom = by_path["/boom"]["stages"][0]
    assert boom["error"]["type"] == "RuntimeError"


def test_the_apps_exception_passes_through_unchanged(captured):
    """An exception raised by the application reaches the server as the same object, and is
    recorded on the gateway."""
    server = Server(StagetraceMiddleware(apps.app))
    with pytest.raises(RuntimeError) as info:
        server(environ("/boom"))
    assert info.value is apps.RAISED[-1]
    assert captured[0].stages[0].error.type == "RuntimeError"
    assert stagetrace.current_timeline() is None


def test_an_exception_while_streaming_is_recorded_on_response_write(captured):
    """A body generator that fails: the exception reaches the server unchanged and is recorded
    on response.write, and on the gateway — the request ended with it (the server aborts the
    response), so error rules such as the OpenTelemetry sink's keep-errors see it; the chunks
    before it are counted."""
    server = Server(StagetraceMiddleware(apps.app))
    with pytest.raises(ValueError) as info:
        server(environ("/broken"))
    assert info.value is apps.RAISED[-1]
    write = next(s for s in captured[0].stages if s.kind == "response.write")
    assert write.error.type == "ValueError" and write.attrs["chunks"] == 1
    root = captured[0].stages[0]
    assert (root.kind, root.error.type) == ("gateway", "ValueError")


def test_length_and_legacy_write_are_kept():
    """A list body keeps len() (servers set Content-Length from a one-chunk body); a
    generator's wrapper has none; bytes pushed with write() are counted."""
    app = StagetraceMiddleware(apps.app)
    with stagetrace.capture() as got:
        result = app(environ("/list"), lambda s, h, e=None: None)
        assert len(result) == 1
        assert list(result) == [b"hello"]
        result.close()
        stream = app(environ("/stream"), lambda s, h, e=None: None)
        assert not hasattr(stream, "__len__")
        stream.close()
        server = Server(app)
        assert server(environ("/write")) == b"legacy and list"
    assert got[0].status == 201 and got[0].stages[0].attrs["http.response.body.size"] == 5
    write = next(s for s in got[2].stages if s.kind == "response.write")
    assert write.attrs == {"chunks": 2, "http.response.body.size": 15}


def test_the_iterables_close_is_in_the_timeline_when_the_server_stops_early(captured):
    """A server that stops before the end of the body (the client went away) closes the
    response: the iterable's own close() runs inside the timeline, which ends there."""
    result = StagetraceMiddleware(apps.app)(environ("/stop"), lambda s, h, e=None: None)
    it = iter(result)
    assert next(it) == b"x" * 10
    assert not captured
    result.close()
    tl = captured[0]
    write = next(s for s in tl.stages if s.kind == "response.write")
    cleanup = next(s for s in tl.stages if s.name == "cleanup")
    assert write.attrs["chunks"] == 1
    assert cleanup.parent == tl.stages[0].id
    assert cleanup.start_ns >= write.start_ns + write.duration_ns
    assert apps.CLOSED[-1] == "/stop"


def test_closed_before_iterating_ends_the_timeline(captured):
    """A client that went away: the server closes the response without iterating it; the
    timeline ends there, with nothing sent."""
    result = StagetraceMiddleware(apps.app)(environ("/stream"), lambda s, h, e=None: None)
    assert not captured
    result.close()
    write = next(s for s in captured[0].stages if s.kind == "response.write")
    assert write.attrs["chunks"] == 0 and "unfinished" not in write.attrs


def test_ends_when_the_last_chunk_is_taken_without_close(captured):
    """Test clients that never call close() (Werkzeug's) still get their timeline: it ends when
    the last chunk was taken, without calling the iterable's close() early."""
    apps.CLOSED.clear()
    result = StagetraceMiddleware(apps.app)(environ("/stream"), lambda s, h, e=None: None)
    assert b"".join(result) == b"x" * 30
    assert len(captured) == 1 and apps.CLOSED == []
    result.close()
    assert apps.CLOSED == ["/stream"] and len(captured) == 1


def test_request_id_echoed_when_asked(captured):
    """echo_request_id adds the request id header to the response; the app's own wins."""
    server = Server(StagetraceMiddleware(apps.app, echo_request_id=True))
    server(environ("/list", HTTP_X_REQUEST_ID="abc-1"))
    assert ("x-request-id", "abc-1") in server.headers


def test_wrapping_twice_records_one_timeline(captured):
    """Two middlewares (or the middleware plus an adapter): one timeline, by the outer one."""
    app = StagetraceMiddleware(StagetraceMiddleware(apps.app), framework="outer")
    Server(app)(environ("/list"))
    assert len(captured) == 1 and captured[0].framework == "outer"
    assert [s.kind for s in captured[0].stages].count("gateway") == 1


def test_bad_option_fails_at_construction():
    """A bad option raises ConfigurationError when the middleware is built, not in a request."""
    with pytest.raises(stagetrace.ConfigurationError):
        StagetraceMiddleware(apps.app, sample_rate=7)


def test_disabled_passes_through(captured):
    """Disabled: the app's own iterable goes to the server, untouched."""
    body = [b"x"]
    app = StagetraceMiddleware(lambda e, s: (s("200 OK", []), body)[1], enabled=False)
    assert app(environ(), lambda s, h, e=None: None) is body
    assert not captured


def test_a_body_failing_mid_stream_keeps_no_application_object_alive():
    """A generated body that raises after its first chunk: once the server has dropped the
    response and the exception, nothing of stagetrace's keeps the app's objects alive — not
    even in a reference cycle waiting for the garbage collector (the exception held by the
    body wrapper's frame used to form one)."""
    import gc
    import weakref

    class Request:
        pass

    refs: dict[str, Any] = {}

    def app(environ: dict, start_response: Any) -> Any:
        request = Request()
        refs["request"] = weakref.ref(request)
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            held = request  # the body's frame references the request
            yield b"a"
            raise RuntimeError(f"fails mid-stream {id(held)}")

        return body()

    stagetrace.configure(sinks=[])
    wrapped = StagetraceMiddleware(app)
    gc.collect()
    gc.disable()
    try:
        result = wrapped(environ(), lambda status, headers, *exc: lambda data: None)
        with pytest.raises(RuntimeError, match="fails mid-stream"):
            for _chunk in result:
                pass
        result.close()
        del result
        stagetrace.flush()
        assert refs["request"]() is None
    finally:
        gc.enable()


def test_a_body_resetting_its_own_context_variable_closes_cleanly():
    """A body that sets a context variable and resets its token when it ends (structlog's
    ``bound_contextvars``, say), closed by the server after one chunk: close() raises nothing
    and the variable is back to its value — the body runs in the server's own context, where
    its token was made."""
    import contextvars

    request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
        "request_id", default=None
    )

    def app(env: dict, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        token = request_id.set("abc")
        try:
            for _ in range(100):
                yield b"row\n"
        finally:
            request_id.reset(token)

    stagetrace.configure(sinks=["memory"])
    result = StagetraceMiddleware(app)(environ(), lambda status, headers, exc_info=None: None)
    body = iter(result)
    assert next(body) == b"row\n"
    assert request_id.get() == "abc"  # what the server's context holds between chunks
    result.close()
    assert request_id.get() is None
    stagetrace.flush()
    (tl,) = stagetrace.recent()
    assert tl.path == "/" and tl.status == 200


def _recovering(environ, start_response):
    """An app answering 503 from its error path, passing ``exc_info`` by keyword (PEP 3333)."""
    import sys

    try:
        raise RuntimeError("backend down")
    except RuntimeError:
        start_response(
            "503 Service Unavailable", [("Content-Type", "text/plain")], exc_info=sys.exc_info()
        )
        return [b"try later"]


def test_start_response_takes_exc_info_by_keyword(captured):
    """``start_response(status, headers, exc_info=...)`` reaches the real server as the app
    meant it: the 503 the app gives from its error path is what the client gets (a TypeError
    there would turn it into the server's 500), and the timeline has that status."""
    with wsgiref_server(_recovering) as plain_url:
        plain = requests.get(plain_url + "/", timeout=10)
    with wsgiref_server(StagetraceMiddleware(_recovering)) as url:
        traced = requests.get(url + "/", timeout=10)
        wait_for(captured)
    assert (plain.status_code, plain.content) == (503, b"try later")
    assert (traced.status_code, traced.content) == (503, b"try later")
    assert captured[0].status == 503
