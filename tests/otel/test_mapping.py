"""Timeline → spans: names, kinds, parents, attributes, status, sampling rules; decoded with the
official generated messages (the encoder's oracle), so what is checked is what goes on the wire."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from stagetrace import Timeline
from stagetrace._model import Finding, stage_span_id
from stagetrace.otel._encode import SpanEncoder
from stagetrace.otel._mapping import export_key, resource_attributes, timeline_spans
from stagetrace.otel._sink import SamplingRules
from tests.helpers import doc_example, wsgi_environ

from .conftest import span_dict

REMOTE = "b7ad6b7169203331"


def timeline(**overrides: Any) -> Timeline:
    """The documented example timeline (schema @3: a remote parent), read with `from_dict` as
    from a JSON lines file, with `overrides` applied to the document."""
    data = doc_example()
    data["findings"] = []  # tests add their own
    stages = overrides.pop("stages", None)
    if stages is not None:
        data["stages"] = stages
    data.update(overrides)
    return Timeline.from_dict(data)


def decoded(tl: Timeline) -> list[dict[str, Any]]:
    """The spans of `tl` as the collector decodes them; the OTLP path (attributes encoded by the
    mapping) and the pair path (used for SDK spans) must decode to the same spans."""
    out = []
    for pre_encoded in (True, False):
        encoder = SpanEncoder({"service.name": "shop"}, "stagetrace")
        data = encoder.encode(timeline_spans(tl, encoder if pre_encoded else None))
        request = ExportTraceServiceRequest.FromString(data)
        (rs,) = request.resource_spans
        out.append([span_dict(s) for ss in rs.scope_spans for s in ss.spans])
    assert out[0] == out[1]
    return out[0]


def test_every_stage_is_a_span_nested_under_the_remote_parent() -> None:
    """The root is a SERVER span named after method and route, child of the incoming remote
    parent (is-remote flag set, tracestate kept); every stage is a span with its recorded times,
    the span id the request saw, and its stage parent; db.query is CLIENT, the rest INTERNAL."""
    tl = timeline(parent_span_id=REMOTE, trace_flags=1, tracestate="vendor=abc")
    spans = decoded(tl)
    assert len(spans) == len(tl.stages)
    root = spans[0]
    assert root["name"] == f"GET {tl.route}"
    assert root["kind"] == 2
    assert root["trace_id"] == tl.trace_id and root["span_id"] == tl.span_id
    assert root["parent_span_id"] == REMOTE
    assert root["flags"] in (0x301, None) and root["trace_state"] == "vendor=abc"
    assert root["attributes"]["http.route"] == tl.route
    assert root["attributes"]["url.path"] == tl.path
    assert root["attributes"]["stagetrace.kind"] == "gateway"
    assert root["start_time_unix_nano"] == tl.start_unix_nano
    assert root["end_time_unix_nano"] == tl.start_unix_nano + tl.duration_ns
    for st, span in zip(tl.stages, spans, strict=False):
        assert span["span_id"] == tl.stage_span_id(st.id)
        assert span["trace_id"] == tl.trace_id
        if st.parent is not None:
            assert span["parent_span_id"] == tl.stage_span_id(st.parent)
            assert span["flags"] in (0x101, None)
            assert span["name"] == st.name
            assert span["kind"] == (3 if st.kind == "db.query" else 1)
        assert span["start_time_unix_nano"] == tl.start_unix_nano + st.start_ns
        assert span["end_time_unix_nano"] - span["start_time_unix_nano"] == st.duration_ns
        if st.kind == "middleware":  # its own time: the in and out phases
            assert "stagetrace.middleware.in_ns" in span["attributes"]
        else:
            self_ns = span["attributes"].get("stagetrace.self_time_ns", st.duration_ns)
            assert self_ns == st.self_ns
        assert span["attributes"]["stagetrace.kind"] == st.kind


def test_a_timeline_read_from_a_file_exports_under_the_parent_it_recorded() -> None:
    """Schema @3 keeps the trace context: a timeline read back from JSON exports as the child
    of its remote parent (SERVER, is-remote flag, tracestate), of a local one (INTERNAL, no
    is-remote flag, as OpenTelemetry's own instrumentations nest under a span of the process),
    or as a new trace's root."""
    remote = decoded(timeline(tracestate="congo=t61rcWkgMzE"))[0]
    assert (remote["parent_span_id"], remote["kind"]) == (REMOTE, 2)
    assert remote["flags"] in (0x301, None) and remote["trace_state"] == "congo=t61rcWkgMzE"
    local = decoded(timeline(parent_is_remote=False, tracestate=None))[0]
    assert (local["parent_span_id"], local["kind"]) == (REMOTE, 1)
    assert local["flags"] in (0x101, None)
    own = decoded(timeline(parent_span_id=None, parent_is_remote=False, tracestate=None))[0]
    assert own["kind"] == 2 and not own["parent_span_id"]


def test_middleware_phases_and_semconv_names() -> None:
    """Middleware spans carry their in/out phases and short-circuit; older attribute names are
    exported under the current conventions' names; names outside the conventions go under
    ``stagetrace.``."""
    tl = timeline()
    spans = {s["name"]: s for s in decoded(tl)}
    mw = spans["django.contrib.sessions.middleware.SessionMiddleware"]["attributes"]
    assert mw["stagetrace.middleware.in_ns"] == 250000
    assert mw["stagetrace.middleware.out_ns"] == 1400000
    assert mw["stagetrace.middleware.short_circuit"] is False
    query = spans["SELECT shop_book"]["attributes"]
    assert query["db.system.name"] == "postgresql"
    assert query["db.query.text"] == "SELECT id, title FROM shop_book WHERE id = %s"
    assert export_key("http.response.sent_ns") == "stagetrace.http.response.sent_ns"
    assert export_key("view") == "stagetrace.view"
    assert export_key("user_agent.original") == "user_agent.original"


def test_errors_follow_the_conventions() -> None:
    """A 5xx makes the server span ERROR with error.type the status code; a 4xx does not; a stage
    that ended with an exception is ERROR with error.type and an ``exception`` event."""
    stages = doc_example()["stages"]
    stages[4]["error"] = {"type": "builtins.ValueError", "message": "bad id"}
    spans = decoded(timeline(status=500, stages=stages))
    root, view = spans[0], spans[4]
    assert root["status"]["code"] == 2 and root["attributes"]["error.type"] == "500"
    assert root["attributes"]["http.response.status_code"] == 500
    assert view["status"] == {"code": 2, "message": "bad id"}
    assert view["attributes"]["error.type"] == "builtins.ValueError"
    (event,) = view["events"]
    assert event["name"] == "exception"
    assert event["attributes"] == {
        "exception.type": "builtins.ValueError",
        "exception.message": "bad id",
    }
    ok = decoded(timeline(status=404))[0]
    assert ok["status"]["code"] == 0 and "error.type" not in ok["attributes"]


def test_findings_are_root_events_and_stage_attributes() -> None:
    """Each finding is a ``stagetrace.finding`` event on the root span, and the stages it names
    carry ``stagetrace.findings``."""
    tl = timeline().with_findings([Finding("n_plus_one", "21 queries", (6,))])
    spans = decoded(tl)
    events = [e for e in spans[0]["events"] if e["name"] == "stagetrace.finding"]
    assert len(events) == len(tl.findings)
    (event,) = events
    assert event["attributes"]["stagetrace.finding.kind"] == "n_plus_one"
    assert event["attributes"]["stagetrace.finding.stages"] == [6]
    assert spans[6]["attributes"]["stagetrace.findings"] == "n_plus_one"


def test_route_missing_names_the_span_by_method_only() -> None:
    """Without a matched route the span is named by the method alone, never by the path."""
    assert decoded(timeline(route=None))[0]["name"] == "GET"


@pytest.mark.parametrize("method", ["FOOBAR", "get", "X7Q2ZK91"])
def test_an_unknown_method_is_other_and_the_span_is_named_http(method: str) -> None:
    """A method the conventions do not know (any token a client sends; they are case-sensitive)
    is exported as ``http.request.method=_OTHER`` with ``http.request.method_original``, and the
    server span is named ``HTTP {route}`` (``HTTP`` without a route): clients cannot mint span
    names or attribute values. A known method stays as it is, with no original beside it."""
    stages = doc_example()["stages"]
    stages[0]["attrs"]["http.request.method"] = method
    for route, name in (("books/", "HTTP books/"), (None, "HTTP")):
        root = decoded(timeline(method=method, route=route, stages=stages))[0]
        assert root["name"] == name
        assert root["attributes"]["http.request.method"] == "_OTHER"
        assert root["attributes"]["http.request.method_original"] == method
    known = decoded(timeline())[0]["attributes"]
    assert known["http.request.method"] == "GET" and "http.request.method_original" not in known


def test_an_unknown_method_of_an_outbound_call_is_other_too() -> None:
    """An ``http.client`` span with a method the conventions do not know (WebDAV's PROPFIND)
    gets ``_OTHER`` and the original, and ``HTTP`` in its name for the method."""
    stages = doc_example()["stages"]
    call = {"http.request.method": "PROPFIND", "server.address": "dav.example"}
    stages.append(
        {"id": 9, "parent": 4, "kind": "http.client", "name": "PROPFIND dav.example",
         "start_ns": 3960000, "duration_ns": 200000, "self_ns": 200000, "attrs": call,
         "error": None}
    )  # fmt: skip
    span = decoded(timeline(stages=stages))[9]
    assert span["name"] == "HTTP" and span["kind"] == 3
    assert span["attributes"]["http.request.method"] == "_OTHER"
    assert span["attributes"]["http.request.method_original"] == "PROPFIND"


@pytest.mark.parametrize(
    ("stage_name", "attrs"),
    [
        ("GET api.example", {"server.address": "api.example", "url.path": "/v1/items/42"}),
        ("GET /v1/items/42", {"server.address": "", "url.path": "/v1/items/42"}),
    ],
)
def test_an_outbound_call_span_is_named_by_its_method_alone(
    stage_name: str, attrs: dict[str, Any]
) -> None:
    """An ``http.client`` span is named ``{method}``, as the HTTP conventions say when no
    low-cardinality target (``url.template``) is known — never with the host, and never with
    the URL path, which they forbid as a target (a host-less URL's stage is named by its
    path). The host is in ``server.address``, the URL in ``url.full``."""
    stages = doc_example()["stages"]
    call = {"http.request.method": "GET", "url.scheme": "http", **attrs}
    stages.append(
        {"id": 9, "parent": 4, "kind": "http.client", "name": stage_name,
         "start_ns": 3960000, "duration_ns": 200000, "self_ns": 200000, "attrs": call,
         "error": None}
    )  # fmt: skip
    span = decoded(timeline(stages=stages))[9]
    assert span["name"] == "GET" and span["kind"] == 3


@pytest.mark.parametrize(
    ("attrs", "full", "port"),
    [
        ({"url.scheme": "http", "server.address": "127.0.0.1", "server.port": 8080,
          "url.path": "/v1/items", "url.query": "page=REDACTED&debug"},
         "http://127.0.0.1:8080/v1/items?page=REDACTED&debug", 8080),
        ({"url.scheme": "https", "server.address": "api.example", "url.path": "/"},
         "https://api.example/", 443),
        ({"url.scheme": "http", "server.address": "::1", "url.path": "/x"},
         "http://[::1]/x", 80),
    ],
)  # fmt: skip
def test_an_outbound_call_has_the_attributes_the_conventions_require(
    attrs: dict[str, Any], full: str, port: int
) -> None:
    """An ``http.client`` span carries what the HTTP semantic conventions make Required on a
    client span: ``url.full`` (built from the recorded parts, so the query as redacted and no
    credentials) and ``server.port`` (the scheme's default when the URL named none)."""
    stages = doc_example()["stages"]
    call = {"http.request.method": "GET", **attrs, "http.response.status_code": 200}
    stages.append(
        {"id": 9, "parent": 4, "kind": "http.client", "name": "GET host",
         "start_ns": 3960000, "duration_ns": 200000, "self_ns": 200000, "attrs": call,
         "error": None}
    )  # fmt: skip
    span = decoded(timeline(stages=stages))[9]
    assert span["kind"] == 3
    assert span["attributes"]["url.full"] == full
    assert span["attributes"]["server.port"] == port


def test_a_websocket_close_code_is_not_exported_as_an_http_status() -> None:
    """A websocket's close code (the timeline's ``status``) is ``stagetrace.websocket.close_code``
    on its server span, never ``http.response.status_code`` (OpenTelemetry has no stable
    websocket attribute), and 1011 is no 5xx: even a timeline recorded before the gateway
    stopped writing the close code under the HTTP name exports none."""
    stages = doc_example()["stages"][:1]
    stages[0]["attrs"] = {"websocket.close_code": 1011, "http.response.status_code": 1011}
    tl = timeline(protocol="websocket", method=None, route="/ws", status=1011, stages=stages)
    (root,) = decoded(tl)
    assert "http.response.status_code" not in root["attributes"]
    assert root["attributes"]["stagetrace.websocket.close_code"] == 1011
    assert root["status"]["code"] == 0 and "error.type" not in root["attributes"]


async def test_the_asgi_gateway_exports_a_websocket_without_an_http_status() -> None:
    """End to end, through the ASGI gateway and a TracerProvider: the close code is
    ``stagetrace.websocket.close_code`` only."""
    import stagetrace
    from stagetrace.asgi import StagetraceMiddleware

    from .conftest import exporting

    options = exporting()
    stagetrace.configure(**options)
    (exporter,) = [
        p.span_exporter for p in options["tracer_provider"]._active_span_processor._span_processors
    ]

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1011})

    messages = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"",
             "headers": [], "scheme": "ws", "server": ("127.0.0.1", 8000), "subprotocols": []}  # fmt: skip
    await StagetraceMiddleware(ws_app)(scope, receive, send)
    stagetrace.flush()
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert "http.response.status_code" not in root.attributes
    assert root.attributes["stagetrace.websocket.close_code"] == 1011


