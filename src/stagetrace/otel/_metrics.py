"""OpenTelemetry metrics from every timeline the pipeline sees (exported as spans or not).

Two histograms, recorded on the pipeline's worker, never on the request's thread:

* ``http.server.request.duration`` (seconds) — the HTTP semantic conventions' server metric,
  by ``http.route``, ``http.request.method``, ``url.scheme``, ``network.protocol.version``,
  ``http.response.status_code`` (and ``error.type``: the exception that ended the request, else
  a 5xx status), one measurement per HTTP request;
* ``stagetrace.stage.duration`` (seconds) — by ``stagetrace.stage.kind`` and ``http.route``:
  for each stage kind a request used, the time it spent in stages of that kind (their self
  time: nested stages count for their own kind), one measurement per kind per request. So
  "time in SQL per request, by route" keeps its trend even when traces are sampled.

`StageMetrics` is what a sink calls; `MetricsSink` is the sink selectable as
``sinks=["otel-metrics"]`` for metrics without span export. The MeterProvider is the
``meter_provider`` option, else the application's global SDK MeterProvider set before
configuration; without either, naming the sink fails at configuration (`require_provider`).

stagetrace does not export metrics itself. Setting up the SDK's OTLP metric exporter from
``OTEL_EXPORTER_OTLP_ENDPOINT`` was considered and refused: that exporter does not keep the
export's guarantees (its ``force_flush`` ignores the deadline it is given and reports success
when nothing was delivered, so ``stagetrace.flush()`` and exit would wait for it and be told
wrong; it reads ``OTEL_EXPORTER_OTLP_TIMEOUT`` in seconds where stagetrace reads milliseconds;
its retry warnings quote the endpoint's query string, an ``?api_key=`` included). An
application sets a MeterProvider up in a few lines and knows what it gets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._model import Timeline
from .._options import DEFAULT_KNOWN_METHODS, ConfigurationError

#: The HTTP semantic conventions' advised buckets for ``http.server.request.duration`` (s).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: Finer buckets for stage time (a query, a template: often well under 5 ms).
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, *DURATION_BUCKETS)

#: The HTTP methods the semantic conventions know by default (case-sensitive); any other is
#: ``_OTHER`` (metrics and spans), so a client cannot mint attribute values or span names. The
#: ``http_known_methods`` option (``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``) replaces it.
KNOWN_METHODS = frozenset(DEFAULT_KNOWN_METHODS)


#: Attributes of the request's root stage that ``http.server.request.duration`` carries.
_FROM_ROOT = ("url.scheme", "network.protocol.version")


def meter_provider_or_none(configured: Any = None) -> Any:
    """The MeterProvider to record with: `configured` (the ``meter_provider`` option) if given,
    else the global one if the application set an SDK MeterProvider, else None (the API's
    default provider records nothing, so there is nothing to do)."""
    if configured is not None:
        return configured
    try:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError:
        return None
    provider = metrics.get_meter_provider()
    return provider if isinstance(provider, MeterProvider) else None


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stagetrace")
    except PackageNotFoundError:
        return None


def _histogram(meter: Any, name: str, description: str, buckets: tuple[float, ...]) -> Any:
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api before 1.23: no advisory buckets
        return meter.create_histogram(name, unit="s", description=description)


class StageMetrics:
    """Records the two histograms (see the module docstring) for timelines, with the meters
    of `meter_provider`; methods not in `known_methods` are ``_OTHER``."""

    def __init__(self, meter_provider: Any, known_methods: Iterable[str] = KNOWN_METHODS) -> None:
        self.known_methods = frozenset(known_methods)
        meter = meter_provider.get_meter("stagetrace", _version())
        self.request_duration = _histogram(
            meter,
            "http.server.request.duration",
            "Duration of HTTP server requests.",
            DURATION_BUCKETS,
        )
        self.stage_duration = _histogram(
            meter,
            "stagetrace.stage.duration",
            "Time a request spent in stages of one kind (self time).",
            STAGE_BUCKETS,
        )

    def record(self, tl: Timeline) -> None:
        """Record one timeline."""
        route = tl.route
        if tl.protocol == "http":
            attrs: dict[str, Any] = {}
            method = tl.method
            if method is not None:
                attrs["http.request.method"] = method if method in self.known_methods else "_OTHER"
            root = tl.root
            recorded = root.attrs if root is not None else {}
            for key in _FROM_ROOT:  # url.scheme is Required, the version Recommended
                value = recorded.get(key)
                if isinstance(value, str) and value:
                    attrs[key] = value
            if route:
                attrs["http.route"] = route
            status = tl.status
            error = root.error if root is not None else None
            if status is not None:
                attrs["http.response.status_code"] = status
            if error is not None:  # as on the server span: what ended the request
                attrs["error.type"] = error.type
            elif status is not None and status >= 500:
                attrs["error.type"] = str(status)
            self.request_duration.record(tl.duration_ns / 1e9, attrs)
        for kind, summary in tl.by_kind.items():
            if kind == "gateway" or not summary.count:
                continue
            stage_attrs = {"stagetrace.stage.kind": kind}
            if route:
                stage_attrs["http.route"] = route
            self.stage_duration.record(summary.self_ns / 1e9, stage_attrs)

    def record_many(self, timelines: Iterable[Timeline]) -> None:
        """Record a batch of timelines."""
        for tl in timelines:
            self.record(tl)


#: The one-line error when ``otel-metrics`` is named without a MeterProvider.
NO_PROVIDER = (
    "stagetrace sink 'otel-metrics' has no MeterProvider to record with: pass "
    "configure(meter_provider=...) or set a global SDK MeterProvider "
    "(opentelemetry.metrics.set_meter_provider) before configure(); stagetrace exports "
    "metrics only through one, OTEL_EXPORTER_OTLP_ENDPOINT alone does not"
)


def require_provider(configured: Any = None) -> Any:
    """The MeterProvider the ``otel-metrics`` sink records with (see `meter_provider_or_none`);
    `ConfigurationError` in one line when there is none: a sink that was asked for and records
    nothing, saying nothing, helps no one (the ``otel`` sink fails the same way without
    anywhere to send spans)."""
    provider = meter_provider_or_none(configured)
    if provider is None:
        try:
            import opentelemetry.sdk.metrics  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                f'{NO_PROVIDER} (the SDK is not installed: pip install "stagetrace[otlp]")'
            ) from None
        raise ConfigurationError(NO_PROVIDER)
    return provider


class MetricsSink:
    """A sink recording `StageMetrics` for every timeline (``sinks=["otel-metrics"]``), with
    the ``meter_provider`` option or the global SDK MeterProvider (configuration makes sure
    there is one: `require_provider`; built without one, batches are skipped until the
    application sets a global one)."""

    def __init__(
        self, meter_provider: Any = None, known_methods: Iterable[str] = KNOWN_METHODS
    ) -> None:
        self._configured = meter_provider
        self._known = frozenset(known_methods)
        self._metrics: StageMetrics | None = None

    def _ready(self) -> StageMetrics | None:
        if self._metrics is None:
            provider = meter_provider_or_none(self._configured)
            if provider is not None:
                self._metrics = StageMetrics(provider, self._known)
        return self._metrics

    def emit_many(self, timelines: list[Timeline]) -> None:
        """Record a batch (called by the pipeline's worker)."""
        metrics = self._ready()
        if metrics is not None:
            metrics.record_many(timelines)

    def emit(self, timeline: Timeline) -> None:
        """Record one timeline."""
        self.emit_many([timeline])

    def __repr__(self) -> str:
        return "MetricsSink()"
