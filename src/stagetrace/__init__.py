"""stagetrace: where did this request's time go?

Records a timeline of stages for every request a Python web app serves — each middleware in and
out, URL resolution, the view, ORM compile, SQL, row fetch, templates, serialization — cheaply
enough to leave on in production, and hands finished timelines to sinks.

Importing this package has no side effects and imports no web framework.
"""

from __future__ import annotations

from ._api import (
    CurrentTimeline,
    StageScope,
    TimelineScope,
    annotate,
    capture,
    current_timeline,
    discard,
    stage,
    timeline,
)
from ._logging import LogContextFilter
from ._model import KINDS, SCHEMA, Finding, KindSummary, SchemaError, Stage, StageError, Timeline
from ._options import ConfigurationError, Settings
from ._runtime import configure, flush, reset, settings, shutdown, stats
from .typing import Analyzer, Sink

__version__ = "0.1.0.dev0"

__all__ = [
    "KINDS",
    "SCHEMA",
    "Analyzer",
    "ConfigurationError",
    "CurrentTimeline",
    "Finding",
    "KindSummary",
    "LogContextFilter",
    "SchemaError",
    "Settings",
    "Sink",
    "Stage",
    "StageError",
    "StageScope",
    "Timeline",
    "TimelineScope",
    "__version__",
    "annotate",
    "capture",
    "configure",
    "current_timeline",
    "discard",
    "flush",
    "recent",
    "reset",
    "settings",
    "shutdown",
    "stage",
    "stats",
    "timeline",
]


#: Longest wait of `recent()` for timelines still on their way to the sinks, in seconds.
_RECENT_WAIT = 1.0


def recent() -> list[Timeline]:
    """The timelines kept by the configured ``memory`` sink, oldest first (empty without one).

    The background worker hands timelines to the sinks after the response: this first waits
    (at most `_RECENT_WAIT` seconds) for those finished before the call, so a request just
    made is among them. The sinks are not flushed (an exporter's collector is not waited
    for)."""
    from ._runtime import delivered
    from .sinks import MemorySink

    memory = [sink for sink in settings().sinks if isinstance(sink, MemorySink)]
    if memory:
        delivered(_RECENT_WAIT)
    out: list[Timeline] = []
    for sink in memory:
        out.extend(sink.timelines())
    return out
