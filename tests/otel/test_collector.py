"""Encoder + transports against a real collector (rotel) on loopback, including outages."""

from __future__ import annotations

import time
from typing import Any

import pytest

from stagetrace.otel._encode import SpanEncoder
from stagetrace.otel._transport import ExportResult, exporter_config, make_transport

from .conftest import Collector, any_value

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
ROOT = bytes.fromhex("00f067aa0ba902b7")
REMOTE_PARENT = bytes.fromhex("b7ad6b7169203331")


def fragment(trace_id: bytes = TRACE, salt: int = 0) -> list[tuple[Any, ...]]:
    """A request's spans as the sink will hand them over: a server root under a remote parent,
    middleware, a db query with an event and an error, a template."""
    t0 = time.time_ns()
    ids = [(salt * 16 + i + 1).to_bytes(8, "big") for i in range(4)]
    return [
        (trace_id, ROOT if not salt else ids[3], REMOTE_PARENT, "GET /items/{id}", 2, t0, t0 + 9_000_000,
         {"http.request.method": "GET", "url.path": "/items/7", "http.route": "/items/{id}",
          "http.response.status_code": 500, "stagetrace.kind": "gateway"},
         None, (2, "view raised"), "vendor=abc", 0x301),
        (trace_id, ids[0], ROOT if not salt else ids[3], "SessionMiddleware", 1, t0 + 100, t0 + 200,
         (("stagetrace.kind", "middleware"), ("stagetrace.middleware.phase", "in"), ("stagetrace.short_circuit", False)),
         None, (0, ""), None, 0x100),
        (trace_id, ids[1], ROOT if not salt else ids[3], "SELECT shop_item", 3, t0 + 300, t0 + 900,
         {"db.system.name": "postgresql", "db.query.text": "SELECT * FROM shop_item WHERE id = %s",
          "db.operation.name": "SELECT", "db.response.returned_rows": 1, "ratio": 0.5,
          "tags": ["a", "b"], "unicode": "naïve ☃ \ud800"},
         [(t0 + 400, "row fetch", {"rows": 1})], (0, ""), None, 0x100),
        (trace_id, ids[2], ROOT if not salt else ids[3], "items/detail.html", 1, t0 + 1000, t0 + 5000,
         {"template.engine": "django"}, None, (0, ""), None, 0x100),
    ]  # fmt: skip


