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


def recent() -> list[Timeline]:
    """The timelines kept by the configured ``memory`` sink, oldest first (empty without one)."""
    from .sinks import MemorySink

    out: list[Timeline] = []
    for sink in settings().sinks:
        if isinstance(sink, MemorySink):
            out.extend(sink.timelines())
    return out
