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

from . import _config, _http, _recorder
from ._safety import report

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

now = _recorder.now
_get, _set = _recorder._get, _recorder._set
TL, START = _recorder.TL, _recorder.START

#: Sent websocket messages recorded as stages of their own; later ones are only counted.
MAX_MESSAGE_STAGES = 100


def _headers(scope: Scope, wanted: frozenset[bytes]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers") or ():
        if name in wanted or name.lower() in wanted:  # servers send lower case already
            lname = name.lower()
            if lname not in found:
                found[lname] = value
    return found


_wanted: dict[str, tuple[bytes, frozenset[bytes]]] = {}


def _wanted_headers(request_id_header: str) -> tuple[bytes, frozenset[bytes]]:
    found = _wanted.get(request_id_header)
    if found is None:
        rid = request_id_header.encode("latin-1")
        found = _wanted[request_id_header] = (
            rid,
            frozenset(
                (rid, b"x-request-start", b"x-queue-start", b"traceparent", b"content-length")
            ),
        )
    return found


def begin(scope: Scope, framework: str) -> list[Any] | None:
    """Start the timeline of an HTTP request or websocket connection (None: not recording)."""
    rid, wanted = _wanted_headers(_config.settings().request_id_header)
    h = _headers(scope, wanted)
    websocket = scope["type"] == "websocket"
    root = _http.begin_http(
        "ASGI websocket" if websocket else "ASGI",
        framework=framework,
        method=None if websocket else scope.get("method"),
        path=scope.get("root_path", "") + scope.get("path", ""),
        scheme=scope.get("scheme"),
        request_id=h.get(rid),
        queue_start=h.get(b"x-request-start") or h.get(b"x-queue-start"),
        traceparent=h.get(b"traceparent"),
        body_size=h.get(b"content-length"),
        protocol="websocket" if websocket else "http",
    )
    return root


class _Http:
    """Observes one HTTP request's receive/send."""

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
        self.sent = 0

    def receive(self, receive: Receive) -> Receive:
        async def observed_receive() -> Message:
            t0 = now()
            message = await receive()
            kind = message.get("type")
            if kind == "http.request":
                self.body_wait += now() - t0
                self.body_bytes += len(message.get("body", b""))
            elif kind == "http.disconnect" and not self.sent:
                self.disconnected = True
            return message

        return observed_receive

    def send(self, send: Send) -> Send:
        root = self.root
        tl = root[TL]

        async def observed_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                self.status = message.get("status")
                tl.status = self.status
                _http.gateway_attrs(root)["http.response.first_byte_ns"] = now() - root[START]
                if tl.settings.echo_request_id:
                    message = _with_request_id(message, tl)
                self.write = _recorder.enter("response.write", "body")
                await send(message)
                return
            if kind == "http.response.body":
                body = message.get("body", b"")
                self.chunks += 1
                self.write_bytes += len(body)
                await send(message)
                if not message.get("more_body", False):
                    self._finish_write()
                return
            await send(message)
            if kind == "http.response.pathsend":
                self._finish_write()

        return observed_send

    def _finish_write(self, exc: BaseException | None = None) -> None:
        write, self.write = self.write, None
        if not self.sent:
            self.sent = now() - self.root[START]
        if write is None:
            return
        _recorder.annotate_record(
            write, {"chunks": self.chunks, "http.response.body.size": self.write_bytes}
        )
        if _get() is write:
            _recorder.exit(write, exc)
        else:  # sent from another task than the response start: leave its context alone
            _recorder.close(write, exc)

    def end(self, exc: BaseException | None = None) -> None:
        if self.write is not None:
            self._finish_write(exc)
        attrs = _http.gateway_attrs(self.root)
        if self.body_bytes:
            attrs["http.request.body.read_ns"] = self.body_wait
            attrs["http.request.body.received"] = self.body_bytes
        if self.sent:
            attrs["http.response.sent_ns"] = self.sent
        if self.disconnected:
            attrs["http.client_disconnected"] = True
        _http.end_http(self.root, self.status, self.write_bytes if self.sent else None, exc)


def _with_request_id(message: Message, tl: Any) -> Message:
    try:
        header = tl.settings.request_id_header.encode("latin-1")
        headers = list(message.get("headers") or ())
        if not any(bytes(k).lower() == header for k, _ in headers):
            value = (tl.request_id or f"{tl.trace_id:032x}").encode("latin-1")
            headers.append((header, value))
            return {**message, "headers": headers}
    except Exception as exc:
        report("asgi.echo_request_id", exc)
    return message


class _Websocket:
    """Observes one websocket connection's receive/send."""

    __slots__ = (
        "accepted",
        "close_code",
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

    def receive(self, receive: Receive) -> Receive:
        async def observed_receive() -> Message:
            t0 = now()
            message = await receive()
            kind = message.get("type")
            if kind == "websocket.receive":
                self.received += 1
                self.receive_wait += now() - t0
                self.received_bytes += _size(message)
            elif kind == "websocket.disconnect" and self.close_code is None:
                self.close_code = message.get("code", 1005)
            return message

        return observed_receive

    def send(self, send: Send) -> Send:
        async def observed_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "websocket.send":
                self.sent += 1
                size = _size(message)
                self.sent_bytes += size
                if self.sent <= MAX_MESSAGE_STAGES:
                    await _send_as_stage(send, message, "websocket.send", {"bytes": size})
                    return
            elif kind == "websocket.accept":
                await _send_as_stage(send, message, "websocket.accept", None)
                self.accepted = now() - self.root[START]
                return
            elif kind == "websocket.close" and self.close_code is None:
                self.close_code = message.get("code", 1000)
            await send(message)

        return observed_send

    def end(self, exc: BaseException | None = None) -> None:
        attrs = _http.gateway_attrs(self.root)
        attrs["websocket.messages_received"] = self.received
        attrs["websocket.bytes_received"] = self.received_bytes
        attrs["websocket.receive_wait_ns"] = self.receive_wait
        attrs["websocket.messages_sent"] = self.sent
        attrs["websocket.bytes_sent"] = self.sent_bytes
        if self.accepted:
            attrs["websocket.accepted_ns"] = self.accepted
        if self.close_code is not None:
            attrs["websocket.close_code"] = self.close_code
        _http.end_http(self.root, self.close_code, None, exc)


async def _send_as_stage(send: Send, message: Message, name: str, attrs: Any) -> None:
    rec = _recorder.enter("response.write", name, attrs)
    try:
        await send(message)
    except BaseException as exc:
        _recorder.exit(rec, exc)
        raise
    _recorder.exit(rec)


def _size(message: Message) -> int:
    data = message.get("bytes")
    if data is None:
        data = message.get("text") or ""
    return len(data)


async def serve(app: ASGIApp, scope: Scope, receive: Receive, send: Send, framework: str) -> None:
    """Run `app` for one ASGI connection, recording it. Lifespan and unknown scope types, and
    connections inside a timeline that is already recording, pass straight through."""
    kind = scope.get("type")
    if kind not in ("http", "websocket"):
        await app(scope, receive, send)
        return
    cur = _get()
    if cur is not None and not cur[TL].ended:
        # Wrapped twice (middleware + instrument()): the outer gateway records; the more
        # specific adapter names the framework.
        if cur[TL].framework == "asgi":
            cur[TL].framework = framework
        await app(scope, receive, send)
        return
    try:
        root = begin(scope, framework)
        observer: _Http | _Websocket | None = None
        if root is not None:
            observer = _Http(root) if kind == "http" else _Websocket(root)
    except Exception as exc:
        report("asgi.begin", exc)
        root = observer = None
    if observer is None:
        await app(scope, receive, send)
        return
    try:
        await app(scope, observer.receive(receive), observer.send(send))
    except BaseException as exc:
        _end(observer, exc)
        raise
    _end(observer, None)


def _end(observer: _Http | _Websocket, exc: BaseException | None) -> None:
    try:
        observer.end(exc)
    except Exception as e:
        report("asgi.end", e)
