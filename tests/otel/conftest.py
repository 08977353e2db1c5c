"""A real OpenTelemetry collector for the export tests: rotel, on free loopback ports.

The ``rotel`` package ships the rotel collector binary (``rotel/rotel-agent``). The fixture runs it
in the foreground as

    rotel-agent start --otlp-grpc-endpoint 127.0.0.1:G --otlp-http-endpoint 127.0.0.1:H \
        --exporter otlp --otlp-exporter-protocol http \
        --otlp-exporter-endpoint http://127.0.0.1:R --otlp-exporter-compression none \
        --traces-batch-timeout 5ms --otlp-exporter-retry-initial-backoff 100ms ...

so it receives OTLP/HTTP on H and OTLP/gRPC on G, decodes what arrives, batches it and forwards it
re-encoded over OTLP/HTTP to R: a small receiver in this process that parses each request with the
generated ``ExportTraceServiceRequest``. What the tests read is therefore what the collector
understood, not the bytes we sent. The receiver outlives collector restarts, so a test can
``stop()`` and ``start()`` the collector (same ports) to simulate an outage.
"""

from __future__ import annotations

import gzip
import http.server
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import REQUIRE_SERVICES


def rotel_binary() -> Path | None:
    try:
        import rotel
    except ImportError:
        return None
    path = Path(rotel.__file__).parent / "rotel-agent"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def free_port() -> int:
    """A loopback port of this process's own block (see `tests.servers.free_port`)."""
    from ..servers import free_port as own_port

    return own_port()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class _Receiver(http.server.ThreadingHTTPServer):
    """Where the collector forwards to: keeps every request, decoded."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.received: list[ExportTraceServiceRequest] = []
        self.changed = threading.Condition()


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.changed:
            self.server.received.append(request)
            self.server.changed.notify_all()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Collector:
    """A running rotel collector and what it forwarded.

    ``http_endpoint`` / ``grpc_endpoint`` are base URLs for ``OTEL_EXPORTER_OTLP_ENDPOINT``;
    ``spans()`` returns ``(resource_attributes, span)`` pairs decoded from what it forwarded.
    """

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.http_endpoint = f"http://127.0.0.1:{self.http_port}"
        self.grpc_endpoint = f"http://127.0.0.1:{self.grpc_port}"
        self.receiver = _Receiver()
        self._serving = threading.Thread(
            target=self.receiver.serve_forever, args=(0.05,), daemon=True
        )
        self._serving.start()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "rotel.log"
        self.starts = 0

    def command(self) -> list[str]:
        receiver = f"http://127.0.0.1:{self.receiver.server_address[1]}"
        return [
            str(self.binary),
            "start",
            "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
            "--exporter", "otlp",
            "--otlp-exporter-protocol", "http",
            "--otlp-exporter-endpoint", receiver,
            "--otlp-exporter-compression", "none",
            "--traces-batch-timeout", "5ms",
            "--otlp-exporter-retry-initial-backoff", "100ms",
            "--otlp-exporter-retry-max-elapsed-time", "5s",
            "--pid-file", str(self.workdir / "rotel.pid"),
            "--log-file", str(self.log),
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        """Start the collector and wait until both receivers accept connections."""
        assert self.process is None, "already running"
        self.starts += 1
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while not (port_open(self.http_port) and port_open(self.grpc_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"rotel did not start: {output}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the collector (SIGTERM, then SIGKILL after 5 s); its ports close."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def requests(self) -> list[ExportTraceServiceRequest]:
        """Every request the collector forwarded so far."""
        with self.receiver.changed:
            return list(self.receiver.received)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """``(resource attributes, Span)`` for every span forwarded so far, in arrival order."""
        out = []
        for request in self.requests():
            for rs in request.resource_spans:
                resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((resource, span) for span in ss.spans)
        return out

    def span_dicts(self) -> list[dict[str, Any]]:
        """Every span forwarded so far as a plain dict (ids in hex, attributes as Python values)."""
        return [span_dict(span, resource) for resource, span in self.spans()]

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, Any], Any]]:
        """Block until at least ``count`` spans arrived (or fail after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self.receiver.changed:
            while True:
                spans = self.spans()
                if len(spans) >= count:
                    return spans
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"collector forwarded {len(spans)} spans, wanted {count}")
                self.receiver.changed.wait(left)

    def close(self) -> None:
        self.stop()
        self.receiver.shutdown()
        self.receiver.server_close()


def any_value(value: Any) -> Any:
    """A decoded ``AnyValue`` as plain Python."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def span_dict(span: Any, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    """A decoded ``Span`` as a plain dict, for readable assertions."""
    return {
        "name": span.name,
        "kind": span.kind,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "attributes": {kv.key: any_value(kv.value) for kv in span.attributes},
        "events": [
            {
                "name": e.name,
                "time_unix_nano": e.time_unix_nano,
                "attributes": {kv.key: any_value(kv.value) for kv in e.attributes},
            }
            for e in span.events
        ],
        "status": {"code": span.status.code, "message": span.status.message},
        "trace_state": span.trace_state,
        # None where the proto predates Span.flags (opentelemetry-proto < 1.26: the oldest cell)
        "flags": span.flags if "flags" in span.DESCRIPTOR.fields_by_name else None,
        "resource": resource or {},
    }


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    """A running rotel collector on free loopback ports; stop()/start() it for outages."""
    binary = rotel_binary()
    if binary is None:
        message = "the rotel collector (pip package 'rotel') is not installed"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    c = Collector(binary, tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.close()


def exporting() -> dict[str, Any]:
    """Options exporting every stage as spans to an in-memory SDK TracerProvider of their own
    (kept apart from the one the tests give OpenTelemetry's instrumentations): the otel sink,
    which the OpenTelemetry context and outbound traceparent go with by default."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return {"sinks": ["otel"], "tracer_provider": provider}


# --- a loopback HTTP server for outbound calls (what they carried) ---------------------------

RECEIVED: list[dict[str, str]] = []


def calls_and_headers(tl: Any, count: int) -> list[tuple[Any, dict[str, str]]]:
    """The timeline's `count` http.client stages, each with the headers the server received
    for it (in order)."""
    stages = [s for s in tl.stages if s.kind == "http.client"]
    assert len(stages) == count and len(RECEIVED) == count
    return list(zip(stages, RECEIVED, strict=True))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A loopback HTTP server recording the headers of every GET in `RECEIVED`."""
    from tests.servers import http_target

    with http_target(RECEIVED) as url:
        yield url
