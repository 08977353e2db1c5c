"""The transports against misbehaving servers on loopback: retries, deadlines, keep-alive."""

from __future__ import annotations

import base64
import gzip
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from stagetrace.otel._transport import (
    ExportResult,
    GrpcTransport,
    HttpTransport,
    exporter_config,
    partial_success_rejected,
)

BODY = b"\x0a\x02\x0a\x00"  # any bytes: these servers do not decode them


class Scripted(http.server.ThreadingHTTPServer):
    """Answers each POST with the next (status, headers, body) of a script; the last repeats."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.connections = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        self.connections += 1
        return super().get_request()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status, headers, payload = self.server.script[
            min(len(self.server.requests), len(self.server.script)) - 1
        ]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[list[tuple[int, dict[str, str], bytes]]], Scripted]]:
    servers: list[Scripted] = []

    def start(script: list[tuple[int, dict[str, str], bytes]]) -> Scripted:
        server = Scripted(script)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


_open: list[HttpTransport | GrpcTransport] = []


@pytest.fixture(autouse=True)
def _close_transports() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def http_transport(url: str, **overrides: Any) -> HttpTransport:
    transport = HttpTransport(
        exporter_config({}, {"traces_endpoint": url + "/v1/traces", **overrides})
    )
    _open.append(transport)
    return transport


def test_retryable_statuses_are_retried_until_accepted(serve: Any) -> None:
    """429, 502, 503 and 504 are retried (Retry-After honoured); then the 200 counts as OK."""
    server = serve(
        [
            (429, {"Retry-After": "0"}, b""),
            (502, {}, b""),
            (503, {}, b""),
            (504, {}, b""),
            (200, {}, b""),
        ]
    )
    transport = http_transport(server.url)
    transport._backoff.initial = 0.01
    outcome = transport.export(BODY, deadline=time.monotonic() + 10)
    transport.close()
    assert outcome.ok and outcome.attempts == 5
    assert [body for _, body in server.requests] == [BODY] * 5


@pytest.mark.parametrize("retry_after", ["0", "-5", "0.0001"])
def test_a_short_retry_after_does_not_make_the_exporter_hammer_the_collector(
    serve: Any, retry_after: str
) -> None:
    """A collector answering 429 with ``Retry-After: 0`` (or a negative or tiny value) again
    and again is waited for at least as long as the exporter's own backoff between attempts:
    a handful of requests within a one-second deadline, not one per round trip (thousands,
    at the overloaded collector that asked to be left alone)."""
    server = serve([(429, {"Retry-After": retry_after}, b"")])
    transport = http_transport(server.url)
    started = time.monotonic()
    outcome = transport.export(BODY, deadline=started + 1.0)
    assert outcome.result is ExportResult.RETRYABLE and outcome.detail == "HTTP 429"
    assert outcome.attempts <= 4, outcome
    assert len(server.requests) <= 4


def test_a_retry_after_given_as_a_date_is_honoured(serve: Any) -> None:
    """``Retry-After`` may be an HTTP date (RFC 9110) as well as seconds: a 503 saying "not
    before two seconds from now" in that form is waited for, not read as no hint at all."""
    from email.utils import formatdate

    when = formatdate(time.time() + 2, usegmt=True)
    server = serve([(503, {"Retry-After": when}, b""), (200, {}, b"")])
    transport = http_transport(server.url)
    transport._backoff.initial = 0.01
    started = time.monotonic()
    outcome = transport.export(BODY, deadline=started + 10)
    assert outcome.ok and outcome.attempts == 2, outcome
    assert time.monotonic() - started >= 0.9  # the date has whole seconds: 1 to 2 s left


def test_permanent_statuses_are_not_retried(serve: Any) -> None:
    """400 is a permanent failure: one attempt, reported as FAILED with the status."""
    server = serve([(400, {}, b"")])
    outcome = http_transport(server.url).export(BODY)
    assert outcome.result is ExportResult.FAILED
    assert (outcome.attempts, outcome.detail) == (1, "HTTP 400")
    assert len(server.requests) == 1


