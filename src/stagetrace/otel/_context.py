"""The OpenTelemetry context during a recorded request: the stage running now is the current span.

`ContextHook` is a context hook (`_state.State.context_hooks`): every gateway calls its `enter`
right after a recorded request's timeline began and its `exit` where the gateway hands the
caller its context back. `enter` attaches ONE OpenTelemetry context for the whole request,
holding

* a span object (`StageSpan`, non-recording) whose span context is computed when someone asks
  for it, from `_recorder.current_span()`: this trace, the span id of the stage running *now*
  in the asking task or thread. So OpenTelemetry spans made by other instrumentations (redis,
  celery, httpx, a user's ``tracer.start_as_current_span``) nest under the stage that made
  them, and ``opentelemetry.propagate.inject()`` in a view writes this trace's traceparent —
  without a context attached per stage (entering a stage stays one list append);
* the baggage of the incoming W3C ``baggage`` header (malformed entries ignored);
* under OpenTelemetry's suppress-instrumentation key, an object that is true only while the
  current stage is a ``db.query``: OpenTelemetry's DB-API (sqlite3, psycopg, ...) wrappers
  check that key before each query, so a query stagetrace records is not recorded twice.

When an OpenTelemetry span is already current as the request begins (OpenTelemetry's ASGI or
WSGI middleware wrapped *outside* stagetrace's gateway), the timeline joins that span's trace,
as its child, instead of starting one of its own.

Only this package imports OpenTelemetry; a missing ``opentelemetry-api`` is reported at
configuration.
"""

from __future__ import annotations

from typing import Any

from .. import _recorder
from .._options import ConfigurationError

INSTALL = 'pip install "stagetrace[otlp]"'

#: Built on first use (importing OpenTelemetry only when the hook is created).
_api: dict[str, Any] = {}


def _load(option: str) -> dict[str, Any]:
    if _api:
        return _api
    try:
        from opentelemetry import context, trace
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.context import Context
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
    except ImportError:
        raise ConfigurationError(
            f"stagetrace {option} needs the OpenTelemetry API, which is not installed: {INSTALL}"
        ) from None
    # The key OpenTelemetry's instrumentations check (`is_instrumentation_enabled()`) before
    # they make a span; an old API without it just gets no suppression.
    suppress_key: Any = getattr(context, "_SUPPRESS_INSTRUMENTATION_KEY", None)
    # The context key of the current span (what `set_span_in_context` sets).
    from opentelemetry.trace import propagation

    span_key: Any = getattr(propagation, "_SPAN_KEY", None)
    no_state = TraceState()
    flags_of = {0: TraceFlags(0), 1: TraceFlags(1)}

    class StageSpan(NonRecordingSpan):
        """The current span while a recorded request runs: its span context is this trace
        with the span id of the stage running now, computed when asked for (nothing is built
        for a request where nobody asks)."""

        def __init__(self, trace_id: int, span_id: int, flags: int, state: str | None):
            # NonRecordingSpan.__init__ only stores a SpanContext: built lazily here instead.
            self._ids = (trace_id, span_id, flags, state)
            self._state: Any = None
            self._last: tuple[int, Any] | None = None

        def _make(self, span_id: int, flags: int) -> Any:
            state = self._state
            if state is None:
                raw = self._ids[3]
                state = self._state = TraceState.from_header([raw]) if raw else no_state
            found = SpanContext(
                self._ids[0],
                span_id,
                is_remote=False,
                trace_flags=flags_of.get(flags) or TraceFlags(flags),
                trace_state=state,
            )
            self._last = (span_id, found)
            return found

        @property
        def _context(self) -> Any:  # type: ignore[override]  # NonRecordingSpan's field
            return self._make(self._ids[1], self._ids[2])

        def get_span_context(self) -> Any:
            now: tuple[Any, ...] | None
            try:
                now = _recorder.current_span()
            except Exception as exc:
                _recorder.internal_error("otel.context", exc)
                now = None
            ids = self._ids
            if now is None or now[0] != ids[0]:
                # Outside the request (a task that outlived it): the request's own span.
                now = ids
            last = self._last
            if last is not None and last[0] == now[1]:
                return last[1]
            return self._make(now[1], now[2])

        def __repr__(self) -> str:
            return f"StageSpan(trace_id=0x{self._ids[0]:032x})"

    _api.update(
        context=context,
        Context=Context,
        trace=trace,
        baggage=W3CBaggagePropagator(),
        StageSpan=StageSpan,
        suppress_key=suppress_key,
        span_key=span_key,
    )
    return _api


class _InQuery:
    """Truthy only while this context's current stage is a ``db.query``: stored under
    OpenTelemetry's suppress-instrumentation key, it turns OpenTelemetry's DB-API span off for
    exactly the queries stagetrace records, at no cost per query."""

    __slots__ = ()

    def __bool__(self) -> bool:
        try:
            return _recorder.current_kind() == "db.query"
        except Exception as exc:
            _recorder.internal_error("otel.suppress", exc)
            return False

    def __repr__(self) -> str:
        return "<stagetrace: suppressed inside db.query stages>"


IN_QUERY = _InQuery()


def _header(request: Any, name: str) -> str | None:
    headers = getattr(request, "headers", None)
    if not headers:
        return None
    value = headers.get(name)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    return value if isinstance(value, str) and value else None


class ContextHook:
    """Makes the running stage of each recorded request OpenTelemetry's current span (see the
    module docstring). ``suppress_queries`` (default True) turns OpenTelemetry's DB-API spans
    off inside stagetrace's ``db.query`` stages."""

    def __init__(self, *, suppress_queries: bool = True, option: str = "option 'otel_context'"):
        api = _load(option)
        self._context = api["context"]
        self._Context = api["Context"]
        self._trace = api["trace"]
        self._baggage = api["baggage"]
        self._StageSpan = api["StageSpan"]
        self._span_key = api["span_key"]
        key = api["suppress_key"]
        self._suppress_key = key if suppress_queries else None

    def enter(self, tl: Any, request: Any) -> Any:
        """Attach the request's context; returns the token `exit` needs."""
        context = self._context
        ctx = context.get_current()
        key = self._span_key
        outer = ctx.get(key) if key is not None else self._trace.get_current_span(ctx)
        if outer is not None and not isinstance(outer, self._StageSpan):
            found = outer.get_span_context()
            if found.is_valid:
                # An OpenTelemetry span is current already (its middleware runs outside
                # ours): this timeline is its child, in its trace.
                tl.trace_id = found.trace_id
                tl.parent_span_id = found.span_id
                tl.trace_flags = int(found.trace_flags)
                tl.tracestate = found.trace_state.to_header() or None
        value = _header(request, "baggage")
        if value is not None:
            ctx = self._baggage.extract({"baggage": value}, context=ctx)
        span = self._StageSpan(tl.trace_id, tl.span_id, tl.trace_flags, tl.tracestate)
        if key is None:
            ctx = self._trace.set_span_in_context(span, ctx)
            if self._suppress_key is not None:
                ctx = context.set_value(self._suppress_key, IN_QUERY, ctx)
        elif self._suppress_key is not None:
            # One copy of the context instead of two `set_value` copies.
            ctx = self._Context({**ctx, key: span, self._suppress_key: IN_QUERY})
        else:
            ctx = self._Context({**ctx, key: span})
        return context.attach(ctx)

    def exit(self, token: Any) -> None:
        """Detach what `enter` attached."""
        self._context.detach(token)

    def __repr__(self) -> str:
        return "<stagetrace OpenTelemetry context hook>"
