"""Built-in sinks. Each one is also selectable by name in `configure(sinks=[...])` or
``STAGETRACE_SINKS``: ``console``, ``jsonl``, ``memory``, ``otel`` (spans, built from
`stagetrace.otel`, imported only when named), ``otel-metrics`` (OpenTelemetry histograms,
`stagetrace.otel._metrics`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._options import DEFAULT_KNOWN_METHODS
from ._console import ConsoleSink, render_waterfall
from ._jsonl import JsonlSink, read_jsonl
from ._memory import MemorySink

if TYPE_CHECKING:
    from ..typing import Sink

__all__ = ["ConsoleSink", "JsonlSink", "MemorySink", "build", "read_jsonl", "render_waterfall"]


def build(plan: Sequence[Any], values: Mapping[str, Any]) -> tuple[Sink, ...]:
    """The sink objects for a plan of names and objects (see `_options.sink_plan`), configured
    from the resolved option `values`. A sink that cannot work (a JSON lines file that cannot
    be written) raises `ConfigurationError` here, at configuration, not at the first request."""
    built: list[Sink] = []
    for item in plan:
        if not isinstance(item, str):
            built.append(item)
        elif item == "jsonl":
            built.append(JsonlSink(values["jsonl"]))
        elif item == "console":
            built.append(ConsoleSink(color=values.get("color", "auto")))
        elif item == "memory":
            built.append(MemorySink(values.get("memory_size", 100)))
        elif item == "otel":
            from ..otel._provider import build_sink, sdk_disabled

            if values.get("tracer_provider") is None and sdk_disabled():
                continue  # OpenTelemetry is switched off: no spans, no context naming them
            built.append(build_sink(values))
        elif item == "otel-metrics":
            from ..otel._metrics import MetricsSink, require_provider
            from ..otel._provider import sdk_disabled

            if values.get("meter_provider") is None and sdk_disabled():
                continue  # no MeterProvider to be had: not a configuration error
            provider = require_provider(values.get("meter_provider"))
            if "otel" in plan:  # the otel sink records the same metrics: not twice
                continue
            built.append(
                MetricsSink(provider, values.get("http_known_methods", DEFAULT_KNOWN_METHODS))
            )
    return tuple(built)
