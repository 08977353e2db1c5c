"""The ``otel`` sink: finished timelines → spans → an OTLP collector or the app's TracerProvider.

`OtelSink.emit_many` runs on the pipeline's worker thread: it applies the sampling rules,
maps each kept timeline to span tuples (`_mapping`), and either

* encodes them (`_encode.SpanEncoder`, in requests of at most `MAX_BATCH_SPANS` spans and about
  `MAX_BATCH_BYTES` bytes) and hands
  the bytes to an export thread through a bounded queue (`_Exporter`): a slow or unreachable
  collector never slows the worker, let alone a request; when the queue is full the newest
  batch is dropped and counted (``otel_spans_dropped`` in `stagetrace.stats()`), and export
  resumes by itself when the collector answers again; or
* hands SDK ``ReadableSpan`` objects built from the same tuples to a ``TracerProvider``'s span
  processor (`_provider`), so the application's own exporters and processors see them.

``flush()`` and ``close()`` wait for the export thread at most the flush deadline
(``otel_flush_timeout``); the export thread is a daemon, so process exit never waits longer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._model import Timeline
from .._state import STATE
from ._encode import SpanEncoder
from ._mapping import timeline_spans
from ._metrics import KNOWN_METHODS
from ._transport import ExportResult, Transport

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_SPANS", "OtelSink", "SamplingRules"]

logger = logging.getLogger("stagetrace")

#: Spans per export request, at most: the per-request transport cost (a keep-alive POST on
#: loopback measured 300 to 450 µs of CPU, almost all of it fixed) is spread over many spans.
MAX_BATCH_SPANS = 4096
#: Encoded bytes per export request, about (spans are estimated as they are mapped): a
#: quarter of the smallest common collector limit (OTLP/gRPC's default 4 MiB message; the
#: OpenTelemetry Collector's HTTP receiver takes 20 MiB), so long SQL texts do not make a
#: request that a collector refuses. A single span larger than this still goes, alone.
MAX_BATCH_BYTES = 1 << 20


def _span_size(span: Any) -> int:
    """A span's encoded size as it counts towards `MAX_BATCH_BYTES`: exact for one the mapping
    encoded ahead of time (``bytes``); for a span tuple (a root, a failed stage, an outbound
    call) an upper bound from its attribute block, name, status and events."""
    if type(span) is bytes:
        return len(span)
    attrs = span[7]
    size = 128 + 4 * len(span[3]) + 4 * len(span[9][1] or "")
    size += len(attrs) if type(attrs) is bytes else 64 * len(attrs) + 2048
    for event in span[8] or ():
        size += 32 + 4 * len(event[1])
        for key, value in event[2]:
            size += 16 + len(key) + 4 * len(value if type(value) is str else str(value))
    return size


_RATIO_BITS = 1 << 64

#: Forks this process descends from (a forked child counts one more than its parent): a sink
#: whose resource was computed before the last fork computes it again (`OtelSink.emit_many`).
#: A fork hook of its own, not the pipeline's: that one only runs for a pipeline whose thread
#: has started, and gunicorn ``--preload`` forks workers from a master that recorded nothing.
_forks = [0]


def _count_fork() -> None:
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


class SamplingRules:
    """Which finished timelines are exported: head sampling (the incoming parent's sampled
    flag) and tail rules decided when the request has ended.

    A timeline whose trace flags say "not sampled" (``traceparent`` ``...-00``) is never
    exported: the caller decided for the whole trace. Of the others, those slower than
    ``slower_than_ms``, those with errors (``errors``: a 5xx status, or an exception that ended
    the request) and those with findings (``findings``) are always kept; the rest are kept at
    ``rate``, decided by the trace id (as OpenTelemetry's ``TraceIdRatioBased`` sampler does,
    so every service sampling at one rate keeps the same traces).
    """

    __slots__ = ("errors", "findings", "rate", "slower_than_ns", "_bound")

    def __init__(
        self,
        rate: float = 1.0,
        slower_than_ms: float | None = None,
        errors: bool = True,
        findings: bool = True,
    ) -> None:
        self.rate = rate
        self.slower_than_ns = None if slower_than_ms is None else int(slower_than_ms * 1e6)
        self.errors = errors
        self.findings = findings
        self._bound = round(rate * _RATIO_BITS)  # as TraceIdRatioBased: the low 64 bits

    def keep(self, tl: Timeline) -> bool:
        """Whether `tl` is exported."""
        if not tl.trace_flags & 1:
            return False
        if self.rate >= 1.0:
            return True
        slow = self.slower_than_ns
        if slow is not None and tl.duration_ns >= slow:
            return True
        if self.errors:
            status = tl.status
            if status is not None and status >= 500 and tl.protocol == "http":
                return True
            if tl.stage(0).error is not None:
                return True
        if self.findings and tl.findings:
            return True
        return int(tl.trace_id[-16:], 16) < self._bound

    def __repr__(self) -> str:
        return (
            f"SamplingRules(rate={self.rate}, slower_than_ns={self.slower_than_ns}, "
            f"errors={self.errors}, findings={self.findings})"
        )


class _Exporter:
    """A daemon thread sending encoded requests from a bounded queue through a `Transport`.

    ``submit`` never blocks: when ``max_spans`` spans are already waiting, the batch is dropped
    and counted. A failed export (collector unreachable past the transport's deadline, or an
    error answer) is counted and its spans dropped; the next batch tries again, so export
    resumes as soon as the collector is back.
    """

    def __init__(self, transport: Transport, max_spans: int) -> None:
        self.transport = transport
        self.max_spans = max_spans
        #: Warned about the collector since it last accepted a request whole (one warning an
        #: outage, or a run of partial successes).
        self._warned = False
        try:
            transport.on_retry = self._retrying
        except AttributeError:  # a transport of the application's own, without the hook
            pass
        self._q: deque[tuple[bytes, int]] = deque()
        self._queued_spans = 0
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, data: bytes, spans: int) -> bool:
        """Queue one encoded request of `spans` spans; False (counted) when the queue is full."""
        counters = STATE.counters
        with self._cond:
            if self._closed or self._queued_spans + spans > self.max_spans:
                counters["otel_spans_dropped"] += spans
                return False
            self._q.append((data, spans))
            self._queued_spans += spans
            if self._thread is None:
                self._start()
            self._cond.notify()
        return True

    def _start(self) -> None:
        t = threading.Thread(target=self._run, name="stagetrace-otel-export", daemon=True)
        self._thread = t
        t.start()

    def _retrying(self, detail: str) -> None:
        """The transport retries a request whose first attempt failed: say so now, once an
        outage (the transport's deadline, 10 s by default, can be long to wait for a word)."""
        if not self._warned:
            self._warned = True
            logger.warning(
                "stagetrace: OTLP export to %s is failing (%s); retrying until the export "
                "deadline, then spans are dropped and counted until it succeeds again",
                self.transport.config.display_url,
                detail,
            )

    def _run(self) -> None:
        counters = STATE.counters
        while True:
            with self._cond:
                while not self._q and not self._closed:
                    self._cond.wait()
                if not self._q:
                    return
                data, spans = self._q.popleft()
                self._busy = True
            try:
                outcome = self.transport.export(data)
            except Exception as exc:  # a bug in the transport: count it, keep the thread alive
                counters["otel_export_errors"] += 1
                counters["otel_spans_failed"] += spans
                if not self._warned:
                    self._warned = True
                    logger.warning("stagetrace: OTLP export failed: %r", exc, exc_info=exc)
            else:
                if outcome.result is ExportResult.OK:
                    rejected = min(outcome.rejected, spans)
                    counters["otel_spans_exported"] += spans - rejected
                    if not rejected:
                        self._warned = False
                    else:  # lost as surely as in a failed export: said once, as failures are
                        counters["otel_spans_rejected"] += rejected
                        if not self._warned:
                            self._warned = True
                            logger.warning(
                                "stagetrace: the collector at %s rejected %d spans of %d (%s); "
                                "rejected spans are not retried, they are counted "
                                "(otel_spans_rejected)",
                                self.transport.config.display_url,
                                rejected,
                                spans,
                                outcome.detail[:200] or "no reason given",
                            )
                else:
                    counters["otel_export_failures"] += 1
                    counters["otel_spans_failed"] += spans
                    if not self._warned:
                        self._warned = True
                        logger.warning(
                            "stagetrace: OTLP export to %s failed (%s); spans are dropped and "
                            "counted until it succeeds again",
                            self.transport.config.display_url,
                            outcome.detail or outcome.result.value,
                        )
            with self._cond:
                self._queued_spans -= spans
                self._busy = False
                self._cond.notify_all()

    def depth(self) -> int:
        """Spans waiting for export (the one being sent included)."""
        return self._queued_spans

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was sent (or failed), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._q or self._busy:
                if self._thread is None or not self._thread.is_alive():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float) -> bool:
        """Flush for at most `timeout` seconds, then stop the thread and the transport; what is
        still queued is dropped and counted."""
        drained = self.flush(timeout)
        with self._cond:
            self._closed = True
            left = sum(n for _, n in self._q)
            self._q.clear()
            self._queued_spans -= left
            if left:
                STATE.counters["otel_spans_dropped"] += left
            self._cond.notify_all()
        try:
            self.transport.close()  # interrupts a backoff sleep in progress
        except Exception:
            pass
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(min(timeout, 1.0))
        return drained

    def after_fork(self) -> None:
        """In a forked child: a fresh queue and thread (the parent's are not ours)."""
        self._q = deque()
        self._queued_spans = 0
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = None
        try:
            self.transport.close()
        except Exception:
            pass


