"""A loopback collector that accepts what the exporting tracers send, drops it, and counts the
spans in it.

It speaks just enough of three protocols: OTLP/HTTP protobuf (``POST /v1/traces``, answered
with an empty ``ExportTraceServiceResponse``), Sentry's envelope endpoint
(``POST /api/<project>/envelope/``) and the Datadog agent's trace intake
(``PUT /v0.x/traces``, answered with an empty ``rate_by_service``; its spans are counted in the
traced process instead). Bodies are only stored while a request is served; they are
decoded and counted when `spans()` is called, between blocks, so the collector's own work does
not overlap the measured requests more than receiving bytes on loopback does.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: The Datadog agent's /info: the endpoints a current agent offers, so ddtrace neither warns
#: about an old agent nor falls back.
INFO = json.dumps(
    {
        "version": "7.60.0",
        "endpoints": [
            "/v0.4/traces",
            "/v0.5/traces",
            "/v0.6/stats",
            "/debugger/v1/input",
            "/debugger/v1/diagnostics",
            "/debugger/v2/input",
            "/evp_proxy/v2/",
        ],
    }
).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real collectors do
    # Headers and body go out in two writes: without TCP_NODELAY the second waits for the
    # client's delayed ACK, 40 ms per request.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        encoding = (self.headers.get("content-encoding") or "").lower()
        with self.server.lock:
            self.server.pending.append((self.path, encoding, body))
            self.server.requests += 1
            self.server.bytes += len(body)
        if self.path.startswith("/v1/"):
            self._answer(b"", "application/x-protobuf")
        elif "/traces" in self.path:
            self._answer(b'{"rate_by_service": {}}', "application/json")
        else:
            self._answer(b"{}", "application/json")

    do_PUT = do_POST

    def do_GET(self) -> None:
        if self.path == "/info":  # the Datadog agent's capabilities
            self._answer(INFO, "application/json")
        else:
            self._answer(b"{}", "application/json")

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.pending: list[tuple[str, str, bytes]] = []
        self.requests = 0
        self.bytes = 0


class Collector:
    """A collector on a free loopback port, serving on a daemon thread until `close()`."""

    def __init__(self) -> None:
        self._server = _Server()
        self.port = self._server.server_address[1]
        self._spans = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def otlp_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sentry_dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    def spans(self) -> int:
        """Spans received so far (OTLP spans; Sentry transactions count 1 + their spans)."""
        with self._server.lock:
            pending, self._server.pending = self._server.pending, []
        for path, encoding, body in pending:
            try:
                self._spans += _count(path, _decode(encoding, body))
            except Exception as exc:  # a malformed body is counted as an error, not fatal
                self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
        return self._spans

    def stats(self) -> dict[str, int]:
        return {"requests": self._server.requests, "bytes": self._server.bytes}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _decode(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    return body


def _count(path: str, body: bytes) -> int:
    if path.startswith("/v1/traces"):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if "/envelope" in path:
        return _count_envelope(body)
    return 0


def _count_envelope(body: bytes) -> int:
    """Spans in a Sentry envelope: a header line, then items (a header line with an optional
    ``length``, then the payload)."""
    pos = body.find(b"\n")
    if pos < 0:
        return 0
    pos += 1
    spans = 0
    while pos < len(body):
        end = body.find(b"\n", pos)
        if end < 0:
            end = len(body)
        header = json.loads(body[pos:end] or b"{}")
        pos = end + 1
        length = header.get("length")
        if length is None:
            end = body.find(b"\n", pos)
            end = len(body) if end < 0 else end
            payload, pos = body[pos:end], end + 1
        else:
            payload, pos = body[pos : pos + length], pos + length + 1
        kind = header.get("type")
        if kind == "transaction":
            spans += 1 + len(json.loads(payload).get("spans") or ())
        elif kind == "span":
            spans += 1
    return spans
