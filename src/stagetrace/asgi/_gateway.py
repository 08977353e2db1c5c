"""The ASGI gateway shared by `stagetrace.asgi.StagetraceMiddleware` and the Starlette adapter.

One timeline per HTTP request or websocket connection. ``receive`` and ``send`` are observed,
never changed (except adding the request id header when ``echo_request_id`` is on):

* HTTP: time spent waiting for request body chunks and their size, client disconnects, time to
  first byte (``http.response.start``), a ``response.write`` stage from the response start to
  its last body chunk (work producing a streamed body nests under it), the moment the response
  was complete (``http.response.sent_ns``: the response time, kept apart from background tasks
  that run afterwards and which the timeline's duration still covers).
* Websocket: accept, messages received and sent (counted, sized and timed; each sent message is
  a ``response.write`` stage up to a cap), and the close code as the timeline's status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .. import _pipeline, _recorder, _runtime
from .._http import asgi as _parse
from .._http import server_timing
from .._http.gateway import _left_out as _http_left_out
from .._http.gateway import begin_http, end_http, release, wanted
from .._patching import leave

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

now = _recorder.now

#: Sent websocket messages recorded as stages of their own; later ones are only counted.
MAX_MESSAGE_STAGES = 100


#: What `decide` says of a connection that will not be recorded.
PASS: Any = object()

#: ``[True]`` while a connection a gateway left out (disabled, excluded, sampled out) runs
#: through its app: a gateway inside it — an app `instrument()` covers, wrapped in
#: `StagetraceMiddleware` too — takes no second draw, which would record a request the outer
#: gateway left out (with sample_rate 0.5, three requests in four). A list, emptied when the
#: connection ends: a task it started that outlives it (holding a copy of the context) is no
#: longer inside it, as a task outliving a recorded request is not inside its timeline.
#: The same mark as the WSGI gateway's (`_http.gateway._left_out`), which every gateway's
#: `wanted` reads: a WSGI app run in a thread for an ASGI request left out (Starlette's
#: ``WSGIMiddleware``), Django's handler mounted in the app, are not drawn again either.
_left_out = _http_left_out


def _no_app_decided(scope: Scope) -> bool:
    return False


#: Whether the app that set the scope's ``app`` — an app an adapter covers, around a
#: `StagetraceMiddleware` — took the decision already. The Starlette adapter sets it while
#: installed: on Python 3.12+ such an app hands a request it leaves out its own coroutine,
#: without any of ours that could set `_left_out`.
app_decided: Callable[[Scope], bool] = _no_app_decided


def left_out(scope: Scope) -> bool:
    """Whether a gateway around this point decided already for this connection: one of ours
    that left it out (`_left_out`), or an app an adapter covers, whose ``app`` the scope holds
    (`app_decided`). A gateway of another adapter inside it — Django's ASGI handler mounted in
    a Starlette app — then takes no second sampling draw."""
    return bool(_left_out.get()) or ("app" in scope and app_decided(scope))


def decide(scope: Scope) -> Any:
    """Decide, before the connection's coroutine exists, whether it will be recorded: `PASS`
    for an HTTP request or websocket that will not be (stagetrace disabled, the path excluded
    or sampled out, while no timeline records in this context), so an adapter can hand the
    app's own coroutine out untouched; else what `serve` takes as `decided` — the decision
    made (None: `serve` decides). Nothing here changes the context."""
    try:
        if scope.get("type") not in ("http", "websocket") or _recorder.current() is not None:
            return None
        if _left_out.get():
            return PASS
        cfg = _runtime.active()
        if not cfg.enabled:
            return PASS
        path = _parse.path(scope)
        return (cfg, path) if _recorder.sampled(cfg, path) else PASS
    except Exception as exc:
        _recorder.internal_error("asgi.begin", exc)
        return None


def begin(scope: Scope, framework: str, decided: Any = None) -> list[Any] | None:
    """Start the timeline of an HTTP request or websocket connection (None: not recording).
    `decided`: what `decide` said, when it was asked (the request is sampled in)."""
    if decided is not None:
        cfg, path = decided
    else:
        cfg = _runtime.active()
        if not cfg.enabled:
            return None
        path = _parse.path(scope)
        if not wanted(cfg, path):
            return None
    websocket = scope["type"] == "websocket"
    return begin_http(
        cfg,
        "ASGI websocket" if websocket else "ASGI",
        _parse.request(scope, cfg, path),
        framework=framework,
        protocol="websocket" if websocket else "http",
    )


class _Http:
    """Observes one HTTP request's receive/send. Our side work is guarded; the app's own
    messages and exceptions pass through untouched."""

    __slots__ = (
        "body_bytes",
        "body_wait",
        "chunks",
        "disconnected",
        "root",
        "sent",
        "status",
        "write",
        "write_bytes",
    )

    def __init__(self, root: list[Any]) -> None:
        self.root = root
        self.status: int | None = None
        self.body_wait = 0
        self.body_bytes = 0
        self.disconnected = False
        self.write: list[Any] | None = None
        self.chunks = 0
        self.write_bytes = 0
        self.sent = False

    def receive(self, receive: Receive) -> Receive:
        async def observed_receive() -> Message:
            t0 = now()
            message = await receive()
            try:
                kind = message.get("type")
                if kind == "http.request":
                    self.body_wait += now() - t0
                    self.body_bytes += len(message.get("body", b""))
                elif kind == "http.disconnect" and not self.sent:
                    self.disconnected = True
            except Exception as exc:
                _recorder.internal_error("asgi.receive", exc)
            return message

        return observed_receive

    def send(self, send: Send) -> Send:
        async def observed_send(message: Message) -> None:
            try:
                kind = message.get("type")
                if kind == "http.response.start":
                    message = self._started(message)
                elif kind == "http.response.body":
                    self.chunks += 1
                    self.write_bytes += len(message.get("body", b""))
            except Exception as exc:
                _recorder.internal_error("asgi.send", exc)
                kind = None
            await send(message)
            try:
                if (kind == "http.response.body" and not message.get("more_body", False)) or (
                    kind == "http.response.pathsend"
                ):
                    self._finish_write()
            except Exception as exc:
                _recorder.internal_error("asgi.send", exc)

        return observed_send

    def _started(self, message: Message) -> Message:
        root = self.root
        tl = _recorder.timeline_of(root)
        status = message.get("status")
        self.status = _number(status)
        if tl is None:
            return message
        tl.status = self.status
        _recorder.root_attrs(root)["http.response.first_byte_ns"] = now() - _recorder.start_of(root)
        if tl.settings.echo_request_id:
            message = _with_request_id(message, tl)
        if tl.settings.server_timing:
            message = _with_server_timing(message, root)
        self.write = _recorder.enter("response.write", "body")
        return message

    def _finish_write(self, exc: BaseException | None = None) -> None:
        write, self.write = self.write, None
        if not self.sent:
            self.sent = True
            _recorder.mark_sent(self.root)
        if write is None:
            return
        _recorder.set_attrs(
            write, {"chunks": self.chunks, "http.response.body.size": self.write_bytes}
        )
        # Sent from another task than the response start: finish leaves its context alone.
        _recorder.finish(write, exc)

    def end(self, exc: BaseException | None = None) -> None:
        if self.write is not None:
            self._finish_write(exc)
        attrs = _recorder.root_attrs(self.root)
        if self.body_bytes:
            attrs["http.request.body.read_ns"] = self.body_wait
            attrs["http.request.body.received"] = self.body_bytes
        if self.disconnected:
            attrs["http.client_disconnected"] = True
        end_http(self.root, self.status, self.write_bytes if self.sent else None, exc)


def _with_request_id(message: Message, tl: Any) -> Message:
    header = tl.settings.request_id_header.encode("latin-1")
    headers = list(message.get("headers") or ())
    if not any(bytes(k).lower() == header for k, _ in headers):
        value = (tl.request_id or f"{tl.trace_id:032x}").encode("latin-1")
        headers.append((header, value))
        return {**message, "headers": headers}
    return message


def _with_server_timing(message: Message, root: Any) -> Message:
    """The response start with our Server-Timing value after the app's own, if it set one."""
    try:
        ours = server_timing.value(root)
        if ours is None:
            return message
        headers = []
        existing = None
        for k, v in message.get("headers") or ():
            if bytes(k).lower() == b"server-timing":
                existing = server_timing.append(existing, bytes(v).decode("latin-1"))
            else:
                headers.append((k, v))
        value = server_timing.append(existing, ours).encode("latin-1")
        headers.append((b"server-timing", value))
        return {**message, "headers": headers}
    except Exception as exc:
        _recorder.internal_error("asgi.server_timing", exc)
        return message


