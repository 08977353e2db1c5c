"""The gateway: where a Django request starts and ends.

* WSGI (``WSGIHandler.__call__``) and the test ``Client`` (``ClientHandler.__call__``): the
  server iterates the body after ``__call__`` returns, so the timeline ends when the response is
  closed (``HttpResponseBase.close``, which every WSGI server and the test client call). A
  ``response.write`` stage covers the time from the view chain's return to that close; for
  streaming responses the stages of producing each chunk nest under it.
* ASGI (``ASGIHandler.__call__``): the body is sent inside the call, so the timeline ends when it
  returns; ``send_response`` is the ``response.write`` stage. ``AsyncClient`` behaves like the
  test ``Client``.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from .. import _config, _http, _recorder
from .._safety import report
from ._common import ensure_settings, patcher

TL, END, KIND = _recorder.TL, _recorder.END, _recorder.KIND

_get, _set = _recorder._get, _recorder._set


class _Pending:
    """A response handed back to the server whose timeline ends when it is closed."""

    __slots__ = ("done", "root", "write")

    def __init__(self, root: list[Any], write: list[Any] | None) -> None:
        self.root = root
        self.write = write
        self.done = False


_pending: weakref.WeakKeyDictionary[Any, _Pending] = weakref.WeakKeyDictionary()
_environ_keys: dict[str, str] = {}


def _environ_key(header: str) -> str:
    key = _environ_keys.get(header)
    if key is None:
        key = _environ_keys[header] = "HTTP_" + header.upper().replace("-", "_")
    return key


def _wsgi_text(environ: dict[str, Any], key: str, default: str) -> str:
    raw = environ.get(key, default)
    try:
        return str(raw.encode("latin-1").decode("utf-8"))
    except (UnicodeError, AttributeError):
        return str(raw)


def _begin_environ(environ: dict[str, Any], gateway: str) -> list[Any] | None:
    ensure_settings()
    cfg = _config.settings()
    root = _http.begin_http(
        gateway,
        framework="django",
        method=environ.get("REQUEST_METHOD"),
        path=_wsgi_text(environ, "SCRIPT_NAME", "") + _wsgi_text(environ, "PATH_INFO", "/"),
        scheme=environ.get("wsgi.url_scheme"),
        request_id=environ.get(_environ_key(cfg.request_id_header)),
        queue_start=environ.get("HTTP_X_REQUEST_START") or environ.get("HTTP_X_QUEUE_START"),
        traceparent=environ.get("HTTP_TRACEPARENT"),
        body_size=environ.get("CONTENT_LENGTH") or None,
    )
    if root is not None:
        root[TL].extra = {"django.gateway": gateway}
    return root


def _scope_headers(scope: dict[str, Any], wanted: frozenset[bytes]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers") or ():
        lname = name.lower()
        if lname in wanted and lname not in found:
            found[lname] = value
    return found


def _begin_scope(scope: dict[str, Any], gateway: str) -> list[Any] | None:
    ensure_settings()
    cfg = _config.settings()
    rid = cfg.request_id_header.encode("latin-1")
    h = _scope_headers(
        scope,
        frozenset((rid, b"x-request-start", b"x-queue-start", b"traceparent", b"content-length")),
    )
    path = scope.get("root_path", "") + scope.get("path", "")
    root = _http.begin_http(
        gateway,
        framework="django",
        method=scope.get("method"),
        path=path,
        scheme=scope.get("scheme"),
        request_id=h.get(rid),
        queue_start=h.get(b"x-request-start") or h.get(b"x-queue-start"),
        traceparent=h.get(b"traceparent"),
        body_size=h.get(b"content-length"),
    )
    if root is not None:
        root[TL].extra = {"django.gateway": gateway}
    return root


def _finish(pending: _Pending, exc: BaseException | None = None) -> None:
    """End a pending timeline (idempotent: the close and the end of the stream may both ask)."""
    if pending.done:
        return
    pending.done = True
    try:
        _recorder.close(pending.write, exc)
        size = None
        write = pending.write
        if write is not None and write[_recorder.ATTRS]:
            size = write[_recorder.ATTRS].get("http.response.body.size")
        _http.end_http(pending.root, response_size=size)
    except Exception as e:
        report("django.finish", e)


def _response_size(response: Any) -> int | None:
    if getattr(response, "streaming", False):
        return None
    try:
        length = response.get("Content-Length")
        return int(length) if length is not None else None
    except Exception:
        return None


def _on_response(response: Any) -> None:
    """After the middleware chain returned `response` (inside the gateway)."""
    cur = _get()
    if cur is None:
        return
    tl = cur[TL]
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        tl.status = status
    cfg = tl.settings
    if cfg.echo_request_id:
        try:
            header = cfg.request_id_header
            if not response.has_header(header):
                response[header] = tl.request_id or f"{tl.trace_id:032x}"
        except Exception as e:
            report("django.echo_request_id", e)
    gateway = (tl.extra or {}).get("django.gateway")
    if gateway is None or gateway == "ASGI" or tl.ended:
        return
    root = tl[0]
    # The body goes out after the gateway returns: a response.write stage, ended on close().
    attrs: dict[str, Any] = {}
    size = _response_size(response)
    if size is not None:
        attrs["http.response.body.size"] = size
    write = _recorder.enter("response.write", "body", attrs)
    if write is not None:
        _set(write[_recorder.PARENT])
    pending = _Pending(root, write)
    _pending[response] = pending
    if (
        write is not None
        and getattr(response, "streaming", False)
        and getattr(response, "file_to_stream", None) is None
    ):
        # Producing the chunks is the view's work continuing: make it nest under response.write.
        if getattr(response, "is_async", False):
            response.streaming_content = _stream_async(response.streaming_content, pending)
        else:
            response.streaming_content = _stream_sync(response.streaming_content, pending)


def _stream_sync(content: Iterable[bytes], pending: _Pending) -> Iterator[bytes]:
    write = pending.write
    it = iter(content)
    chunks = size = 0
    error: BaseException | None = None
    try:
        while True:
            prev = _get()
            _set(write)
            try:
                chunk = next(it)
            except StopIteration:
                break
            finally:
                _set(prev)
            chunks += 1
            size += len(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        _recorder.annotate_record(write, {"chunks": chunks, "http.response.body.size": size})
        _finish(pending, error)


async def _stream_async(content: Any, pending: _Pending) -> AsyncIterator[bytes]:
    write = pending.write
    it = content.__aiter__()
    chunks = size = 0
    error: BaseException | None = None
    try:
        while True:
            prev = _get()
            _set(write)
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                break
            finally:
                _set(prev)
            chunks += 1
            size += len(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        _recorder.annotate_record(write, {"chunks": chunks, "http.response.body.size": size})
        _finish(pending, error)


def _leave_pending(root: list[Any], prev: list[Any] | None) -> None:
    """The gateway call returned but the body is still to be sent: give the caller its
    context back; the timeline ends when the response is closed."""
    if not root[TL].ended:
        _set(prev)


# --- patches --------------------------------------------------------------------------------


def install() -> None:
    from django.core.handlers import asgi, base, wsgi
    from django.http import response as http_response

    def wrap_wsgi_call(orig: Any, gateway: str) -> Any:
        def __call__(self: Any, environ: Any, *args: Any, **kwargs: Any) -> Any:
            if not patcher.applied:
                return orig(self, environ, *args, **kwargs)
            prev = _get()
            root = _begin_environ(environ, gateway)
            if root is None:
                return orig(self, environ, *args, **kwargs)
            try:
                result = orig(self, environ, *args, **kwargs)
            except BaseException as exc:
                _http.end_http(root, exc=exc)
                raise
            _leave_pending(root, prev)
            return result

        return __call__

    patcher.wrap(wsgi.WSGIHandler, "__call__", lambda orig: wrap_wsgi_call(orig, "WSGI"))

    def asgi_call(orig: Any) -> Any:
        async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> Any:
            if not patcher.applied or scope.get("type") != "http":
                return await orig(self, scope, receive, send)
            root = _begin_scope(scope, "ASGI")
            if root is None:
                return await orig(self, scope, receive, send)
            box: list[Any] = [None, 0]

            async def observed_send(message: Any) -> None:
                kind = message.get("type")
                if kind == "http.response.start":
                    box[0] = message.get("status")
                    _recorder.annotate_record(
                        root,
                        {"http.response.first_byte_ns": _recorder.now() - root[_recorder.START]},
                    )
                elif kind == "http.response.body":
                    box[1] += len(message.get("body", b""))
                await send(message)

            try:
                await orig(self, scope, receive, observed_send)
            except BaseException as exc:
                _http.end_http(root, box[0], box[1], exc)
                raise
            _http.end_http(root, box[0], box[1])

        return __call__

    patcher.wrap(asgi.ASGIHandler, "__call__", asgi_call)

    def send_response(orig: Any) -> Any:
        async def send_response(self: Any, response: Any, send: Any) -> Any:
            rec = _recorder.enter("response.write", "body") if patcher.applied else None
            try:
                result = await orig(self, response, send)
            except BaseException as exc:
                _recorder.exit(rec, exc)
                raise
            _recorder.exit(rec)
            return result

        return send_response

    patcher.wrap(asgi.ASGIHandler, "send_response", send_response)

    def get_response(orig: Any) -> Any:
        def get_response(self: Any, request: Any) -> Any:
            response = orig(self, request)
            if patcher.applied:
                _on_response(response)
            return response

        return get_response

    def get_response_async(orig: Any) -> Any:
        async def get_response_async(self: Any, request: Any) -> Any:
            response = await orig(self, request)
            if patcher.applied:
                _on_response(response)
            return response

        return get_response_async

    patcher.wrap(base.BaseHandler, "get_response", get_response)
    patcher.wrap(base.BaseHandler, "get_response_async", get_response_async)

    def close(orig: Any) -> Any:
        def close(self: Any) -> None:
            try:
                orig(self)
            finally:
                if _pending:
                    pending = _pending.pop(self, None)
                    if pending is not None:
                        _finish(pending)

        return close

    patcher.wrap(http_response.HttpResponseBase, "close", close)


def install_test_client() -> None:
    """Django's test clients, so a project's own tests see the same timelines."""
    from django.test import client

    def client_call(orig: Any) -> Any:
        def __call__(self: Any, environ: Any, *args: Any, **kwargs: Any) -> Any:
            if not patcher.applied:
                return orig(self, environ, *args, **kwargs)
            prev = _get()
            root = _begin_environ(environ, "test client")
            if root is None:
                return orig(self, environ, *args, **kwargs)
            try:
                result = orig(self, environ, *args, **kwargs)
            except BaseException as exc:
                _http.end_http(root, exc=exc)
                raise
            _leave_pending(root, prev)
            return result

        return __call__

    def async_client_call(orig: Any) -> Any:
        async def __call__(self: Any, scope: Any, *args: Any, **kwargs: Any) -> Any:
            if not patcher.applied:
                return await orig(self, scope, *args, **kwargs)
            prev = _get()
            root = _begin_scope(scope, "async test client")
            if root is None:
                return await orig(self, scope, *args, **kwargs)
            try:
                result = await orig(self, scope, *args, **kwargs)
            except BaseException as exc:
                _http.end_http(root, exc=exc)
                raise
            _leave_pending(root, prev)
            return result

        return __call__

    patcher.wrap(client.ClientHandler, "__call__", client_call)
    patcher.wrap(client.AsyncClientHandler, "__call__", async_client_call)
