"""The logging filter that correlates log records with timelines."""

from __future__ import annotations

import logging

import stagetrace


def test_log_records_carry_ids_inside_a_timeline_and_dashes_outside():
    """request_id, trace_id and span_id are set from the current timeline, '-' otherwise."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(stagetrace.LogContextFilter())
    handler.setFormatter(logging.Formatter("%(request_id)s %(trace_id)s %(span_id)s %(message)s"))
    log = logging.getLogger("test.stagetrace.logging")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("outside")
        with stagetrace.capture() as got, stagetrace.timeline("job"):
            log.info("inside")
    finally:
        log.removeHandler(handler)
    (tl,) = got
    outside, inside = (handler.format(r) for r in records)
    assert outside == "- - - outside"
    assert inside == f"{tl.request_id} {tl.trace_id} {tl.span_id} inside"


def test_the_filter_keeps_fields_a_record_already_has():
    """A request_id set by the application (extra=...) is not overwritten."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.request_id = "mine"
    with stagetrace.timeline("job"):
        assert stagetrace.LogContextFilter().filter(record) is True
    assert record.request_id == "mine" and len(record.trace_id) == 32
