from __future__ import annotations

import logging

from . import _recorder


class LogContextFilter(logging.Filter):
    """Puts ``request_id``, ``trace_id`` and ``span_id`` of the current timeline on every log
    record, so application logs correlate with timelines and traces.

    Add it to a handler (``handler.addFilter(stagetrace.LogContextFilter())``, or the
    ``filters`` of a ``LOGGING`` dict) and use ``%(request_id)s`` etc. in the format. Outside a
    timeline the fields are `default` (``"-"``), so format strings never fail. Fields a record
    already carries are left alone. The filter never drops a record.
    """

    def __init__(self, name: str = "", default: str = "-") -> None:
        super().__init__(name)
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            tl = _recorder.live()
        except Exception as exc:
            _recorder.internal_error("logging", exc)
            tl = None
        if tl is None:
            request_id = trace_id = span_id = self.default
        else:
            trace_id = f"{tl.trace_id:032x}"
            span_id = f"{tl.span_id:016x}"
            request_id = tl.request_id or trace_id
        d = record.__dict__
        d.setdefault("request_id", request_id)
        d.setdefault("trace_id", trace_id)
        d.setdefault("span_id", span_id)
        return True