class _Websocket:
    """Observes one websocket connection's receive/send."""

    __slots__ = (
        "accepted",
        "close_code",
        "denied",
        "received",
        "received_bytes",
        "receive_wait",
        "root",
        "sent",
        "sent_bytes",
    )

    def __init__(self, root: list[Any]) -> None:
        self.root = root
        self.accepted = 0
        self.received = self.received_bytes = self.receive_wait = 0
        self.sent = self.sent_bytes = 0
        self.close_code: int | None = None
        #: The HTTP status of a handshake the app denied: closed before accepting (403, the
        #: ASGI specification) or answered with a denial response (its status).
        self.denied: int | None = None

    def receive(self, receive: Receive) -> Receive:
        async def observed_receive() -> Message:
            t0 = now()
            message = await receive()
            try:
                kind = message.get("type")
                if kind == "websocket.receive":
                    self.received += 1
                    self.receive_wait += now() - t0
                    self.received_bytes += _size(message)
                elif kind == "websocket.disconnect" and self.close_code is None:
                    code = message.get("code", 1005)
                    self.close_code = _number(code, 1005)
            except Exception as exc:
                _recorder.internal_error("asgi.websocket.receive", exc)
            return message

        return observed_receive

    def send(self, send: Send) -> Send:
        async def observed_send(message: Message) -> None:
            rec = None
            try:
                kind = message.get("type")
                if kind == "websocket.send":
                    self.sent += 1
                    size = _size(message)
                    self.sent_bytes += size
                    if self.sent <= MAX_MESSAGE_STAGES:
                        rec = _recorder.enter("response.write", "websocket.send", {"bytes": size})
                elif kind == "websocket.accept":
                    rec = _recorder.enter("response.write", "websocket.accept")
                elif kind == "websocket.close" and self.close_code is None:
                    if self.accepted or self.sent:
                        self.close_code = _number(message.get("code", 1000), 1000)
                    elif self.denied is None:  # before accept: the client gets HTTP 403
                        self.denied = 403
                elif kind == "websocket.http.response.start" and not self.accepted:
                    self.denied = _number(message.get("status"))
            except Exception as exc:
                _recorder.internal_error("asgi.websocket.send", exc)
                kind = None
            try:
                await send(message)
            except BaseException as exc:
                leave("asgi.websocket.send", rec, exc)
                raise
            leave("asgi.websocket.send", rec)
            if kind == "websocket.accept" and not self.accepted:
                try:
                    self.accepted = now() - _recorder.start_of(self.root)
                except Exception as exc:
                    _recorder.internal_error("asgi.websocket.send", exc)

        return observed_send

    def end(self, exc: BaseException | None = None) -> None:
        attrs = _recorder.root_attrs(self.root)
        attrs["websocket.messages_received"] = self.received
        attrs["websocket.bytes_received"] = self.received_bytes
        attrs["websocket.receive_wait_ns"] = self.receive_wait
        attrs["websocket.messages_sent"] = self.sent
        attrs["websocket.bytes_sent"] = self.sent_bytes
        if self.accepted:
            attrs["websocket.accepted_ns"] = self.accepted
        status = self.close_code
        if self.denied is not None and not self.accepted:
            # no websocket was opened: the client got this HTTP response instead (a close
            # code from a disconnect the app received afterwards closed nothing)
            status = self.denied
            attrs["websocket.denied"] = True
            attrs["http.response.status_code"] = status
        elif status is not None:
            attrs["websocket.close_code"] = status
        end_http(self.root, status, None, exc)


