"""The generic ASGI middleware around a bare ASGI app (no framework)."""

from __future__ import annotations

import asyncio

import pytest

import stagetrace
from stagetrace.asgi import StagetraceMiddleware


async def bare_app(scope, receive, send):
    """A hand-written ASGI app: reads the body, streams three chunks, or echoes websockets."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "bye":
                await send({"type": "websocket.close", "code": 4001})
                return
            await send({"type": "websocket.send", "text": message["text"].upper()})
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/boom":
        raise RuntimeError("app failure")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    for i in range(3):
        with stagetrace.stage(f"chunk {i}"):
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
    await send({"type": "http.response.body", "body": f"{len(body)}".encode()})


def http_scope(path="/", method="POST", headers=()):
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def call(app, scope, messages):
    sent = []
    incoming = list(messages)

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_http_request_timeline(captured):
    """Gateway with body read, first byte and completion; a response.write stage holding the
    streamed chunks' work; the status; the app's own stages."""
    app = StagetraceMiddleware(bare_app, http_clients=False)
    body = [
        {"type": "http.request", "body": b"a" * 100, "more_body": True},
        {"type": "http.request", "body": b"b" * 50},
    ]
    sent = await call(app, http_scope(headers=[(b"x-request-id", b"req-1")]), body)
    assert sent[0]["status"] == 200 and sent[-1]["body"] == b"150"
    (tl,) = captured
    assert tl.framework == "asgi" and tl.status == 200 and tl.request_id == "req-1"
    assert tl.method == "POST" and tl.path == "/"
    gw = tl.stages[0].attrs
    assert gw["http.request.body.received"] == 150
    assert gw["http.response.status_code"] == 200
    assert gw["http.response.body.size"] == 33
    assert 0 < gw["http.response.first_byte_ns"] < gw["http.response.sent_ns"] <= tl.duration_ns
    (write,) = [s for s in tl.stages if s.kind == "response.write"]
    assert write.attrs == {"chunks": 4, "http.response.body.size": 33}
    chunks = [s for s in tl.stages if s.name.startswith("chunk")]
    assert [c.parent for c in chunks] == [write.id] * 3
    assert write.duration_ns >= 15_000_000


async def test_app_exception_is_recorded_and_propagates(captured):
    app = StagetraceMiddleware(bare_app, http_clients=False)
    with pytest.raises(RuntimeError, match="app failure"):
        await call(app, http_scope("/boom"), [{"type": "http.request"}])
    (tl,) = captured
    assert tl.stages[0].error.type == "RuntimeError" and tl.status is None


async def test_websocket_connection_is_one_timeline(captured):
    """Accept, messages received and sent (counted, sent ones as stages), the close code."""
    app = StagetraceMiddleware(bare_app, http_clients=False)
    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [],
        "scheme": "ws",
        "query_string": b"",
        "root_path": "",
    }
    messages = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.receive", "text": "there"},
        {"type": "websocket.receive", "text": "bye"},
    ]
    sent = await call(app, scope, messages)
    assert [m["type"] for m in sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.send",
        "websocket.close",
    ]
    (tl,) = captured
    assert tl.protocol == "websocket" and tl.status == 4001 and tl.method is None
    attrs = tl.stages[0].attrs
    assert attrs["websocket.messages_received"] == 3
    assert attrs["websocket.bytes_received"] == 10
    assert attrs["websocket.messages_sent"] == 2 and attrs["websocket.close_code"] == 4001
    assert "http.response.status_code" not in attrs  # a close code is no HTTP status
    names = [s.name for s in tl.stages if s.kind == "response.write"]
    assert names == ["websocket.accept", "websocket.send", "websocket.send"]


async def test_a_denied_websocket_has_no_close_code_from_the_disconnect_after(captured):
    """An app that closes before accepting and then reads the disconnect the server reports
    (code 1006): the handshake was denied with HTTP 403 and no websocket ever closed, so the
    timeline has the 403 and no close code."""

    async def denying(scope, receive, send):
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})
        await receive()  # websocket.disconnect

    app = StagetraceMiddleware(denying, http_clients=False)
    scope = {"type": "websocket", "path": "/ws", "headers": [], "scheme": "ws",
             "query_string": b"", "root_path": ""}  # fmt: skip
    messages = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1006}]
    await call(app, scope, messages)
    (tl,) = captured
    attrs = tl.stages[0].attrs
    assert tl.status == 403 and attrs["http.response.status_code"] == 403
    assert attrs["websocket.denied"] is True and "websocket.close_code" not in attrs


async def test_lifespan_passes_through_untouched(captured):
    app = StagetraceMiddleware(bare_app, http_clients=False)
    sent = await call(
        app, {"type": "lifespan"}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert captured == []


async def test_wrapping_twice_records_once(captured):
    """Two StagetraceMiddleware layers: one timeline, no doubled gateway."""
    app = StagetraceMiddleware(
        StagetraceMiddleware(bare_app, http_clients=False), http_clients=False
    )
    await call(app, http_scope(), [{"type": "http.request"}])
    (tl,) = captured
    assert [s.kind for s in tl.stages].count("gateway") == 1


async def test_echo_request_id_adds_the_header_only_when_asked(captured):
    app = StagetraceMiddleware(bare_app, http_clients=False)
    sent = await call(app, http_scope(), [{"type": "http.request"}])
    assert all(k != b"x-request-id" for k, _ in sent[0]["headers"])
    stagetrace.configure(echo_request_id=True)
    sent = await call(app, http_scope(), [{"type": "http.request"}])
    headers = dict(sent[0]["headers"])
    assert headers[b"x-request-id"].decode() == captured[1].request_id


async def test_client_disconnect_is_recorded(captured):
    async def waits_for_disconnect(scope, receive, send):
        await receive()
        message = await receive()
        assert message["type"] == "http.disconnect"

    app = StagetraceMiddleware(waits_for_disconnect, http_clients=False)
    await call(app, http_scope(), [{"type": "http.request"}, {"type": "http.disconnect"}])
    assert captured[0].stages[0].attrs["http.client_disconnected"] is True


def test_options_are_applied_as_configuration():
    StagetraceMiddleware(bare_app, http_clients=False, service="asgi-svc", max_stages=50)
    assert stagetrace.settings().service == "asgi-svc"
    with pytest.raises(stagetrace.ConfigurationError, match="sample_rate"):
        StagetraceMiddleware(bare_app, sample_rate=2)
