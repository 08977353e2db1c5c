"""The gateway: where a Django request starts and ends.

* WSGI (``WSGIHandler.__call__``) and the test ``Client`` (``ClientHandler.__call__``): the
  server iterates the body after ``__call__`` returns, so the timeline ends when the response is
  closed (``HttpResponseBase.close``, which every WSGI server and the test client call). A
  ``response.write`` stage covers the time from the view chain's return to that close; for
  streaming responses the stages of producing each chunk nest under it. Whatever handler
  produced the response (``StaticFilesHandler`` overrides ``get_response``), the gateway makes
  sure the timeline ends: it registers the response it returns to the server if nobody did.
* ASGI (``ASGIHandler.__call__``): the body is sent inside the call, so the timeline ends when it
  returns; ``send_response`` is the ``response.write`` stage. ``AsyncClient`` behaves like the
  test ``Client``.

The pending end is kept in the response's ``__dict__`` (not in a dict keyed by the response: a
response class may define ``__eq__`` and be unhashable), and holds only stagetrace's records.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from typing import Any

from .. import _recorder, _runtime
from .._http import asgi as asgi_request
from .._http import server_timing
from .._http import wsgi as wsgi_request
from .._http.gateway import again, begin_http, detach, end_http, held, release, resumed, wanted
from .._patching import leave
from ._common import patcher, settings_loaded

_KEY = "_stagetrace_pending"

#: True while a handler's ``get_response`` serves the request this context records: one
#: called inside it serves a request within the request (a batch view's sub-requests, the test
#: client in a view), whose response is not the request's own.
_serving: ContextVar[bool] = ContextVar("stagetrace.django.serving", default=False)


class _Pending:
    """A response handed back to the server whose timeline ends when it is closed."""

    __slots__ = ("context", "done", "root", "write")

    def __init__(self, root: list[Any], write: list[Any] | None) -> None:
        self.root = root
        self.write = write
        self.done = False
        #: A streamed body's: what the context hooks attached for the request, attached
        #: again while the server iterates the body and closes the response.
        self.context: Any = None


def _cfg() -> Any:
    if not settings_loaded():
        _load_settings_once()
    return _runtime.active()


_tried_settings = [False]


def _load_settings_once() -> None:
    """`instrument()` called without the app in ``INSTALLED_APPS`` and before settings were
    configured: read ``settings.STAGETRACE`` at the first request (a bad value is reported once,
    and the request goes on)."""
    if _tried_settings[0]:
        return
    _tried_settings[0] = True
    try:
        from ._common import load_settings

        load_settings()
    except Exception as exc:
        _recorder.internal_error("django.settings", exc)


def _begin(source: Any, gateway: str, parse: Any) -> list[Any] | None:
    """Begin the timeline of a request, if it is recorded: `source` is a WSGI environ or an
    ASGI scope and `parse` the module that reads it (`_http.wsgi` or `_http.asgi`)."""
    cfg = _cfg()
    if not cfg.enabled:
        return None
    path = parse.path(source)
    if not wanted(cfg, path):
        return None
    return begin_http(
        cfg,
        gateway,
        parse.request(source, cfg, path),
        framework="django",
        extra={"django.gateway": gateway},
    )


def _finish(pending: _Pending, exc: BaseException | None = None) -> None:
    """End a pending timeline (idempotent: the close and the end of the stream may both ask)."""
    if pending.done:
        return
    pending.done = True
    try:
        _recorder.close(pending.write, exc)
        _recorder.mark_sent(pending.root)
        end_http(pending.root, exc=exc)  # a body that raised ended the request with it
    except Exception as e:
        _recorder.internal_error("django.finish", e)


def _status(status: Any) -> int | None:
    """A response's status as a plain int: an app may set ``status_code`` to an
    ``http.HTTPStatus`` member, which a sealed timeline would not keep."""
    if isinstance(status, int) and not isinstance(status, bool):
        return int(status)
    return None


def _response_size(response: Any) -> int | None:
    if getattr(response, "streaming", False):
        return None
    try:
        length = response.get("Content-Length")
        return int(length) if length is not None else None
    except Exception:
        return None


def _on_response(response: Any) -> None:
    """After the middleware chain returned `response` (inside the gateway): record the status,
    echo the request id, and for WSGI start the response.write stage that ends on close()."""
    tl = _recorder.live()
    if tl is None:
        return
    status = _status(getattr(response, "status_code", None))
    if status is not None:
        tl.status = status
    cfg = tl.settings
    if cfg.echo_request_id:
        _echo_request_id(tl, response, cfg.request_id_header)
    gateway = (tl.extra or {}).get("django.gateway")
    if gateway is None:
        # An outer gateway (stagetrace's WSGI or ASGI middleware, an instrumented Starlette
        # app Django is mounted in) records the request and adds the Server-Timing header.
        return
    if cfg.server_timing:
        _add_server_timing(tl, response)
    if gateway == "ASGI" or "pending" in tl.extra:  # type: ignore[operator]
        return
    _register(tl, response)


#: Where on a response object the request id we echoed is remembered: a response object served
#: more than once carries the id of the request at hand, not that of the first one it served.
_ECHOED_ID = "_stagetrace_echoed_request_id"


def _echo_request_id(tl: Any, response: Any, header: str) -> None:
    """Echo the request id, unless the app set the header itself."""
    current = response.get(header)
    if current is None or current == response.__dict__.get(_ECHOED_ID):
        response[header] = tl.request_id or f"{tl.trace_id:032x}"
        response.__dict__[_ECHOED_ID] = response.get(header)


#: Where on a response object the Server-Timing value the app had set is remembered, with the
#: value we set after it: a response object served more than once (a module-level
#: ``HttpResponse``) gets this request's totals after the app's own value, not after the
#: previous request's totals — and after the value the app set for this request, if it set one.
_APP_SERVER_TIMING = "_stagetrace_app_server_timing"


def _add_server_timing(tl: Any, response: Any) -> None:
    """Add the Server-Timing header (after the app's own value, if it set one)."""
    try:
        ours = server_timing.value(_recorder.root_of(tl))
        if ours is not None:
            state = response.__dict__
            app_value = response.get("Server-Timing")
            earlier = state.get(_APP_SERVER_TIMING)
            if earlier is not None and app_value == earlier[1]:
                # still what we set on an earlier request: the app's value is the one before ours
                app_value = earlier[0]
            response["Server-Timing"] = server_timing.append(app_value, ours)
            state[_APP_SERVER_TIMING] = (app_value, response.get("Server-Timing"))
    except Exception as exc:
        _recorder.internal_error("django.server_timing", exc)


def _register(tl: Any, response: Any) -> None:
    """The body goes out after the gateway returns: a response.write stage, ended on close()."""
    root = _recorder.root_of(tl)
    attrs: dict[str, Any] = {}
    size = _response_size(response)
    if size is not None:
        attrs["http.response.body.size"] = size
    write = _recorder.enter_at(root, "response.write", "body", attrs)
    if write is not None:
        _recorder.restore(_recorder.parent_of(write))
    pending = _Pending(root, write)
    try:
        state = vars(response)
    except TypeError:  # no __dict__: nothing to find on close; end now
        _finish(pending)
        return
    earlier = state.get(_KEY)
    if earlier is None:
        state[_KEY] = pending
    else:
        # One response object served to another request before the server closed it for the
        # first (a module-level response, a threaded server): each close() ends one timeline.
        state[_KEY] = [*earlier, pending] if type(earlier) is list else [earlier, pending]
    tl.extra["pending"] = True
    if (
        write is not None
        and getattr(response, "streaming", False)
        and getattr(response, "file_to_stream", None) is None
    ):
        # Producing the chunks is the view's work continuing: it nests under response.write.
        # If the wrapping fails the body goes out as it was; close() still ends the timeline.
        done = functools.partial(_stream_done, pending)
        content = response.streaming_content
        try:
            if getattr(response, "is_async", False):
                wrapped: Any = _recorder.acarry(content, write, done)
            else:
                # Under WSGI the server iterates after the gateway released the request's
                # (OpenTelemetry) context: each chunk is produced in it again.
                tokens = pending.context = held(root)
                if tokens:
                    content = resumed(content, tokens)
                wrapped = _recorder.carry(content, write, done)
        except Exception as exc:
            _recorder.internal_error("django.stream", exc)
            wrapped = content
        response.streaming_content = wrapped


def _ensure_ending(root: list[Any], result: Any) -> None:
    """The handler returned `result` to the server: make sure the timeline will end. Normally
    `_on_response` registered the response already; a handler that bypasses
    ``BaseHandler.get_response`` (``StaticFilesHandler``) did not, so register what it returned
    — the response, or the file wrapper around its file, whose close is the response's."""
    tl = _recorder.timeline_of(root)
    if tl is None or "pending" in (tl.extra or {}):
        return
    from django.http.response import HttpResponseBase

    response = result
    if not isinstance(response, HttpResponseBase):
        close = getattr(getattr(result, "filelike", None), "close", None)
        response = getattr(close, "__self__", None)
    if isinstance(response, HttpResponseBase):
        status = _status(getattr(response, "status_code", None))
        if status is not None:
            tl.status = status
        _register(tl, response)
    else:
        end_http(root)


def _take_pending(state: dict[str, Any]) -> _Pending | None:
    """The pending end a response's close() finishes: the only one, or the oldest of those of
    the requests the same response object is being served to."""
    held = state.get(_KEY)
    if type(held) is not list:
        return state.pop(_KEY, None)  # type: ignore[no-any-return]
    pending = held.pop(0)
    if len(held) == 1:
        state[_KEY] = held[0]
    return pending  # type: ignore[no-any-return]


def _stream_done(pending: _Pending, chunks: int, size: int, error: BaseException | None) -> None:
    try:
        _recorder.set_attrs(pending.write, {"chunks": chunks, "http.response.body.size": size})
        _finish(pending, error)
    except Exception as exc:
        _recorder.internal_error("django.stream", exc)


# --- patches --------------------------------------------------------------------------------


def _wsgi_call(orig: Any, gateway: str) -> Any:
    def __call__(self: Any, environ: Any, *args: Any, **kwargs: Any) -> Any:
        if not patcher.applied:
            return orig(self, environ, *args, **kwargs)
        prev = _recorder.current()
        try:
            root = _begin(environ, gateway, wsgi_request)
        except Exception as exc:
            _recorder.internal_error("django.begin", exc)
            _recorder.restore(prev)
            root = None
        if root is None:
            return orig(self, environ, *args, **kwargs)
        try:
            result = orig(self, environ, *args, **kwargs)
        except BaseException as exc:
            release(root)
            _end_now(root, exc)
            _recorder.restore(prev)
            raise
        release(root)
        try:
            # The timeline stays in flight until the server closes the response; an exception
            # the app handled (a 404) must not keep the view's frames alive meanwhile.
            _recorder.forget_exception(root)
            _ensure_ending(root, result)
        except Exception as exc:
            _recorder.internal_error("django.end", exc)
            _end_now(root, None)
        # The body is still to be sent: the caller gets its context back; the timeline ends
        # when the server closes the response.
        _recorder.restore(prev)
        return result

    return __call__


def _end_now(root: Any, exc: BaseException | None) -> None:
    try:
        end_http(root, exc=exc)
    except Exception as e:
        _recorder.internal_error("django.end", e)


def _asgi_call(orig: Any, gateway: str) -> Any:
    async def __call__(self: Any, scope: Any, receive: Any, send: Any, *args: Any) -> Any:
        if not patcher.applied or scope.get("type") != "http" or _decided_outside(scope):
            return await orig(self, scope, receive, send, *args)
        prev = _recorder.current()
        try:
            root = _begin(scope, gateway, asgi_request)
        except Exception as exc:
            _recorder.internal_error("django.begin", exc)
            _recorder.restore(prev)
            root = None
        if root is None:
            return await orig(self, scope, receive, send, *args)
        box: list[Any] = [None, 0]

        async def observed_send(message: Any) -> None:
            try:
                kind = message.get("type")
                if kind == "http.response.start":
                    box[0] = message.get("status")
                    _recorder.root_attrs(root)["http.response.first_byte_ns"] = (
                        _recorder.now() - _recorder.start_of(root)
                    )
                elif kind == "http.response.body":
                    box[1] += len(message.get("body", b""))
            except Exception as exc:
                _recorder.internal_error("django.asgi.send", exc)
                kind = None
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                try:
                    _recorder.mark_sent(root)
                except Exception as exc:
                    _recorder.internal_error("django.asgi.send", exc)

        try:
            result = await orig(self, scope, receive, observed_send, *args)
        except BaseException as exc:
            release(root)
            _end_asgi(root, box, exc)
            _recorder.restore(prev)
            raise
        release(root)
        _end_asgi(root, box, None)
        _recorder.restore(prev)
        return result

    return __call__


def _decided_outside(scope: Any) -> bool:
    """Whether an ASGI gateway around Django's handler (an instrumented Starlette or FastAPI
    app it is mounted in, stagetrace's ASGI middleware) decided already whether this request
    is recorded: when it left the request out, a draw of our own would record it after all
    (with ``sample_rate`` 0.5, three requests in four)."""
    try:
        from ..asgi import _gateway as asgi_gateway

        return asgi_gateway.left_out(scope)
    except Exception as exc:
        _recorder.internal_error("django.begin", exc)
        return False


def _end_asgi(root: Any, box: list[Any], exc: BaseException | None) -> None:
    try:
        end_http(root, _status(box[0]), box[1], exc)
    except Exception as e:
        _recorder.internal_error("django.end", e)


def install() -> None:
    from django.core.handlers import asgi, base, wsgi
    from django.http import response as http_response

    patcher.wrap(wsgi.WSGIHandler, "__call__", lambda orig: _wsgi_call(orig, "WSGI"))
    patcher.wrap(asgi.ASGIHandler, "__call__", lambda orig: _asgi_call(orig, "ASGI"))

    def send_response(orig: Any) -> Any:
        async def send_response(self: Any, response: Any, send: Any) -> Any:
            rec = None
            if patcher.applied and _recorder.current() is not None:
                try:
                    rec = _recorder.enter("response.write", "body")
                except Exception as exc:
                    _recorder.internal_error("django.send_response", exc)
            try:
                result = await orig(self, response, send)
            except BaseException as exc:
                leave("django.send_response", rec, exc)
                raise
            leave("django.send_response", rec)
            return result

        return send_response

    patcher.wrap(asgi.ASGIHandler, "send_response", send_response)

    def get_response(orig: Any) -> Any:
        def get_response(self: Any, request: Any) -> Any:
            if not patcher.applied or _serving.get() or _recorder.current() is None:
                return orig(self, request)
            token = _serving.set(True)
            try:
                response = orig(self, request)
            finally:
                _serving.reset(token)
            try:
                _on_response(response)
            except Exception as exc:
                _recorder.internal_error("django.response", exc)
            return response

        return get_response

    def get_response_async(orig: Any) -> Any:
        async def get_response_async(self: Any, request: Any) -> Any:
            if not patcher.applied or _serving.get() or _recorder.current() is None:
                return await orig(self, request)
            token = _serving.set(True)
            try:
                response = await orig(self, request)
            finally:
                _serving.reset(token)
            try:
                _on_response(response)
            except Exception as exc:
                _recorder.internal_error("django.response", exc)
            return response

        return get_response_async

    patcher.wrap(base.BaseHandler, "get_response", get_response)
    patcher.wrap(base.BaseHandler, "get_response_async", get_response_async)

    def close(orig: Any) -> Any:
        def close(self: Any) -> None:
            redone = None
            try:
                pending = vars(self).get(_KEY)
                if type(pending) is list:
                    pending = pending[0]
                if pending is not None and pending.context:
                    # a streamed body's cleanup runs here: in the request's context, as its
                    # chunks did
                    redone = again(pending.context)
            except Exception as exc:
                _recorder.internal_error("django.finish", exc)
            try:
                orig(self)
            finally:
                detach(redone)
                try:
                    pending = _take_pending(vars(self))
                    if pending is not None:
                        _finish(pending)
                except Exception as exc:
                    _recorder.internal_error("django.finish", exc)

        return close

    patcher.wrap(http_response.HttpResponseBase, "close", close)


def install_test_client() -> None:
    """Django's test clients, so a project's own tests see the same timelines."""
    from django.test import client

    patcher.wrap(client.ClientHandler, "__call__", lambda orig: _wsgi_call(orig, "test client"))

    def async_client_call(orig: Any) -> Any:
        async def __call__(self: Any, scope: Any, *args: Any, **kwargs: Any) -> Any:
            if not patcher.applied:
                return await orig(self, scope, *args, **kwargs)
            prev = _recorder.current()
            try:
                root = _begin(scope, "async test client", asgi_request)
            except Exception as exc:
                _recorder.internal_error("django.begin", exc)
                _recorder.restore(prev)
                root = None
            if root is None:
                return await orig(self, scope, *args, **kwargs)
            try:
                result = await orig(self, scope, *args, **kwargs)
            except BaseException as exc:
                release(root)
                _end_now(root, exc)
                _recorder.restore(prev)
                raise
            release(root)
            try:
                _ensure_ending(root, result)
            except Exception as exc:
                _recorder.internal_error("django.end", exc)
                _end_now(root, None)
            _recorder.restore(prev)
            return result

        return __call__

    patcher.wrap(client.AsyncClientHandler, "__call__", async_client_call)