def test_span_ids_match_what_the_request_saw() -> None:
    """The exported span id of stage i is `stage_span_id(root, i)`, the id `current_span()` gave
    other instrumentation while the stage ran."""
    tl = timeline()
    spans = decoded(tl)
    assert spans[3]["span_id"] == f"{stage_span_id(int(tl.span_id, 16), 3):016x}"


@pytest.mark.parametrize("root", [1, 0x9E3779B97F4A7C15, (1 << 64) - 1, 0x0123456789ABCDEF])
def test_stage_span_ids_are_distinct_valid_and_stable(root: int) -> None:
    """Within a timeline every stage's span id differs from the others' and from the root's, is
    a valid (non-zero, 64-bit) id, and is the same however the mask table grew meanwhile."""
    ids = [stage_span_id(root, i) for i in range(5000)]
    assert ids[0] == root
    assert len(set(ids)) == len(ids)
    assert all(0 < x < 1 << 64 for x in ids)
    assert [stage_span_id(root, i) for i in (4999, 1, 77)] == [ids[4999], ids[1], ids[77]]


def _varied() -> list[Timeline]:
    """Timelines covering what the mapping distinguishes: the documented example with a remote
    or local parent, tracestate, unsampled flags, findings, an error and a 5xx; and recorded
    ones with middleware (short-circuit or not), queries, an unfinished stage, empty names."""
    import stagetrace

    stages = doc_example()["stages"]
    stages[4]["error"] = {"type": "builtins.ValueError", "message": "bad id"}
    out = [
        timeline(parent_span_id=REMOTE, trace_flags=1, tracestate="vendor=abc"),
        timeline(parent_span_id=None, parent_is_remote=False, tracestate=None, trace_flags=0),
        timeline(status=500, stages=stages),
        timeline().with_findings([Finding("n_plus_one", "21 queries", (6,))]),
    ]
    with stagetrace.capture() as got, stagetrace.timeline("job", tenant="a"):
        with stagetrace.stage("mw", kind="middleware"):
            for i in range(3):
                with stagetrace.stage("", kind="db.query", **{"db.query.text": f"SELECT {i}"}):
                    pass
        with stagetrace.stage("é\ud800", kind="template", rows=3, ok=True):
            pass
    out.extend(got)
    return out


