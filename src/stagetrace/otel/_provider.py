"""Where the ``otel`` sink sends spans, decided at configuration.

In this order:

1. the ``tracer_provider`` option (an OpenTelemetry SDK ``TracerProvider``, ``configure()``
   only), or else the application's global SDK ``TracerProvider`` if it set one: spans are built
   as SDK ``ReadableSpan`` objects from the same mapping and handed to that provider's span
   processors, so the application's exporters, processors and resource apply. stagetrace never
   sets or replaces the global provider;
2. else, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or the
   ``otlp_endpoint`` option is set: stagetrace's own OTLP encoder and transport (HTTP/protobuf,
   or gRPC under ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``, which needs ``grpcio``);
3. else a `ConfigurationError` that says what to set.

Only this module (and only on the provider path) imports the OpenTelemetry SDK.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from .._options import DEFAULT_KNOWN_METHODS, ConfigurationError
from ._sink import OtelSink, SamplingRules, _attach_extras

__all__ = ["NOWHERE", "build_sink", "global_sdk_provider", "readable_spans", "sdk_disabled"]

logger = logging.getLogger("stagetrace")

#: The one-line error when the ``otel`` sink has nowhere to send spans.
NOWHERE = (
    "stagetrace sink 'otel' has nowhere to send spans: set OTEL_EXPORTER_OTLP_ENDPOINT "
    "(e.g. http://localhost:4318) or the 'otlp_endpoint' option, or pass "
    "configure(tracer_provider=...)"
)
INSTALL_HINT = 'pip install "stagetrace[otlp]"'


def sdk_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``OTEL_SDK_DISABLED`` is true (case-insensitive; any other value is false, as
    the specification says): OpenTelemetry's switch for "no telemetry", which the ``otel`` sink
    honours as the SDK does unless given a ``tracer_provider`` — it would otherwise export on
    its own to the endpoint set for the SDK. Logged, as the sink is then left out."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() != "true":
        return False
    logger.info(
        "stagetrace: OTEL_SDK_DISABLED=true: the otel sink exports nothing "
        "(and the OpenTelemetry context and outbound traceparent that name its spans are off)"
    )
    return True


def global_sdk_provider() -> Any:
    """The application's global tracer provider if it is an SDK ``TracerProvider`` (not the
    API's default proxy), else None. Imports nothing that is not installed already."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    # Read the global without triggering the API's lazy set-up from OTEL_PYTHON_TRACER_PROVIDER.
    provider = getattr(trace, "_TRACER_PROVIDER", None)
    return provider if isinstance(provider, TracerProvider) else None


def _rules(values: Mapping[str, Any]) -> SamplingRules:
    return SamplingRules(
        rate=values.get("otel_sample_rate", 1.0),
        slower_than_ms=values.get("otel_keep_slower_than_ms"),
        errors=values.get("otel_keep_errors", True),
        findings=values.get("otel_keep_findings", True),
    )