def _number(value: Any, default: int | None = None) -> int | None:
    """A status or close code as a plain ``int``: an ``int`` subclass (``HTTPStatus.CREATED``,
    which Starlette sends as the app gave it) counts as its number; anything else (a bool
    included) as `default`."""
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return default


def _size(message: Message) -> int:
    data = message.get("bytes")
    if data is None:
        data = message.get("text") or ""
    return len(data)


async def serve(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    framework: str,
    decided: Any = None,
) -> None:
    """Run `app` for one ASGI connection, recording it. Lifespan and unknown scope types, and
    connections inside a timeline that is already recording, pass straight through. The
    recorder's context is put back as it was afterwards, whatever happened. `decided`: what
    `decide` said of this connection just before (never `PASS`), if it was asked."""
    kind = scope.get("type")
    if kind not in ("http", "websocket"):
        await app(scope, receive, _flushing_at_shutdown(send) if kind == "lifespan" else send)
        return
    if _left_out.get():  # an outer gateway left this connection out
        await app(scope, receive, send)
        return
    prev = _recorder.current()
    try:
        tl = _recorder.timeline_of(prev)
        # Wrapped twice (middleware + instrument()): the outer gateway records; the more
        # specific adapter names the framework — if it serves the request itself (called
        # right from the outer gateway), not an app the request's own calls in process.
        if tl is not None and tl.framework == "asgi" and _recorder.parent_of(prev) is None:
            tl.framework = framework
    except Exception as exc:
        _recorder.internal_error("asgi.begin", exc)
        tl = prev = None
    if tl is not None:
        await app(scope, receive, send)
        return
    try:
        root = begin(scope, framework, decided)
        observer: _Http | _Websocket | None = None
        if root is not None:
            observer = _Http(root) if kind == "http" else _Websocket(root)
    except Exception as exc:
        _recorder.internal_error("asgi.begin", exc)
        _recorder.restore(prev)
        observer = None
    if observer is None:
        mark = [True]
        _left_out.set(mark)
        try:
            await app(scope, receive, send)
        finally:
            mark.clear()  # (and the context as it was: set, not reset, which cannot fail)
            _left_out.set(None)
        return
    try:
        await app(scope, observer.receive(receive), observer.send(send))
    except BaseException as exc:
        _end(observer, exc, prev)
        raise
    _end(observer, None, prev)