def by_name(spans: list[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    return {span.name: span for _, span in spans}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_encoded_spans_reach_the_collector_intact(
    collector: Collector, protocol: str, compression: str
) -> None:
    """Over OTLP/HTTP and OTLP/gRPC, gzip or not, the collector decodes exactly what was sent:
    names, kinds, trace ids, parents, attributes (types kept), events, status, trace state."""
    endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
    config = exporter_config(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
         "OTEL_EXPORTER_OTLP_COMPRESSION": compression, "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=a%20b"}
    )  # fmt: skip
    transport = make_transport(config)
    encoder = SpanEncoder(
        {"service.name": "shop", "deployment.environment.name": "test"}, "stagetrace", "0.1"
    )
    try:
        outcome = transport.export(encoder.encode(fragment()))
    finally:
        transport.close()
    assert outcome.ok and outcome.attempts == 1, outcome

    received = collector.wait_for_spans(4)
    assert len(received) == 4
    resource = received[0][0]
    assert resource["service.name"] == "shop"
    assert resource["deployment.environment.name"] == "test"
    spans = by_name(received)
    assert set(spans) == {
        "GET /items/{id}",
        "SessionMiddleware",
        "SELECT shop_item",
        "items/detail.html",
    }
    assert {span.trace_id for span in spans.values()} == {TRACE}
    root = spans["GET /items/{id}"]
    assert root.kind == 2 and root.parent_span_id == REMOTE_PARENT and root.span_id == ROOT
    assert root.status.code == 2 and root.status.message == "view raised"
    assert root.trace_state == "vendor=abc" and root.flags == 0x301
    assert {kv.key: any_value(kv.value) for kv in root.attributes}[
        "http.response.status_code"
    ] == 500
    for child in ("SessionMiddleware", "SELECT shop_item", "items/detail.html"):
        assert spans[child].parent_span_id == ROOT
    db = spans["SELECT shop_item"]
    assert db.kind == 3
    assert {kv.key: any_value(kv.value) for kv in db.attributes} == {
        "db.system.name": "postgresql",
        "db.query.text": "SELECT * FROM shop_item WHERE id = %s",
        "db.operation.name": "SELECT",
        "db.response.returned_rows": 1,
        "ratio": 0.5,
        "tags": ["a", "b"],
        "unicode": "naïve ☃ \ufffd",
    }
    assert [(e.name, any_value(e.attributes[0].value)) for e in db.events] == [("row fetch", 1)]
    mw = {kv.key: any_value(kv.value) for kv in spans["SessionMiddleware"].attributes}
    assert mw["stagetrace.short_circuit"] is False
    assert spans["SessionMiddleware"].kind == 1
    assert db.end_time_unix_nano - db.start_time_unix_nano == 600
    as_dicts = {d["name"]: d for d in collector.span_dicts()}
    assert as_dicts["items/detail.html"]["parent_span_id"] == ROOT.hex()
    assert as_dicts["GET /items/{id}"]["resource"]["service.name"] == "shop"
    assert as_dicts["SELECT shop_item"]["events"][0]["attributes"] == {"rows": 1}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_many_spans_of_several_traces_arrive(collector: Collector, protocol: str) -> None:
    """A batch of 500 spans from 125 traces arrives whole, each span in its trace."""
    endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
    transport = make_transport(exporter_config({}, {"endpoint": endpoint, "protocol": protocol}))
    encoder = SpanEncoder({"service.name": "shop"}, "stagetrace")
    spans = []
    for n in range(125):
        spans += fragment(trace_id=(n + 1).to_bytes(16, "big"), salt=n + 1)
    try:
        assert transport.export(encoder.encode(spans)).ok
    finally:
        transport.close()
    received = collector.wait_for_spans(500)
    assert len(received) == 500
    pairs = {(s.trace_id, s.span_id) for _, s in received}
    assert pairs == {(s[0], s[1]) for s in spans}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_collector_down_fails_within_the_deadline_and_export_resumes(
    collector: Collector, protocol: str
) -> None:
    """With the collector stopped an export returns a retryable failure before its deadline;
    once the collector is back, exports succeed again on the same transport."""
    endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
    transport = make_transport(exporter_config({}, {"endpoint": endpoint, "protocol": protocol}))
    encoder = SpanEncoder({"service.name": "shop"}, "stagetrace")
    counts = {result: 0 for result in ExportResult}
    try:
        first = transport.export(encoder.encode(fragment(salt=1)))
        counts[first.result] += 1
        collector.wait_for_spans(4)

        collector.stop()
        started = time.monotonic()
        down = transport.export(encoder.encode(fragment(salt=2)), deadline=time.monotonic() + 1.5)
        elapsed = time.monotonic() - started
        counts[down.result] += 1
        assert down.result is ExportResult.RETRYABLE, down
        assert elapsed < 1.5 + 1.0, elapsed  # the deadline, plus slack for a loaded machine
        assert down.detail

        collector.start()
        resumed = None
        give_up = time.monotonic() + 15
        while time.monotonic() < give_up:  # gRPC reconnects on its own backoff (capped at 2 s)
            resumed = transport.export(
                encoder.encode(fragment(salt=3)), deadline=time.monotonic() + 2
            )
            counts[resumed.result] += 1
            if resumed.ok:
                break
        assert resumed is not None and resumed.ok, resumed
    finally:
        transport.close()
    assert counts[ExportResult.OK] == 2 and counts[ExportResult.RETRYABLE] >= 1
    trace_spans = {s.span_id for _, s in collector.wait_for_spans(8)}
    assert {s[1] for s in fragment(salt=3)} <= trace_spans
    assert not {s[1] for s in fragment(salt=2)} & trace_spans


def test_http_wrong_path_is_a_permanent_failure(collector: Collector) -> None:
    """A 404 from the collector is not retried: one attempt, FAILED."""
    transport = make_transport(
        exporter_config({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.http_endpoint + "/nope"})
    )
    try:
        outcome = transport.export(SpanEncoder().encode(fragment()))
    finally:
        transport.close()
    assert outcome.result is ExportResult.FAILED and outcome.attempts == 1
    assert outcome.detail == "HTTP 404"


def test_grpc_garbage_is_a_permanent_failure(collector: Collector) -> None:
    """Bytes the collector cannot decode come back as a non-retryable gRPC status."""
    transport = make_transport(
        exporter_config({}, {"endpoint": collector.grpc_endpoint, "protocol": "grpc"})
    )
    try:
        outcome = transport.export(b"\xff\xff\xff", deadline=time.monotonic() + 3)
    finally:
        transport.close()
    assert outcome.result is ExportResult.FAILED and outcome.attempts == 1, outcome
    assert outcome.detail.startswith("gRPC ")