def test_spans_the_mapping_encodes_itself_are_byte_identical_to_the_encoders() -> None:
    """On the OTLP path most child spans are written by the mapping as bytes the encoder takes
    as they are: the request is byte for byte the one the encoder makes from the plain span
    tuples of the provider path, for every kind of timeline and on a warm cache too."""
    for tl in _varied():
        fast = SpanEncoder({"service.name": "shop"}, "stagetrace")
        plain = SpanEncoder({"service.name": "shop"}, "stagetrace")
        spans = timeline_spans(tl, fast)
        assert any(type(s) is bytes for s in spans)
        expected = plain.encode(timeline_spans(tl, None))
        assert fast.encode(spans) == expected
        assert fast.encode(timeline_spans(tl, fast)) == expected  # blocks cached now


def test_values_equal_to_numbers_but_not_plain_do_not_share_a_cached_block() -> None:
    """A timeline read from a file keeps its attribute values as given: an array ``(1, 2)``
    equals ``(True, 2)``, ``(0.0,)`` equals ``(-0.0,)`` and ``Decimal(1)`` equals ``1``. Through
    one encoder, each still goes out as the provider path (no cache) encodes it."""
    from decimal import Decimal

    def with_value(value: Any) -> Timeline:
        stages = doc_example()["stages"]
        stages[2]["attrs"] = {"flag": value}
        return timeline(stages=stages)

    encoder = SpanEncoder({"service.name": "shop"}, "stagetrace")
    for value in ((1, 2), (True, 2), (0.0,), (-0.0,), Decimal(1), 1, (1, 2)):
        tl = with_value(value)
        fast = ExportTraceServiceRequest.FromString(encoder.encode(timeline_spans(tl, encoder)))
        plain = SpanEncoder({"service.name": "shop"}, "stagetrace")
        expected = ExportTraceServiceRequest.FromString(plain.encode(timeline_spans(tl, None)))
        assert fast == expected, value