#: What `stats()` counts of the export, each 0 until it happens.
COUNTERS = (
    "otel_spans_exported",
    "otel_spans_dropped",
    "otel_spans_failed",
    "otel_spans_rejected",
    "otel_export_failures",
    "otel_export_errors",
    "otel_timelines_sampled_out",
)


class OtelSink:
    """Exports every stage of every kept timeline as OpenTelemetry spans.

    Build it with ``configure(sinks=["otel"], ...)`` (see docs/export.md); the constructor is for
    tests and embedding. Give it either an ``encoder`` and a ``transport`` (OTLP), or a
    ``processor`` (a function taking a list of span tuples: the provider path).
    """

    #: `otel/_context.ContextHook` (see `_attach_extras`): an object with
    #: ``enter(live_timeline, request)`` / ``exit(token)`` that makes the OpenTelemetry context
    #: current during the request. `_runtime._apply` installs it into every gateway.
    context_hook: Any = None
    #: This sink exports every stage as a span: trace context naming stage spans (the
    #: OpenTelemetry current span, outbound ``traceparent``) is then on by default.
    exports_stage_spans = True

    def __init__(
        self,
        *,
        encoder: SpanEncoder | None = None,
        transport: Transport | None = None,
        processor: Callable[[list[tuple[Any, ...]]], None] | None = None,
        rules: SamplingRules | None = None,
        max_queue_spans: int = 20_000,
        flush_timeout: float = 5.0,
        describe: str = "",
        resource: Callable[[], Mapping[str, Any]] | None = None,
        known_methods: Iterable[str] = KNOWN_METHODS,
    ) -> None:
        if processor is None and (encoder is None or transport is None):
            raise ValueError("OtelSink needs an encoder and a transport, or a processor")
        self.encoder = encoder
        self.processor = processor
        self.rules = rules or SamplingRules()
        self.flush_timeout = flush_timeout
        self._exporter = _Exporter(transport, max_queue_spans) if transport is not None else None
        self._describe = describe
        #: Computes the encoder's resource again in a forked child: each worker of a preforked
        #: server has its own ``service.instance.id``, as with the SDK's providers.
        self._resource = resource
        self._forks = _forks[0]
        #: HTTP methods exported as they are (the ``http_known_methods`` option); others _OTHER.
        self.known_methods = frozenset(known_methods)
        #: Part B's metrics recorder (``record_many(timelines)``), when present and configured.
        self.metrics: Any = None
        counters = STATE.counters
        for name in COUNTERS:  # in stats() from the start, not from their first change
            counters.setdefault(name, 0)

    # -- the pipeline's side -----------------------------------------------------------------

    def emit_many(self, timelines: Sequence[Timeline]) -> None:
        """Export a batch of finished timelines (on the pipeline's worker thread)."""
        if self._forks != _forks[0]:  # once a batch, not a span
            self._renew_resource()
        metrics = self.metrics
        if metrics is not None:
            try:
                metrics.record_many(timelines)
            except Exception as exc:
                STATE.counters["sink_errors"] += 1
                logger.debug("stagetrace: metrics failed: %r", exc)
        keep = self.rules.keep
        counters = STATE.counters
        # the processor (provider path) takes tuples with attribute pairs; the OTLP path the
        # encoder's form, partly encoded already
        encoder = self.encoder if self.processor is None else None
        cap = self._batch_cap()
        known = self.known_methods
        spans: list[Any] = []
        sizes: list[int] = []  # estimated encoded size of each span in `spans`
        size = 0
        unkept = 0
        for tl in timelines:
            if not keep(tl):
                unkept += 1
                continue
            got = timeline_spans(tl, encoder, known)
            est = [len(s) if type(s) is bytes else _span_size(s) for s in got]
            spans += got
            sizes += est
            size += sum(est)
            if len(spans) >= cap or size >= MAX_BATCH_BYTES:
                spans, sizes = self._send_capped(spans, sizes, cap, keep_tail=True)
                size = sum(sizes)
        if unkept:
            counters["otel_timelines_sampled_out"] += unkept
        if spans:
            self._send_capped(spans, sizes, cap)

    def _renew_resource(self) -> None:
        """In a forked child: the resource as `configure()` would compute it in this process,
        with a ``service.instance.id`` of its own (one the deployment set in
        ``OTEL_RESOURCE_ATTRIBUTES`` is kept). Once per fork, on the worker thread, before
        this process's first export."""
        self._forks = _forks[0]
        if self._resource is None or self.encoder is None:
            return
        try:
            self.encoder.set_resource(self._resource())
        except Exception as exc:  # export with the parent's resource rather than not at all
            logger.warning("stagetrace: OTLP resource not renewed after fork: %r", exc)

    def emit(self, timeline: Timeline) -> None:
        """Export one timeline (`emit_many` of one)."""
        self.emit_many([timeline])

    def _batch_cap(self) -> int:
        """Spans per export request: `MAX_BATCH_SPANS`, and at most a quarter of the export
        queue, so a request always fits in it (``otel_queue_size`` 1,000 gives requests of 250)."""
        if self._exporter is None:
            return MAX_BATCH_SPANS
        return max(1, min(MAX_BATCH_SPANS, self._exporter.max_spans // 4))

    def _send_capped(
        self, spans: list[Any], sizes: list[int], cap: int, keep_tail: bool = False
    ) -> tuple[list[Any], list[int]]:
        """Send `spans` in requests of at most `cap` spans and, by the estimates in `sizes`,
        about `MAX_BATCH_BYTES` bytes (a larger single span alone). With `keep_tail`, a last
        request that is not full yet is not sent but returned (spans, sizes), to be filled by
        the next timelines."""
        start = total = 0
        for i, n in enumerate(sizes):
            if i > start and (i - start >= cap or total + n > MAX_BATCH_BYTES):
                self._send(spans[start:i])
                start, total = i, 0
            total += n
        if keep_tail and len(spans) - start < cap and total < MAX_BATCH_BYTES:
            return spans[start:], sizes[start:]
        self._send(spans[start:] if start else spans)
        return [], []

    def _send(self, spans: list[Any]) -> None:
        if self.processor is not None:
            self.processor(spans)
            STATE.counters["otel_spans_exported"] += len(spans)
            return
        assert self.encoder is not None
        assert self._exporter is not None
        self._exporter.submit(self.encoder.encode(spans), len(spans))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queued spans were sent, at most the flush deadline, or `timeout`
        seconds when that is shorter (what is left of the caller's); True when everything went
        out."""
        if self._exporter is None:
            return True
        limit = self.flush_timeout if timeout is None else min(timeout, self.flush_timeout)
        return self._exporter.flush(limit)

    def close(self) -> None:
        """Flush (at most the flush deadline), then stop the export thread."""
        if self._exporter is not None:
            self._exporter.close(self.flush_timeout)

    def after_fork(self) -> None:
        """In a forked child (gunicorn ``--preload``): a fresh export thread and connection."""
        if self._exporter is not None:
            self._exporter.after_fork()

    def queue_depth(self) -> int:
        """Spans waiting for export."""
        return self._exporter.depth() if self._exporter is not None else 0

    def __repr__(self) -> str:
        return f"OtelSink({self._describe})"


def _attach_extras(sink: OtelSink, values: Mapping[str, Any]) -> None:
    """Where the context and metrics pieces connect to the sink: ``otel/_context.py``
    (``ContextHook``: the OpenTelemetry context current during the request, outbound
    ``traceparent``) and ``otel/_metrics.py`` (``StageMetrics(meter_provider)`` with
    ``record_many(timelines)``, and ``meter_provider_or_none()``). Each is imported if its module
    exists and used if it can be, else left out. Nothing here may fail configuration."""
    from .._options import ConfigurationError

    context = _optional("_context")
    if context is not None and getattr(context, "ContextHook", None) is not None:
        try:  # on with the otel sink (docs/opentelemetry.md); needs the OpenTelemetry API
            sink.context_hook = context.ContextHook(option="sink 'otel' (its context hook)")
        except ConfigurationError as exc:  # the API is not installed: export works without it
            logger.debug("stagetrace: otel context hook left out: %s", exc)
        except Exception as exc:  # part B's code must not stop the export from working
            logger.warning("stagetrace: otel context hook left out: %r", exc)
    metrics = _optional("_metrics")
    if metrics is not None:
        try:
            provider = metrics.meter_provider_or_none(values.get("meter_provider"))
            if provider is not None:
                sink.metrics = metrics.StageMetrics(provider, sink.known_methods)
        except Exception as exc:
            logger.warning("stagetrace: otel metrics left out: %r", exc)


def _optional(name: str) -> Any:
    """The sibling module `name`, or None when it does not exist (yet)."""
    import importlib

    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.{name}":
            logger.warning("stagetrace: otel %s left out: %s", name, exc)
        return None