def test_retries_stop_at_the_deadline(serve: Any) -> None:
    """A collector that keeps answering 503: the export gives up before its deadline."""
    server = serve([(503, {}, b"")])
    transport = http_transport(server.url)
    started = time.monotonic()
    outcome = transport.export(BODY, deadline=started + 1.2)
    elapsed = time.monotonic() - started
    assert outcome.result is ExportResult.RETRYABLE and outcome.detail == "HTTP 503"
    assert outcome.attempts >= 2 and elapsed < 1.2 + 1.0  # the deadline, plus slack


def test_a_stalled_collector_cannot_hold_an_export_past_its_deadline() -> None:
    """A server that accepts the connection and never answers: the export returns on time."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    transport = http_transport(f"http://127.0.0.1:{listener.getsockname()[1]}")
    started = time.monotonic()
    outcome = transport.export(BODY, deadline=started + 0.5)
    elapsed = time.monotonic() - started
    transport.close()
    listener.close()
    for conn in accepted:
        conn.close()
    assert outcome.result is ExportResult.RETRYABLE
    assert "timed out" in outcome.detail
    assert elapsed < 0.5 + 1.0  # the deadline, plus slack for a loaded machine


def test_one_connection_is_kept_across_exports(serve: Any) -> None:
    """Keep-alive: ten exports over one TCP connection."""
    server = serve([(200, {}, b"")])
    transport = http_transport(server.url)
    assert all(transport.export(BODY).ok for _ in range(10))
    transport.close()
    assert len(server.requests) == 10 and server.connections == 1


def test_a_connection_closed_by_the_collector_is_replaced_without_backoff(serve: Any) -> None:
    """The server closes after each response: the next export reconnects and succeeds at once."""
    server = serve([(200, {"Connection": "close"}, b"")])
    transport = http_transport(server.url)
    outcomes = [transport.export(BODY) for _ in range(3)]
    assert [(o.ok, o.attempts) for o in outcomes] == [(True, 1)] * 3
    assert server.connections == 3


def test_an_idle_connection_dropped_by_the_collector_is_retried_at_once() -> None:
    """The collector drops a kept-alive connection while idle: the next export still succeeds in
    one attempt, on a fresh connection."""
    served = 0
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        nonlocal served
        while served < 2:
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                served += 1
                # close without "Connection: close": the client believes it is kept alive

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    transport = http_transport(f"http://127.0.0.1:{listener.getsockname()[1]}")
    first = transport.export(BODY)
    time.sleep(0.1)
    second = transport.export(BODY)
    transport.close()
    thread.join(5)
    listener.close()
    assert first.ok and second.ok and second.attempts == 1
    assert served == 2


def test_close_interrupts_a_backoff_sleep(serve: Any) -> None:
    """close() from another thread (shutdown) ends an export waiting to retry, at once."""
    server = serve([(503, {"Retry-After": "30"}, b"")])
    transport = http_transport(server.url)
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(transport.export(BODY, deadline=time.monotonic() + 60))
    )
    worker.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.monotonic()
    transport.close()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 2  # not the 30 s Retry-After
    assert results[0].result is ExportResult.RETRYABLE


def test_headers_and_gzip_are_sent(serve: Any) -> None:
    """Configured headers go out, the body is gzip with Content-Encoding, protobuf content type."""
    server = serve([(200, {}, b"")])
    transport = HttpTransport(
        exporter_config(
            {
                "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s3cr%3Dt",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            },
            {"endpoint": server.url},
        )
    )
    _open.append(transport)
    assert transport.export(BODY * 100).ok
    headers, body = server.requests[0]
    assert headers["x-api-key"] == "s3cr=t"
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["user-agent"].startswith("stagetrace/")
    assert gzip.decompress(body) == BODY * 100


def test_credentials_in_the_endpoint_are_sent_as_basic_auth(serve: Any) -> None:
    """``http://user:pass@host`` sends Basic auth (percent-decoded, as OpenTelemetry's own HTTP
    exporter does through requests) and no userinfo in the request line; an Authorization
    header configured in OTEL_EXPORTER_OTLP_HEADERS wins over the URL's."""
    server = serve([(200, {}, b"")])
    with_userinfo = server.url.replace("http://", "http://alice:s3cret%21@")
    assert http_transport(with_userinfo).export(BODY).ok
    expected = "Basic " + base64.b64encode(b"alice:s3cret!").decode()
    assert server.requests[0][0]["authorization"] == expected

    configured = HttpTransport(
        exporter_config(
            {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken"},
            {"endpoint": with_userinfo},
        )
    )
    _open.append(configured)
    assert configured.export(BODY).ok
    assert server.requests[1][0]["authorization"] == "Bearer t0ken"


def test_partial_success_is_reported(serve: Any) -> None:
    """A 200 whose ExportTraceServiceResponse reports rejected spans is OK with the count."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTracePartialSuccess,
        ExportTraceServiceResponse,
    )

    reply = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=3, error_message="too old")
    ).SerializeToString()
    server = serve([(200, {"Content-Type": "application/x-protobuf"}, reply)])
    outcome = http_transport(server.url).export(BODY)
    assert outcome.ok and outcome.rejected == 3 and outcome.detail == "too old"
    assert partial_success_rejected(b"") == (0, "")
    assert partial_success_rejected(b"\x0a\x05\xff") == (0, "")  # truncated: ignored, no error


def test_spans_the_collector_rejects_are_warned_about_not_only_counted(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """When the collector accepts a request but reports spans it rejected (OTLP partial
    success), those spans are lost: besides ``otel_spans_rejected`` in ``stats()``, a warning
    says how many and the collector's reason — once, until an export is accepted whole — as
    export failures are warned about, so the loss is not silent."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTracePartialSuccess,
        ExportTraceServiceResponse,
    )

    import stagetrace
    from stagetrace.otel._encode import SpanEncoder
    from stagetrace.otel._sink import OtelSink

    reply = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=2, error_message="too old")
    ).SerializeToString()
    server = serve([(200, {}, reply), (200, {}, reply), (200, {}, b"")])
    sink = OtelSink(
        encoder=SpanEncoder({"service.name": "x"}), transport=http_transport(server.url)
    )
    stagetrace.configure(sinks=[sink])
    caplog.set_level("WARNING", logger="stagetrace")
    for _ in range(3):
        with stagetrace.timeline("job"), stagetrace.stage("step"):
            pass
        assert stagetrace.flush(5)
    stats = stagetrace.stats()
    assert stats["otel_spans_rejected"] == 4 and stats["otel_spans_exported"] == 2
    warnings = [r.getMessage() for r in caplog.records if "reject" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "2 spans" in warnings[0] and "too old" in warnings[0]


@contextmanager
def grpc_collector(export: Callable[[bytes, grpc.ServicerContext], bytes]) -> Iterator[int]:
    """A real gRPC server on loopback whose ``TraceService/Export`` is `export` (bytes in,
    bytes out); yields its port, stops it afterwards."""
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def test_grpc_unavailable_is_retried_and_metadata_sent() -> None:
    """A real gRPC server answering UNAVAILABLE once: the export retries and succeeds; headers
    arrive as metadata, the endpoint's credentials as Basic auth (not in the target); our bytes
    arrive unchanged."""
    seen: list[tuple[bytes, dict[str, str]]] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append((request, dict(context.invocation_metadata())))
        if len(seen) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b""

    with grpc_collector(export) as port:
        transport = GrpcTransport(
            exporter_config(
                {"OTEL_EXPORTER_OTLP_HEADERS": "X-Tenant=blue"},
                {
                    "endpoint": f"http://alice:s3cret@127.0.0.1:{port}",
                    "protocol": "grpc",
                    "compression": "gzip",
                },
            )
        )
        transport._backoff.initial = 0.01
        outcome = transport.export(BODY, deadline=time.monotonic() + 10)
        transport.close()
    assert outcome.ok and outcome.attempts == 2, outcome
    assert [request for request, _ in seen] == [BODY, BODY]
    assert seen[1][1]["x-tenant"] == "blue"
    assert seen[1][1]["authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()


def _export_once(export: Callable[[bytes, grpc.ServicerContext], bytes], seconds: float) -> Any:
    """Export `BODY` over gRPC to a collector whose ``Export`` is `export`, with `seconds` to
    do it in (a short first backoff); the outcome."""
    with grpc_collector(export) as port:
        transport = GrpcTransport(
            exporter_config({}, {"endpoint": f"http://127.0.0.1:{port}", "protocol": "grpc"})
        )
        _open.append(transport)
        transport._backoff.initial = 0.01
        return transport.export(BODY, deadline=time.monotonic() + seconds)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def test_grpc_retry_info_delay_is_honoured() -> None:
    """A collector answering RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` detail (its
    way to say when to come back, as an HTTP collector's ``Retry-After``) is not called again
    before that delay: the OTLP specification says the client should honour it, and the
    official exporter does. Our own backoff's shorter wait does not cut it short."""
    duration = b"\x10" + _varint(700_000_000)  # 0.7 s
    retry_info = _ld(0x0A, duration)
    detail = _ld(0x0A, b"type.googleapis.com/google.rpc.RetryInfo") + _ld(0x12, retry_info)
    status = b"\x08\x08" + _ld(0x12, b"slow down") + _ld(0x1A, detail)
    calls: list[float] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(time.monotonic())
        if len(calls) == 1:
            context.set_trailing_metadata((("grpc-status-details-bin", status),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
        return b""

    outcome = _export_once(export, seconds=10)
    assert outcome.ok and outcome.attempts == 2, outcome
    assert calls[1] - calls[0] >= 0.7 * 0.95


def test_grpc_resource_exhausted_without_retry_info_is_not_retried() -> None:
    """RESOURCE_EXHAUSTED with no ``RetryInfo``: the OTLP specification makes it retryable
    only when the collector says recovery is possible (with that detail) — a collector over its
    quota was sent the same batch again and again until the deadline, adding to its load."""
    calls: list[float] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(time.monotonic())
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "over quota")
        return b""

    outcome = _export_once(export, seconds=2)
    assert outcome.result is ExportResult.FAILED and outcome.attempts == 1, outcome
    assert "RESOURCE_EXHAUSTED" in outcome.detail and len(calls) == 1


def test_grpc_resource_exhausted_with_an_empty_retry_info_is_retried() -> None:
    """A ``RetryInfo`` with no ``retry_delay`` still says the collector will recover: the batch
    is sent again, after our own backoff."""
    detail = _ld(0x0A, b"type.googleapis.com/google.rpc.RetryInfo")  # an empty RetryInfo
    status = b"\x08\x08" + _ld(0x12, b"later") + _ld(0x1A, detail)
    calls: list[float] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(time.monotonic())
        if len(calls) == 1:
            context.set_trailing_metadata((("grpc-status-details-bin", status),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "later")
        return b""

    outcome = _export_once(export, seconds=10)
    assert outcome.ok and outcome.attempts == 2, outcome


def test_grpc_unreachable_fails_within_the_deadline() -> None:
    """Nothing listening: UNAVAILABLE until the deadline, reported as retryable, on time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = GrpcTransport(
        exporter_config({}, {"endpoint": f"http://127.0.0.1:{port}", "protocol": "grpc"})
    )
    started = time.monotonic()
    outcome = transport.export(BODY, deadline=started + 1.0)
    elapsed = time.monotonic() - started
    transport.close()
    assert outcome.result is ExportResult.RETRYABLE and outcome.detail == "gRPC UNAVAILABLE"
    assert elapsed < 1.0 + 1.0  # the deadline, plus slack for a loaded machine