def test_spans_starting_at_zero_are_byte_identical_too() -> None:
    """A timeline whose wall-clock start is 0 (made up, or read from a file): the spans the
    mapping encodes itself leave the zero times out, as the encoder does."""
    stages = doc_example()["stages"]
    stages[3]["start_ns"] = stages[3]["duration_ns"] = 0  # a zero-length stage at t = 0
    tl = timeline(start_unix_nano=0, stages=stages)
    fast = SpanEncoder({"service.name": "shop"}, "stagetrace")
    plain = SpanEncoder({"service.name": "shop"}, "stagetrace")
    assert fast.encode(timeline_spans(tl, fast)) == plain.encode(timeline_spans(tl, None))


def test_timings_outside_what_a_recorder_writes_are_exported_as_the_encoder_does() -> None:
    """A timeline read from a file may hold timings no recorder writes: negative, beyond
    int64, a stage ending at wall-clock 0. The spans the mapping encodes itself say the same
    as the encoder does with the plain pairs (a negative int64, a string beyond the range, a
    zero time left out), cold and warm."""
    stages = doc_example()["stages"]
    stages[2]["self_ns"] = -5
    stages[3]["self_ns"] = 2**63
    stages[1]["phases"] = {"in": -7, "out": 2**64}
    stages[4]["start_ns"], stages[4]["duration_ns"] = 0, -5
    tl = timeline(start_unix_nano=5, stages=stages)
    fast = SpanEncoder({"service.name": "shop"}, "stagetrace")
    plain = SpanEncoder({"service.name": "shop"}, "stagetrace")
    expected = plain.encode(timeline_spans(tl, None))
    assert fast.encode(timeline_spans(tl, fast)) == expected
    assert fast.encode(timeline_spans(tl, fast)) == expected
    spans = decoded(tl)
    assert spans[1]["attributes"]["stagetrace.middleware.in_ns"] == -7
    assert spans[3]["attributes"]["stagetrace.self_time_ns"] == str(2**63)


