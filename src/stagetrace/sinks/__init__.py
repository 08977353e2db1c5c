"""Built-in sinks. Each one is also selectable by name in `configure(sinks=[...])` or
``STAGETRACE_SINKS``: ``console``, ``jsonl``, ``memory``."""

from ._console import ConsoleSink, render_waterfall
from ._jsonl import JsonlSink, read_jsonl
from ._memory import MemorySink

__all__ = ["ConsoleSink", "JsonlSink", "MemorySink", "read_jsonl", "render_waterfall"]
