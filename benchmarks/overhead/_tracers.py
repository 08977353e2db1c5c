"""The configurations under test: how each tracer is set up, flushed and counted.

`setup(framework, config)` runs first thing in a fresh interpreter, before the web framework is
imported (ddtrace and Sentry patch at import or init time; OpenTelemetry's Django
instrumentation edits ``settings.MIDDLEWARE``). `Tracer.after_setup(app)` runs once the app
exists (stagetrace's options, OpenTelemetry's FastAPI instrumentation).

Exporting tracers send to a loopback collector (``_sink.Collector``) named by the environment
the runner sets: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP/HTTP protobuf) and ``BENCH_SENTRY_DSN``.
ddtrace's agent URL (``BENCH_DD_AGENT_URL``) is the same collector, or a closed loopback port.
"""

from __future__ import annotations

import os
from typing import Any

#: Configuration names, in the order tables show them.
CONFIGS = (
    "none",
    "stagetrace-record",
    "stagetrace-memory",
    "stagetrace-otel",
    "stagetrace-sampled-out",
    "stagetrace-excluded",
    "otel-contrib",
    "sentry",
    "ddtrace",
)
#: The peers stagetrace is compared with.
PEERS = ("otel-contrib", "sentry", "ddtrace")

#: What each configuration is, for the table's legend and the README.
DESCRIPTIONS = {
    "none": "untraced",
    "stagetrace-record": "stagetrace instrumented, sinks=[] (recording only, nothing delivered)",
    "stagetrace-memory": 'stagetrace, sinks=["memory"] (every stage frozen and kept)',
    "stagetrace-otel": 'stagetrace, sinks=["otel"], OTLP/HTTP to a loopback collector',
    "stagetrace-sampled-out": 'stagetrace, sinks=["memory"], sample_rate=0',
    "stagetrace-excluded": 'stagetrace, sinks=["memory"], exclude_paths matching the request',
    "otel-contrib": "OpenTelemetry contrib instrumentation, BatchSpanProcessor, OTLP/HTTP exporter"
    " to a loopback collector",
    "sentry": "sentry-sdk, traces_sample_rate=1.0, middleware spans, HTTP transport to a loopback"
    " collector",
    "ddtrace": "ddtrace, full integration (ddtrace.auto), agent on loopback that drops the"
    " payloads (or unreachable: --ddtrace-agent unreachable)",
}

#: Regexes for `stagetrace-excluded`: a typical list whose last entry matches the benchmark's paths.
EXCLUDE_PATHS = [r"^/static/", r"^/healthz$", r"^/(ping|api|products|export|scale|items|page)"]


class Unavailable(Exception):
    """This configuration cannot run here (a package is missing, or the feature does not exist
    yet); the message says why."""


class Tracer:
    """The untraced configuration, and the interface of the others."""

    name = "none"
    #: Whether `delivered()` counts in the process; else the loopback collector counts.
    counts_in_process = True

    def __init__(self, framework: str) -> None:
        self.framework = framework

    def after_setup(self, app: Any = None) -> None:
        """Called once the framework is set up (Django) or the app imported (FastAPI)."""

    def flush(self) -> None:
        """Wait until everything recorded so far was delivered."""

    def delivered(self) -> int | None:
        """Spans or stages delivered so far (cumulative), or None when the collector counts."""
        return 0

    @property
    def stagetrace_on(self) -> bool:
        return False


class Stagetrace(Tracer):
    OPTIONS: dict[str, dict[str, Any]] = {
        "record": {"sinks": []},
        "memory": {"sinks": ["memory"]},
        "otel": {"sinks": ["otel"]},
        "sampled-out": {"sinks": ["memory"], "sample_rate": 0.0},
        "excluded": {"sinks": ["memory"], "exclude_paths": EXCLUDE_PATHS},
    }

    def __init__(self, framework: str, variant: str) -> None:
        super().__init__(framework)
        self.name = f"stagetrace-{variant}"
        self.variant = variant
        self.counts_in_process = variant != "otel"
        for key in [k for k in os.environ if k.startswith("STAGETRACE_")]:
            del os.environ[key]
        if framework == "django":
            os.environ["BENCH_STAGETRACE"] = "1"  # settings.py installs the app
        self._last: Any = None
        self._seen = 0
        self._delivered = 0

    @property
    def stagetrace_on(self) -> bool:
        return True

    def after_setup(self, app: Any = None) -> None:
        import stagetrace

        try:
            stagetrace.configure(service="bench", **self.OPTIONS[self.variant])
        except stagetrace.ConfigurationError as exc:
            raise Unavailable(str(exc)) from None

    def flush(self) -> None:
        import stagetrace

        stagetrace.flush(timeout=60)

    def delivered(self) -> int | None:
        """Stages that reached the memory sink: the timelines delivered since the last call
        (from `stagetrace.stats()`) times the stages of the newest one."""
        if self.variant == "otel":
            return None
        if self.variant == "record":
            return 0
        import stagetrace

        timelines = stagetrace.recent()
        new = timelines
        if self._last is not None:
            for i in range(len(timelines) - 1, -1, -1):
                if timelines[i] is self._last:
                    new = timelines[i + 1 :]
                    break
        stats = stagetrace.stats()
        total = stats.get("timelines", 0) - stats.get("timelines_dropped", 0)
        count = total - self._seen if "timelines" in stats else len(new)
        self._seen = total
        if new:
            # Stages are built only when read: reading every new timeline's would leave
            # thousands of objects in the ring for the garbage collector to walk in the next
            # blocks, a cost no production sink has. The endpoints are deterministic, so the
            # newest timeline stands for the block.
            self._delivered += len(new[-1].stages) * count
            self._last = timelines[-1]
        return self._delivered


