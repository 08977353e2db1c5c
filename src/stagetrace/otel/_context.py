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
* the baggage of the incoming W3C ``baggage`` header (malformed entries dropped silently: read
  by stagetrace, not by OpenTelemetry's extractor, which logs each one a client sends);
* when the application's OpenTelemetry propagator is not W3C's (``OTEL_PROPAGATORS=b3``,
  ``jaeger``, ``tracecontext`` without ``baggage``, ``none``, or ``set_global_textmap``): what
  *that* propagator extracts from the request — the remote parent (B3 headers, say) and the
  baggage it carries — instead of stagetrace's own W3C parsing; outgoing httpx/requests calls
  then carry that propagator's headers (`Propagation`);
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

from contextvars import ContextVar
from typing import Any

from .. import _recorder
from .._http.headers import baggage as _parse_baggage
from .._http.headers import tracestate as _tracestate
from .._options import ConfigurationError

INSTALL = 'pip install "stagetrace[otlp]"'

#: Built on first use (importing OpenTelemetry only when the hook is created).
_api: dict[str, Any] = {}


def _load(option: str) -> dict[str, Any]:
    if _api:
        return _api
    try:
        from opentelemetry import context, trace
        from opentelemetry.baggage import set_baggage
        from opentelemetry.context import Context
        from opentelemetry.trace import (
            INVALID_SPAN_CONTEXT,
            NonRecordingSpan,
            SpanContext,
            TraceFlags,
            TraceState,
        )
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
                dropped = self._discarded()
                if dropped is not None:
                    return dropped
                # Outside the request (a task that outlived it): the request's own span.
                now = ids
            last = self._last
            if last is not None and last[0] == now[1]:
                return last[1]
            return self._make(now[1], now[2])

        def _discarded(self) -> Any:
            """In a request left out by `stagetrace.discard()` (none of its spans will be
            exported): what was current before it, as for an excluded path — the remote (or
            local) parent it continued, or no span; None otherwise."""
            try:
                tl = _recorder.discarded_here()
                if tl is None or tl.trace_id != self._ids[0]:
                    return None
                if not tl.parent_span_id:
                    return INVALID_SPAN_CONTEXT
                raw = tl.tracestate
                return SpanContext(
                    tl.trace_id,
                    tl.parent_span_id,
                    is_remote=not tl.parent_local,
                    trace_flags=flags_of.get(tl.trace_flags) or TraceFlags(tl.trace_flags),
                    trace_state=TraceState.from_header([raw]) if raw else no_state,
                )
            except Exception as exc:
                _recorder.internal_error("otel.context", exc)
                return None

        def __repr__(self) -> str:
            return f"StageSpan(trace_id=0x{self._ids[0]:032x})"

    from opentelemetry import propagate

    _api.update(
        SpanContext=SpanContext,
        TraceFlags=TraceFlags,
        TraceState=TraceState,
        NonRecordingSpan=NonRecordingSpan,
        propagate=propagate,
        context=context,
        Context=Context,
        trace=trace,
        set_baggage=set_baggage,
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

#: A baggage member longer than this OpenTelemetry's W3C propagator would not pass on (with a
#: warning per request): not taken in either.
_MAX_MEMBER = 4096

#: The headers of OpenTelemetry's default propagator, W3C trace context and baggage.
_W3C = ("baggage", "traceparent", "tracestate")


def _fields(textmap: Any) -> tuple[str, ...]:
    try:
        return tuple(sorted({str(f).lower() for f in textmap.fields}))
    except Exception as exc:
        _recorder.internal_error("otel.propagator", exc)
        return _W3C


def _adopt(tl: Any, found: Any) -> None:
    """Make the timeline a child of the span context `found`, in its trace (a local parent
    unless `found` came from another process)."""
    tl.trace_id = found.trace_id
    tl.parent_span_id = found.span_id
    tl.parent_local = not found.is_remote
    tl.trace_flags = int(found.trace_flags) & 0x01  # the sampled bit: see headers.traceparent
    # normalized as an incoming header's: what the timeline writes reads back (schema @3)
    tl.tracestate = _tracestate(found.trace_state.to_header())


class _Getter:
    """OpenTelemetry's ``Getter`` over a dict of lower-case header names: lookups ignore case
    (a propagator may ask for ``X-Amzn-Trace-Id``)."""

    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return [value] if value is not None else None

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _Getter()

#: Headers a propagator writes that carry no trace identity: set by the application, they do
#: not stop the trace headers from being added (unlike a ``traceparent`` of its own).
_INDEPENDENT = frozenset(("baggage",))


class Propagation:
    """The application's OpenTelemetry propagator, when it is not W3C's: `inject` writes the
    headers naming a stage (an ``http.client`` stage) into an outgoing call's headers. The
    gateways offer it every header of a request (`_http.gateway.Request.carrier`)."""

    __slots__ = ("textmap",)

    def __init__(self, textmap: Any) -> None:
        self.textmap = textmap

    def inject(
        self,
        headers: Any,
        span: tuple[int, int, int],
        tracestate: str | None,
    ) -> dict[str, str] | None:
        """Add the headers naming `span` (trace id, span id, flags; with the trace's
        `tracestate`) to `headers` — not the span OpenTelemetry holds current, which may be
        the application's own or none — keeping every header the application set: if it set
        trace headers of its own, none of ours are added. Returns what was added."""
        api = _api
        trace_id, span_id, flags = span
        sc = api["SpanContext"](
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=api["TraceFlags"](flags & 0xFF),
            trace_state=api["TraceState"].from_header([tracestate]) if tracestate else None,
        )
        ctx = api["trace"].set_span_in_context(
            api["NonRecordingSpan"](sc), api["context"].get_current()
        )
        carrier: dict[str, str] = {}
        self.textmap.inject(carrier, context=ctx)
        present = {str(k).lower() for k in headers}
        if any(k.lower() in present for k in carrier if k.lower() not in _INDEPENDENT):
            return None  # the application propagates this call's context itself
        added = {k: v for k, v in carrier.items() if k.lower() not in present}
        for name, value in added.items():
            headers[name] = value
        return added or None

    def __repr__(self) -> str:
        return f"<stagetrace propagation via {type(self.textmap).__name__}>"


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
        self._propagate = api["propagate"]
        #: The application's propagator last seen, and our `Propagation` for it (None: W3C).
        self._textmap: Any = None
        self._propagation: Propagation | None = None
        self._context = api["context"]
        self._Context = api["Context"]
        self._trace = api["trace"]
        self._set_baggage = api["set_baggage"]
        self._StageSpan = api["StageSpan"]
        self._span_key = api["span_key"]
        key = api["suppress_key"]
        self._suppress_key = key if suppress_queries else None
        #: The context variable behind OpenTelemetry's default runtime context, when that is
        #: the one in use: `again` and `leave` run once per chunk of a streamed WSGI body, and
        #: through it they are three C calls instead of three API functions calling two
        #: layers each (attach/get_current/detach are exactly set/get/reset of it). Any
        #: other runtime context (OTEL_PYTHON_CONTEXT) goes through the API.
        runtime = getattr(self._context, "_RUNTIME_CONTEXT", None)
        var = getattr(runtime, "_current_context", None)
        #: (`_http.gateway.resumed` reads it: the attached context is this variable's value.)
        self.context_var: ContextVar[Any] | None = (
            var
            if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(var, ContextVar)
            else None
        )

    def propagation(self) -> Propagation | None:
        """How trace context crosses process boundaries now: None while the application's
        global propagator is OpenTelemetry's default (W3C trace context and baggage, which
        stagetrace reads and writes itself), else a `Propagation` using that propagator
        (`_state.State.propagation`, which the runtime sets from this)."""
        textmap = self._propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._propagation = None if _fields(textmap) == _W3C else Propagation(textmap)
            self._textmap = textmap
        return self._propagation

    def enter(self, tl: Any, request: Any) -> Any:
        """Attach the request's context; returns the token `exit` (and `again`) needs."""
        context = self._context
        ctx = context.get_current()
        if self._propagate.get_global_textmap() is not self._textmap:
            # The application set another propagator since: from the next request on, the
            # gateways keep every header for it (this one is read the W3C way).
            from .._state import STATE

            STATE.propagation = self.propagation()
        key = self._span_key
        outer = ctx.get(key) if key is not None else self._trace.get_current_span(ctx)
        adopted = False
        if outer is not None and not isinstance(outer, self._StageSpan):
            found = outer.get_span_context()
            if found.is_valid:
                # An OpenTelemetry span is current already (its middleware runs outside
                # ours): this timeline is its child, in its trace.
                _adopt(tl, found)
                adopted = True
        propagation = self._propagation
        carrier = getattr(request, "carrier", None)  # every header (None: a job, whose
        if propagation is None or carrier is None:  # parent came with it, or W3C)
            value = _header(request, "baggage")
            if value is not None:
                # stagetrace's own reading, which drops bad members silently: OpenTelemetry's
                # extractor logs a warning per bad member quoting it (a client could write
                # dozens of lines, tokens included, per request), and a header over its size
                # limit whole.
                members = _parse_baggage(value)
                if members:
                    set_baggage = self._set_baggage
                    for name, member in members.items():
                        if len(name) + len(member) < _MAX_MEMBER:  # what inject() would drop
                            ctx = set_baggage(name, member, ctx)
        else:
            ctx = self._extract(tl, carrier, propagation, ctx, adopted)
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
        return (context.attach(ctx), ctx)

    def _extract(
        self, tl: Any, carrier: dict[str, str], propagation: Propagation, ctx: Any, adopted: bool
    ) -> Any:
        """Read the request with the application's propagator (every header offered, names
        matched without regard to case): its remote parent replaces the one stagetrace's W3C
        parsing found (none at all when it finds none), and what else it extracts (baggage)
        joins the request's context. Malformed headers are the propagator's to ignore; if it
        fails, the request goes on with the W3C reading."""
        try:
            extracted = propagation.textmap.extract(
                carrier, context=self._Context(), getter=_GETTER
            )
        except Exception as exc:
            _recorder.internal_error("otel.extract", exc)
            return ctx
        if not adopted:
            found = self._trace.get_current_span(extracted).get_span_context()
            if found.is_valid:
                _adopt(tl, found)
            elif tl.parent_span_id is not None:
                # A W3C traceparent the application's propagator does not read: not a parent.
                tl.trace_id = _recorder.new_trace_id()
                tl.parent_span_id = None
                tl.trace_flags = 1
                tl.tracestate = None
        key = self._span_key
        more = {k: v for k, v in extracted.items() if k != key}
        return self._Context({**ctx, **more}) if more else ctx

    def adopt(self, tl: Any) -> bool:
        """Make the timeline a child of OpenTelemetry's current span, without attaching
        anything (a job beside an instrumentation that owns the context, such as
        OpenTelemetry's Celery one): only a valid span that is not one of stagetrace's, in
        the timeline's own trace — both then came from the same message — so nothing that
        already left with the timeline's trace id (an outgoing ``traceparent``) is orphaned.
        Whether it adopted."""
        current = self._trace.get_current_span()
        if isinstance(current, self._StageSpan):
            return False
        found = current.get_span_context()
        if not found.is_valid or found.trace_id != tl.trace_id:
            return False
        _adopt(tl, found)
        return True

    def exit(self, token: Any) -> None:
        """Detach what `enter` (or `again`) attached."""
        self._context.detach(token[0])

    def again(self, token: Any) -> Any:
        """Attach what `enter` attached (its `token`) once more, in whatever context runs now:
        a WSGI body produced after the gateway gave the request's context back. Returns what
        `exit` and `leave` take."""
        var = self.context_var
        if var is not None:
            return (var.set(token[1]), token[1])
        return (self._context.attach(token[1]), token[1])

    def leave(self, token: Any) -> Any:
        """Detach what `again` attached; returns what `again` attaches next time: the context
        as the work left it (a span it made current and holds open stays current)."""
        var = self.context_var
        if var is not None:
            now = var.get()
            var.reset(token[0])
            return (None, now)
        context = self._context
        now = context.get_current()
        context.detach(token[0])
        return (None, now)

    def __repr__(self) -> str:
        return "<stagetrace OpenTelemetry context hook>"