def _flushing_at_shutdown(send: Send) -> Send:
    """The lifespan's `send`: before the app reports its shutdown done, the timelines still
    queued are delivered (at most the flush deadline). uvicorn re-raises SIGTERM once it has
    shut down gracefully, so the process then dies without running exit handlers. The wait
    runs in a thread: the event loop goes on (other apps' tasks, a test client's loop)."""

    async def lifespan_send(message: MutableMapping[str, Any]) -> None:
        if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            try:
                await _in_thread(_pipeline.flush_at_shutdown)
            except Exception as exc:
                _recorder.internal_error("asgi.shutdown", exc)
        await send(message)

    return lifespan_send


async def _in_thread(func: Callable[[], None]) -> None:
    """Run `func` in a worker thread of the running event loop: asyncio's default executor,
    or anyio's threads under another loop (trio); in this thread if there is neither."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        try:
            import anyio.to_thread
        except ImportError:
            func()
            return
        await anyio.to_thread.run_sync(func)
        return
    await loop.run_in_executor(None, func)


def _end(observer: _Http | _Websocket, exc: BaseException | None, prev: Any) -> None:
    release(observer.root)
    try:
        observer.end(exc)
    except Exception as e:
        _recorder.internal_error("asgi.end", e)
    _recorder.restore(prev)