class OtelContrib(Tracer):
    name = "otel-contrib"
    counts_in_process = False

    def __init__(self, framework: str) -> None:
        super().__init__(framework)
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise Unavailable(f"{exc} (pip install -e '.[otlp,bench]')") from None
        self.provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(self.provider)
        if framework == "django":
            try:
                from opentelemetry.instrumentation.django import DjangoInstrumentor
            except ImportError as exc:
                raise Unavailable(f"{exc} (pip install -e '.[bench]')") from None
            DjangoInstrumentor().instrument(tracer_provider=self.provider)
            if os.environ.get("BENCH_DB", "").startswith("postgres:"):
                from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

                PsycopgInstrumentor().instrument(tracer_provider=self.provider)
            else:
                from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

                SQLite3Instrumentor().instrument(tracer_provider=self.provider)

    def after_setup(self, app: Any = None) -> None:
        if self.framework == "fastapi":
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            FastAPIInstrumentor.instrument_app(app, tracer_provider=self.provider)

    def flush(self) -> None:
        self.provider.force_flush(60_000)

    def delivered(self) -> int | None:
        return None


class Sentry(Tracer):
    name = "sentry"
    counts_in_process = False

    def __init__(self, framework: str) -> None:
        super().__init__(framework)
        try:
            import sentry_sdk
        except ImportError as exc:
            raise Unavailable(f"{exc} (pip install -e '.[bench]')") from None
        if framework == "django":
            from sentry_sdk.integrations.django import DjangoIntegration

            integrations: list[Any] = [DjangoIntegration(middleware_spans=True)]
        else:
            from sentry_sdk.integrations.fastapi import FastApiIntegration
            from sentry_sdk.integrations.starlette import StarletteIntegration

            integrations = [
                StarletteIntegration(middleware_spans=True),
                FastApiIntegration(middleware_spans=True),
            ]
        sentry_sdk.init(
            dsn=os.environ["BENCH_SENTRY_DSN"],
            traces_sample_rate=1.0,
            integrations=integrations,
            environment="bench",
        )
        self.sdk = sentry_sdk

    def flush(self) -> None:
        self.sdk.flush(timeout=60)

    def delivered(self) -> int | None:
        return None


class Ddtrace(Tracer):
    name = "ddtrace"

    def __init__(self, framework: str) -> None:
        super().__init__(framework)
        # Quiet and self-contained: no telemetry, remote configuration or startup logs; the
        # agent URL (set by the runner) is the loopback collector, or a closed port.
        for key, value in {
            "DD_SERVICE": "bench",
            "DD_ENV": "bench",
            "DD_TRACE_STARTUP_LOGS": "false",
            "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
            "DD_REMOTE_CONFIGURATION_ENABLED": "false",
            "DD_TRACE_AGENT_URL": os.environ.get("BENCH_DD_AGENT_URL", "http://127.0.0.1:9"),
        }.items():
            os.environ.setdefault(key, value)
        try:
            import ddtrace.auto  # noqa: F401  (patches every supported library on import)
            from ddtrace.trace import TraceFilter, tracer
        except ImportError as exc:
            raise Unavailable(f"{exc} (pip install -e '.[bench]')") from None

        counter = self

        class Count(TraceFilter):  # type: ignore[misc]
            def process_trace(self, trace: list[Any]) -> list[Any]:
                counter._finished += len(trace)
                return trace

        self._finished = 0
        self.tracer = tracer
        tracer.configure(trace_processors=[Count()])

    def flush(self) -> None:
        self.tracer.flush()

    def delivered(self) -> int | None:
        return self._finished


def setup(framework: str, config: str | None = None) -> Tracer:
    """Set up the tracer named `config` (default: ``$BENCH_CONFIG``) for `framework`
    (``django`` or ``fastapi``), before the framework is imported."""
    config = config or os.environ.get("BENCH_CONFIG", "none")
    if config not in CONFIGS:
        raise SystemExit(f"unknown configuration {config!r}; known: {', '.join(CONFIGS)}")
    os.environ.pop("BENCH_STAGETRACE", None)
    if framework == "django":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.overhead.djangoshop.settings")
    if config.startswith("stagetrace-"):
        return Stagetrace(framework, config.removeprefix("stagetrace-"))
    if config == "otel-contrib":
        return OtelContrib(framework)
    if config == "sentry":
        return Sentry(framework)
    if config == "ddtrace":
        return Ddtrace(framework)
    return Tracer(framework)
