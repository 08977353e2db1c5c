"""The only module-level state of stagetrace, in one object so `reset()` can put it back.

Data only: the configuration layers, the resolved settings, the running pipeline, `capture()`
listeners, internal counters, and the timelines in flight. What to do with it lives elsewhere
(`_runtime` resolves and applies configuration, `_pipeline` runs the worker, `_guard` counts
internal errors).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._model import Timeline
    from ._options import Settings
    from ._pipeline import Pipeline


class State:
    """Everything stagetrace keeps between calls."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: configure() arguments, the framework's settings and the adapter-proposed defaults.
        self.explicit: dict[str, Any] = {}
        self.framework: dict[str, Any] = {}
        self.framework_source = "framework settings"
        self.proposed: dict[str, Any] = {}
        self.settings: Settings | None = None
        self.pipeline: Pipeline | None = None
        self.listeners: tuple[list[Timeline], ...] = ()
        #: stats() counters; internal errors by site; sites already logged.
        self.counters: Counter[str] = Counter()
        self.errors_by_site: Counter[str] = Counter()
        self.logged_sites: set[str] = set()
        #: Timelines of requests being served now, by every adapter (set.add/discard are atomic).
        self.in_flight: set[Any] = set()
        #: Objects with ``enter(live_timeline, request) -> token`` and ``exit(token)``, called by
        #: every gateway around the application's handling of a recorded request (a sink that
        #: propagates OpenTelemetry context installs one).
        self.context_hooks: tuple[Any, ...] = ()
        #: How trace context crosses process boundaries when it is not plain W3C trace context:
        #: an object with ``inject(headers, span, tracestate)`` (adds the headers naming a
        #: stage to an outgoing call's), set from the OpenTelemetry context hook when the
        #: application's propagator is another one (``OTEL_PROPAGATORS`` = b3, jaeger, ...);
        #: while set, the gateways offer the hook every request header. None: stagetrace's own
        #: W3C ``traceparent``/``tracestate``.
        self.propagation: Any = None
        #: Findings already logged, by (route, kind, fingerprint).
        self.logged_findings: set[tuple[str, str, str]] = set()
        self.logged_findings_full = False

    def clear(self) -> None:
        """Back to a fresh process's state (the caller retires the old pipeline)."""
        self.explicit = {}
        self.framework = {}
        self.framework_source = "framework settings"
        self.proposed = {}
        self.settings = None
        self.pipeline = None
        self.listeners = ()
        self.context_hooks = ()
        self.propagation = None
        self.counters.clear()
        self.errors_by_site.clear()
        self.logged_sites.clear()
        self.in_flight.clear()
        self.logged_findings.clear()
        self.logged_findings_full = False


STATE = State()
