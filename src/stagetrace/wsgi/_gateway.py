"""The WSGI gateway shared by `stagetrace.wsgi.StagetraceMiddleware` and the Flask adapter.

One timeline per request. Under WSGI the body goes out *after* the application returned: the
server iterates the returned iterable and then calls its ``close()`` (PEP 3333). So the
timeline lasts beyond the application call, as the Django gateway's does:

* the application call (the gateway stage's own time, and every stage an adapter records in
  it); ``start_response`` gives the status and headers, ``write()`` (the legacy push API)
  is counted;
* a ``response.write`` stage from the moment the application returned until the server took
  the last chunk; producing each chunk of a generated body is the application's work
  continuing, so its stages nest under ``response.write`` (`_recorder.carry`);
* ``http.response.sent_ns`` when the last chunk was taken (`_recorder.mark_sent`);
* the end of the timeline when the server calls ``close()`` on the response, or when it
  took the last chunk, whichever comes first, or — for callers that do neither, such as
  Werkzeug's test client, which leaves ``close()`` to the test — when the response is
  dropped. (A server calls ``close()`` right after the last chunk; the application
  iterable's own ``close()`` is never called early.) Werkzeug's test client takes only the
  first chunk and leaves the rest to the test, which may hold the response unread while it
  checks the timelines: under it, the timeline ends as soon as all the ``Content-Length``
  bytes were taken.

The returned object is a thin iterable that forwards ``close()`` (and ``len()`` when the
application's iterable has one, which some servers use to set ``Content-Length``). A response
that is the server's own ``wsgi.file_wrapper`` is handed back *unchanged*, so the server's
sendfile path still recognises it; its ``close`` is observed on the instance instead, and its
size comes from ``Content-Length``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import _recorder, _runtime
from .._http import server_timing
from .._http import wsgi as _parse
from .._http.gateway import (
    again,
    begin_http,
    detach,
    end_http,
    release,
    resumed,
    run_left_out,
    wanted,
)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def begin(environ: Environ, framework: str) -> list[Any] | None:
    """Start the timeline of a WSGI request (None: not recording)."""
    cfg = _runtime.active()
    if not cfg.enabled:
        return None
    path = _parse.path(environ)
    if not wanted(cfg, path):
        return None
    return begin_http(cfg, "WSGI", _parse.request(environ, cfg, path), framework=framework)


def _with_server_timing(headers: list[Any], root: Any) -> list[Any]:
    """The response headers with our Server-Timing value after the application's own (its
    headers of that name merged into one, as the ASGI gateway does)."""
    ours = server_timing.value(root)
    if ours is None:
        return headers
    out = []
    existing = None
    for name, value in headers:
        if isinstance(name, str) and isinstance(value, str) and name.lower() == "server-timing":
            existing = server_timing.append(existing, value)
        else:  # anything else, an invalid header included, goes out as the app gave it
            out.append((name, value))
    out.append(("Server-Timing", server_timing.append(existing, ours)))
    return out


class _Exchange:
    """What one request's gateway observes: status, bytes and chunks sent, the
    ``response.write`` stage. Our side work is guarded; the app's own data and exceptions
    pass through untouched."""

    __slots__ = (
        "body",
        "chunks",
        "context",
        "done",
        "eager",
        "failed",
        "length",
        "root",
        "size",
        "status",
        "write",
        "written",
    )

    def __init__(self, root: list[Any]) -> None:
        self.root = root
        self.status: int | None = None
        self.length: int | None = None
        self.write: list[Any] | None = None
        self.chunks = 0
        self.size = 0
        self.written = False
        self.done = False
        #: The application returned a body (iterated by us, or a file the server sends).
        self.body = False
        #: The caller takes only the first chunk (Werkzeug's test client): the response is
        #: sent once its ``Content-Length`` bytes were taken, not when the caller asks again.
        self.eager = False
        #: The exception producing the body raised (the server then aborts the response and
        #: closes it): the request ended with it.
        self.failed: BaseException | None = None
        #: What the context hooks attached for the request (`release`): attached again while the
        #: server iterates and closes the body, after the gateway returned.
        self.context: Any = None

    def start_response(self, start_response: StartResponse) -> StartResponse:
        # PEP 3333's signature: applications pass ``exc_info`` by position or by keyword.
        def observed_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            try:
                headers = self._started(status, headers)
            except Exception as exc:
                _recorder.internal_error("wsgi.start_response", exc)
            if exc_info is None:
                write = start_response(status, headers)
            else:
                write = start_response(status, headers, exc_info)
            return self._writer(write)

        return observed_start_response

    def _started(self, status: Any, headers: Any) -> Any:
        code = status[:3] if isinstance(status, str) else None
        self.status = int(code) if code is not None and code.isascii() and code.isdigit() else None
        self.length = None
        if isinstance(headers, list):
            for name, value in headers:
                if isinstance(name, str) and name.lower() == "content-length":
                    size = str(value)
                    self.length = int(size) if size.isascii() and size.isdigit() else None
        tl = _recorder.timeline_of(self.root)
        if tl is None:
            return headers
        tl.status = self.status
        cfg = tl.settings
        if cfg.echo_request_id and isinstance(headers, list):
            wanted = cfg.request_id_header.lower()
            if not any(str(k).lower() == wanted for k, _ in headers):
                value = tl.request_id or f"{tl.trace_id:032x}"
                headers = [*headers, (cfg.request_id_header, value)]
        if cfg.server_timing and isinstance(headers, list):
            headers = _with_server_timing(headers, self.root)
        return headers

    def _writer(self, write: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        """The legacy ``write()`` callable, counted."""

        def observed_write(data: bytes) -> Any:
            try:
                self.chunks += 1
                self.size += len(data)
            except Exception as exc:
                _recorder.internal_error("wsgi.write", exc)
            return write(data)

        return observed_write

    def returned(self) -> None:
        """The application returned its iterable: the body is still to be sent."""
        self.body = True
        write = _recorder.enter_at(self.root, "response.write", "body")
        if write is not None:
            _recorder.restore(_recorder.parent_of(write))
        self.write = write

    def finish_write(self, exc: BaseException | None = None, sized: bool = True) -> None:
        """The server took the last chunk (or stopped early; or, for a file it sends itself,
        not `sized` by us, closed it): the response is sent."""
        if self.written or not self.body:
            return
        self.written = True
        try:
            if self.write is not None:
                if sized:
                    attrs = {"chunks": self.chunks, "http.response.body.size": self.size}
                elif self.length is not None:
                    attrs = {"http.response.body.size": self.length}
                else:
                    attrs = {}
                _recorder.set_attrs(self.write, attrs)
                _recorder.close(self.write, exc)
            _recorder.mark_sent(self.root)
        except Exception as e:
            _recorder.internal_error("wsgi.finish", e)

    def end(self, exc: BaseException | None = None, sized: bool = True) -> None:
        """End the timeline (idempotent: the close and the end of the body may both ask)."""
        if self.done:
            return
        self.done = True
        if exc is None:
            exc, self.failed = self.failed, None
        self.finish_write(exc, sized)
        try:
            size = (self.size if sized else self.length) if self.body else None
            end_http(self.root, self.status, size, exc)
        except Exception as e:
            _recorder.internal_error("wsgi.end", e)


class _Response:
    """What the server gets back: iterates the application's iterable (counted, with its
    production nested under ``response.write``) and forwards ``close()``."""

    __slots__ = ("_exchange", "_iterating", "_result")

    def __init__(self, result: Iterable[bytes], exchange: _Exchange) -> None:
        self._result = result
        self._exchange = exchange
        self._iterating: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._iterating = _iterate(self._result, self._exchange)
        return self._iterating

    def close(self) -> None:
        """Close the application's iterable (inside the timeline), then end the timeline."""
        exchange = self._exchange
        iterating, self._iterating = self._iterating, None
        if iterating is not None:
            iterating.close()  # type: ignore[attr-defined]
        exchange.finish_write()  # the server takes no more chunks
        close = getattr(self._result, "close", None)
        if close is None:
            exchange.end()
            return
        prev = _recorder.current()
        redone = None
        if not exchange.done:
            _recorder.restore(exchange.root)
            if exchange.context:
                redone = again(exchange.context)
        try:
            close()
        except BaseException as exc:
            detach(redone)
            _recorder.restore(prev)
            exchange.end(exc)
            raise
        detach(redone)
        _recorder.restore(prev)
        exchange.end()

    def __del__(self) -> None:
        # A caller that neither took the last chunk nor closed the response (Werkzeug's test
        # client leaves close() to the test, which rarely calls it) dropped it: the timeline
        # ends now rather than never.
        try:
            exchange = self._exchange
            if not exchange.done:
                exchange.end()
        except Exception as exc:
            _recorder.internal_error("wsgi.dropped", exc)