def test_stage_span_ids_survive_the_mask_table_being_replaced_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread may replace the mask table between two reads of it (a thread that
    grew it from an older, shorter copy): the id asked for is still right. The switch is
    forced right after `stage_span_id` checks the table's length."""
    import builtins

    from stagetrace import _model

    _model.span_id_masks(600)
    shorter = _model._MIX[:301]

    def len_then_switch(x: Any) -> int:
        n = builtins.len(x)
        _model._MIX = shorter
        return n

    monkeypatch.setattr(_model, "len", len_then_switch, raising=False)
    assert stage_span_id(0x1234, 400) == 0x1234 ^ _model._splitmix64(400)
    monkeypatch.undo()
    assert len(_model.span_id_masks(5)) >= 5


def test_resource_has_service_name_and_sdk_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    """service.name comes from stagetrace's service option; OTEL_RESOURCE_ATTRIBUTES and
    telemetry.sdk.* come from the SDK's resource detection."""
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,service.name=ignored"}
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", env["OTEL_RESOURCE_ATTRIBUTES"])
    attrs = resource_attributes("shop", env)
    assert attrs["service.name"] == "shop"
    assert attrs["deployment.environment"] == "staging"
    assert attrs["telemetry.sdk.language"] == "python"


def test_a_percent_encoded_service_name_in_resource_attributes_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``OTEL_RESOURCE_ATTRIBUTES`` values are percent-encoded (the specification's format):
    ``service.name=my%20shop`` names the service ``my shop`` — in stagetrace's ``service``
    setting and on the exported resource, as the SDK's resource detection decodes it — not
    ``my%20shop``, which would be a service of its own in every backend."""
    import stagetrace

    raw = "service.name=my%20shop%2Ceu,team=a%2Cb"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", raw)
    service = stagetrace.configure().service
    assert service == "my shop,eu"
    attrs = resource_attributes(service, {"OTEL_RESOURCE_ATTRIBUTES": raw})
    assert attrs["service.name"] == "my shop,eu" and attrs["team"] == "a,b"


def test_a_service_name_with_a_bad_percent_escape_is_decoded_as_the_sdk_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``service.name=caf%E9`` (Latin-1 percent-encoded, not UTF-8) in the environment
    variable every OpenTelemetry component of the process reads: the SDK's resource detection
    decodes it with U+FFFD, and so does stagetrace — it used to refuse it and stop the
    application at startup, over a value the SDK and every other instrumentation accept."""
    from opentelemetry.sdk.resources import Resource

    import stagetrace

    raw = "service.name=first,service.name=caf%E9,team=r%FFd"  # the last one counts
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", raw)
    sdk = Resource.create().attributes
    service = stagetrace.configure().service
    assert service == sdk["service.name"] == "caf\ufffd"
    attrs = resource_attributes(service, {"OTEL_RESOURCE_ATTRIBUTES": raw})
    assert attrs["service.name"] == "caf\ufffd" and attrs["team"] == sdk["team"] == "r\ufffdd"


@pytest.mark.parametrize(
    ("rules", "overrides", "kept"),
    [
        (SamplingRules(rate=1.0), {}, True),
        (SamplingRules(rate=1.0), {"trace_flags": 0}, False),  # the parent said not sampled
        (SamplingRules(rate=0.0), {}, False),
        (SamplingRules(rate=0.0), {"status": 503}, True),
        (SamplingRules(rate=0.0, errors=False), {"status": 503}, False),
        (SamplingRules(rate=0.0, slower_than_ms=10), {}, True),  # 12.4 ms
        (SamplingRules(rate=0.0, slower_than_ms=20), {}, False),
        (SamplingRules(rate=0.0, slower_than_ms=10), {"trace_flags": 0}, False),
    ],
)
def test_sampling_rules(rules: SamplingRules, overrides: dict[str, Any], kept: bool) -> None:
    """Head: a parent's not-sampled flag wins. Tail: slow, 5xx and findings are kept whatever the
    ratio; the rest at the ratio."""
    assert rules.keep(timeline(**overrides)) is kept


def test_findings_rule_and_ratio_by_trace_id() -> None:
    """Requests with findings are kept at ratio 0; the ratio decision is a function of the trace
    id (about the ratio of many random ids are kept)."""
    tl = timeline().with_findings([Finding("n_plus_one", "x", (6,))])
    assert SamplingRules(rate=0.0).keep(tl)
    assert not SamplingRules(rate=0.0, findings=False).keep(tl)
    import random

    rules = SamplingRules(rate=0.25)
    kept = sum(
        rules.keep(timeline(trace_id=f"{random.getrandbits(128):032x}")) for _ in range(2000)
    )
    assert 400 < kept < 600


def test_stages_once_equals_the_timelines_stages() -> None:
    """The export reads stages through `_recorder.stages_once` (built without per-kind totals,
    not kept): they are exactly the timeline's stages, whether none, some or all were built."""
    import stagetrace
    from stagetrace import _recorder

    def record() -> Timeline:
        with stagetrace.capture() as got, stagetrace.timeline("job", tenant="a"):
            for i in range(3):
                with stagetrace.stage(f"q{i}", kind="db.query", **{"db.query.text": "SELECT 1"}):
                    pass
            with stagetrace.stage("mw", kind="middleware"):
                pass
        (tl,) = got
        return tl

    def unusual() -> Timeline:
        # What `_make` treats specially: an error, a stage still open at the end, attributes cut
        # to the length limit, a middleware that answered without the next layer.
        with stagetrace.capture() as got, stagetrace.timeline("job"):
            _recorder.enter("template", "left open", {"x": 1})
            with stagetrace.stage("long", kind="template", text="y" * 5000):
                pass
            with contextlib.suppress(ValueError), stagetrace.stage("bad", kind="template"):
                raise ValueError("no")
            with stagetrace.stage("short", kind="middleware"):
                pass
        (tl,) = got
        return tl

    odd = unusual()
    rows = _recorder.stages_once(odd)
    assert list(rows) == list(odd.stages)
    assert rows[1][7] == {"x": 1, "unfinished": True}
    assert len(rows[2][7]["text"]) < 5000
    assert rows[3][8] is not None and rows[3][8].type.endswith("ValueError")
    assert rows[4][9] == {"in": rows[4][5], "out": 0} and rows[4][10] is True

    def served() -> Timeline:
        # An HTTP request: the root's attributes come from the deferred request parser and
        # the gateway's extra ones, merged when the root is first read.

        from stagetrace.wsgi import StagetraceMiddleware

        def app(environ: Any, start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        environ = wsgi_environ("/p", QUERY_STRING="q=1", HTTP_USER_AGENT="ua")
        with stagetrace.capture() as got:
            body = StagetraceMiddleware(app)(environ, lambda *a: None)
            b"".join(body)
            body.close()
        (tl,) = got
        return tl

    http = served()
    rows = _recorder.stages_once(http)
    assert list(rows) == list(http.stages)
    assert rows[0][7]["user_agent.original"] == "ua"
    assert rows[0][7]["url.query"] == "q=REDACTED" and rows[0][7]["http.request.method"] == "GET"
    assert [r[1:4] for r in rows] == [(s.parent, s.kind, s.name) for s in http.stages]
    assert rows[0][7] == http.stages[0].attrs
    fresh = record()
    once = _recorder.stages_once(fresh)
    assert fresh._stages is None  # not kept on the timeline
    assert list(once) == list(fresh.stages)
    partly = record()
    partly.of_kind("db.query")  # some built, as an analyzer does
    assert list(_recorder.stages_once(partly)) == list(partly.stages)
    assert list(_recorder.stages_once(partly)) == list(partly.stages)  # all built now


def _recorded(*stage_attrs: dict[str, Any], kind: str = "template") -> list[Timeline]:
    """One recorded timeline per attribute dict: a job with one stage of `kind` carrying it."""
    import stagetrace

    out: list[Timeline] = []
    for attrs in stage_attrs:
        with (
            stagetrace.capture() as got,
            stagetrace.timeline("job"),
            stagetrace.stage("s", kind=kind, **attrs),
        ):
            pass
        out.extend(got)
    return out


def test_equal_values_of_different_types_keep_their_own_type_through_the_block_cache() -> None:
    """The OTLP path caches each stage's encoded attributes by kind and attributes, and
    ``1 == True == 1.0`` and ``0.0 == -0.0`` in Python: stages whose attributes differ only
    in such a value, exported one after another through one encoder, still go out as int, bool
    and double, with the double's sign."""
    encoder = SpanEncoder({"service.name": "shop"}, "stagetrace")
    got = []
    values = [1, True, 1.0, 1, 0, False, 0.0, -0.0, 0.0, True]
    for tl in _recorded(*({"flag": v, "db.system.name": "sqlite"} for v in values)):
        request = ExportTraceServiceRequest.FromString(encoder.encode(timeline_spans(tl, encoder)))
        span = request.resource_spans[0].scope_spans[0].spans[1]
        (value,) = [a.value for a in span.attributes if a.key == "stagetrace.flag"]
        which = value.WhichOneof("value")
        got.append((which, getattr(value, which)))
    assert [w for w, _ in got] == [
        "int_value",
        "bool_value",
        "double_value",
        "int_value",
        "int_value",
        "bool_value",
        "double_value",
        "double_value",
        "double_value",
        "bool_value",
    ]
    assert [math.copysign(1, v) for w, v in got if w == "double_value"] == [1, 1, -1, 1]
