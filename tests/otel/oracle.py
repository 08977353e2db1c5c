"""The official OTLP encoder as a test oracle: the same spans through the SDK's ``ReadableSpan``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState


def _int(value: bytes | int) -> int:
    return value if isinstance(value, int) else int.from_bytes(value, "big")


def official_bytes(
    spans: Sequence[Sequence[Any]],
    resource: Mapping[str, Any],
    scope_name: str,
    scope_version: str | None,
    scope_attributes: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode ``spans`` (SpanTuple layout, kinds 1-5) with ``encode_spans`` + ``SerializeToString``."""
    res = Resource(dict(resource))
    scope = InstrumentationScope(scope_name, scope_version, None, scope_attributes)
    sdk_spans = []
    for (
        trace_id,
        span_id,
        parent_id,
        name,
        kind,
        start,
        end,
        attrs,
        events,
        status,
        trace_state,
        flags,
    ) in spans:
        tid = _int(trace_id)
        state = (
            TraceState([tuple(p.split("=", 1)) for p in trace_state.split(",")])
            if trace_state
            else None
        )
        context = SpanContext(tid, _int(span_id), False, TraceFlags(1), state)
        parent = None
        if parent_id:
            parent = SpanContext(tid, _int(parent_id), bool(flags & 0x200))
        sdk_events = [
            Event(event_name, dict(event_attrs) if event_attrs else None, time)
            for time, event_name, event_attrs in events or ()
        ]
        sdk_status = Status(StatusCode(status[0]), status[1] or None) if status else Status()
        sdk_spans.append(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=res,
                attributes=dict(attrs) if attrs else None,
                events=sdk_events,
                kind=SpanKind(kind - 1),
                instrumentation_scope=scope,
                status=sdk_status,
                start_time=start,
                end_time=end,
            )
        )
    return encode_spans(sdk_spans).SerializeToString()