class _SizedResponse(_Response):
    """A `_Response` around an iterable with a length (a list of chunks, say): servers that
    set ``Content-Length`` from ``len()`` of a one-chunk body keep doing so."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


def _iterate(result: Iterable[bytes], exchange: _Exchange) -> Iterator[bytes]:
    try:
        source = resumed(result, exchange.context) if exchange.context else result
        chunks: Iterable[bytes] = _recorder.carry(source, exchange.write or exchange.root)
    except Exception as exc:
        _recorder.internal_error("wsgi.stream", exc)
        chunks = result
    try:
        for chunk in chunks:
            try:
                exchange.chunks += 1
                exchange.size += len(chunk)
                if exchange.eager:  # Werkzeug's test client only: ends at Content-Length
                    length = exchange.length
                    if length is not None and exchange.size >= length:
                        exchange.end()
            except Exception as exc:
                _recorder.internal_error("wsgi.stream", exc)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        exchange.finish_write(exc)
        exchange.failed = exc
        raise
    # The server asked for more after writing the last chunk: the response is sent.
    exchange.end()


def _is_file_wrapper(result: Any, environ: Environ) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


def _observe_file(result: Any, exchange: _Exchange) -> Any:
    """A ``wsgi.file_wrapper`` response goes back to the server as it is (the server's
    sendfile path recognises it by its type); its ``close`` is replaced on the instance, so
    the timeline still ends when the server closes it, and the sending is the
    ``response.write`` stage. Its size is its ``Content-Length``."""
    exchange.returned()
    close = getattr(result, "close", None)

    def observed_close() -> None:
        try:
            if close is not None:
                close()
        finally:
            try:
                vars(result).pop("close", None)  # the wrapper and this function: no cycle
            except Exception as exc:
                _recorder.internal_error("wsgi.file", exc)
            exchange.end(sized=False)

    try:
        result.close = observed_close
    except (AttributeError, TypeError):  # a wrapper without an instance dict
        exchange.end(sized=False)
    return result


def serve(app: WSGIApp, environ: Environ, start_response: StartResponse, framework: str) -> Any:
    """Run `app` for one WSGI request, recording it. A request inside a timeline that is
    already recording passes straight through (the outer gateway records it; a more specific
    adapter names the framework). The recorder's context is put back as it was."""
    prev = _recorder.current()
    tl = None
    try:
        tl = _recorder.timeline_of(prev)
        if tl is not None:
            if tl.framework == "wsgi":
                tl.framework = framework
            root = None
        else:
            root = begin(environ, framework)
    except Exception as exc:
        _recorder.internal_error("wsgi.begin", exc)
        _recorder.restore(prev)
        root = None
    if root is None:
        if tl is None:  # left out here: not by a gateway inside either
            return run_left_out(app, environ, start_response)
        return app(environ, start_response)
    exchange = _Exchange(root)
    # Werkzeug's test client (`werkzeug.test.run_wsgi_app`) takes the first chunk and leaves
    # the rest and close() to the test, which often asserts on the timelines first.
    exchange.eager = getattr(start_response, "__module__", None) == "werkzeug.test"
    try:
        result = app(environ, exchange.start_response(start_response))
    except BaseException as exc:
        release(root)
        exchange.end(exc)
        _recorder.restore(prev)
        raise
    exchange.context = release(root)
    try:
        _recorder.forget_exception(root)
        if _is_file_wrapper(result, environ):
            response: Any = _observe_file(result, exchange)
        else:
            exchange.returned()
            sized = hasattr(result, "__len__")
            response = (_SizedResponse if sized else _Response)(result, exchange)
    except Exception as exc:
        _recorder.internal_error("wsgi.response", exc)
        exchange.end()
        response = result
    _recorder.restore(prev)
    return response