def build_sink(values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> OtelSink:
    """The ``otel`` sink for resolved option `values` (see the module docstring for the order).

    Raises `ConfigurationError` (one line) when there is nowhere to send spans, when an
    ``OTEL_EXPORTER_OTLP_*`` variable is bad, or when gRPC is asked for without ``grpcio``.
    """
    env = os.environ if environ is None else environ
    provider = values.get("tracer_provider")
    if provider is None:
        provider = global_sdk_provider()
    flush_timeout = values.get("otel_flush_timeout", 5.0)
    known = values.get("http_known_methods", DEFAULT_KNOWN_METHODS)
    if provider is not None:
        sink = OtelSink(
            processor=provider_processor(provider),
            rules=_rules(values),
            flush_timeout=flush_timeout,
            describe=f"tracer_provider={type(provider).__name__}",
            known_methods=known,
        )
    else:
        endpoint = values.get("otlp_endpoint")
        if not endpoint and not any(
            env.get(name, "").strip()
            for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ):
            raise ConfigurationError(NOWHERE)
        from ._about import version
        from ._encode import SpanEncoder
        from ._mapping import resource_attributes
        from ._transport import exporter_config, make_transport

        config = exporter_config(env, {"endpoint": endpoint} if endpoint else None)
        resource = partial(resource_attributes, values.get("service", "unknown_service"), env)
        span_limit, event_limit = value_length_limits(env)
        attributes, events, event_attributes = count_limits(env)
        encoder = SpanEncoder(
            resource(),
            "stagetrace",
            version(),
            span_value_limit=span_limit,
            event_value_limit=event_limit,
            attribute_count_limit=attributes,
            event_count_limit=events,
            event_attribute_count_limit=event_attributes,
        )
        sink = OtelSink(
            encoder=encoder,
            transport=make_transport(config),
            rules=_rules(values),
            max_queue_spans=values.get("otel_queue_size", 20_000),
            flush_timeout=flush_timeout,
            describe=f"{config.protocol} {config.display_url}",
            resource=resource,
            known_methods=known,
        )
    _attach_extras(sink, values)
    return sink


def count_limits(env: Mapping[str, str]) -> tuple[int, int, int]:
    """Attributes a span keeps, events a span keeps, attributes an event keeps, as the SDK's
    ``SpanLimits`` reads them: ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` /
    ``OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT``, else ``OTEL_ATTRIBUTE_COUNT_LIMIT``, else 128;
    ``OTEL_SPAN_EVENT_COUNT_LIMIT``, else 128."""
    general = _length_limit(env, "OTEL_ATTRIBUTE_COUNT_LIMIT", "attributes")
    fallback = 128 if general is None else general
    span = _length_limit(env, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "attributes")
    events = _length_limit(env, "OTEL_SPAN_EVENT_COUNT_LIMIT", "events")
    event = _length_limit(env, "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "attributes")
    return (
        fallback if span is None else span,
        128 if events is None else events,
        fallback if event is None else event,
    )


def _length_limit(env: Mapping[str, str], name: str, unit: str = "characters") -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigurationError(f"{name}: {raw!r} is not a whole number of {unit} (0 or more)")
    return limit


def value_length_limits(env: Mapping[str, str]) -> tuple[int | None, int | None]:
    """The characters kept of span and of event attribute string values, as the SDK's
    ``SpanLimits`` reads them: ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``, else
    ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` for spans; the latter for events; unset: no limit."""
    general = _length_limit(env, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    span = _length_limit(env, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    return (general if span is None else span), general


def provider_processor(provider: Any) -> Callable[[list[tuple[Any, ...]]], None]:
    """A function handing span tuples to `provider`'s span processors as ``ReadableSpan``s."""
    processor = getattr(provider, "_active_span_processor", None)
    if processor is None or not callable(getattr(processor, "on_end", None)):
        raise ConfigurationError(
            f"stagetrace option 'tracer_provider': {type(provider).__name__} is not an "
            f"OpenTelemetry SDK TracerProvider (install it with: {INSTALL_HINT})"
        )
    on_end = processor.on_end

    def process(spans: list[tuple[Any, ...]]) -> None:
        # The provider's resource, read for each batch: the SDK gives a provider a new one in
        # a forked child (its own service.instance.id).
        limits = getattr(provider, "_span_limits", None)
        for span in readable_spans(spans, getattr(provider, "resource", None), limits):
            on_end(span)

    return process


def readable_spans(
    spans: list[tuple[Any, ...]], resource: Any = None, limits: Any = None
) -> list[Any]:
    """SDK ``ReadableSpan`` objects for span tuples (see `_encode.SpanTuple`), with the
    provider's span `limits` (an SDK ``SpanLimits``: attribute and event counts, value
    lengths, dropped counts) applied as the SDK's own spans apply them."""
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
    from opentelemetry.sdk.util import BoundedList
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.span import TraceState

    from ._about import version

    if limits is None:
        limits = SpanLimits()
    scope = InstrumentationScope("stagetrace", version())
    kinds = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT, 4: SpanKind.PRODUCER}
    kinds[5] = SpanKind.CONSUMER
    codes = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}
    states: dict[str | None, TraceState] = {}
    out = []
    for trace, sid, parent, name, kind, start, end, attrs, events, status, state, flags in spans:
        trace_id = int.from_bytes(trace, "big")
        ts = states.get(state)
        if ts is None:
            ts = states[state] = TraceState.from_header([state]) if state else TraceState()
        tflags = TraceFlags(flags & 0xFF)
        context = SpanContext(trace_id, int.from_bytes(sid, "big"), False, tflags, ts)
        parent_ctx = None
        if parent:
            parent_ctx = SpanContext(
                trace_id, int.from_bytes(parent, "big"), bool(flags & 0x200), tflags, ts
            )
        code, message = status
        bounded: Any = BoundedList(limits.max_events)
        for etime, ename, eattrs in events or ():
            event_attrs = BoundedAttributes(
                limits.max_event_attributes,
                dict(eattrs or ()),
                immutable=True,
                max_value_len=limits.max_attribute_length,
            )
            bounded.append(Event(ename, event_attrs, timestamp=etime))
        out.append(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent_ctx,
                resource=resource,
                attributes=BoundedAttributes(
                    limits.max_span_attributes,
                    {k: v for k, v in attrs if v is not None},
                    immutable=True,
                    max_value_len=limits.max_span_attribute_length,
                ),
                events=bounded,
                kind=kinds.get(kind, SpanKind.INTERNAL),
                status=Status(codes.get(code, StatusCode.UNSET), message or None)
                if code
                else Status(StatusCode.UNSET),
                start_time=start,
                end_time=end,
                instrumentation_scope=scope,
            )
        )
    return out
