"""Bounded memory: what stagetrace keeps does not grow with the number of requests, and every
kept value is capped."""

from __future__ import annotations

import gc
import tracemalloc

from django.db import connection
from django.test import Client

import stagetrace


def test_resident_memory_is_flat_over_many_requests():
    """Requests of the N+1 view into a memory sink of 20: the memory stagetrace's code allocated
    and still holds after 150 requests does not grow over the next 500 (a longer run lives in
    the benchmarks)."""
    stagetrace.configure(sinks=["memory"], memory_size=20)
    client = Client()
    tracemalloc.start(1)
    try:
        for _ in range(150):
            client.get("/books.json")
        stagetrace.flush(10)
        gc.collect()
        before = _ours(tracemalloc.take_snapshot())
        for _ in range(500):
            client.get("/books.json")
        stagetrace.flush(10)
        gc.collect()
        after = _ours(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert len(stagetrace.recent()) == 20
    assert after - before < 50_000, f"stagetrace's memory grew by {after - before} bytes"


def _ours(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated by stagetrace's own code."""
    filtered = snapshot.filter_traces([tracemalloc.Filter(True, "*/stagetrace/*")])
    return sum(stat.size for stat in filtered.statistics("filename"))


def test_sql_text_and_attribute_values_are_cut_with_a_marker(captured):
    """SQL longer than max_sql_length, and any other attribute longer than max_attr_length,
    is cut and ends with a marker."""
    stagetrace.configure(max_sql_length=100, max_attr_length=50)
    long_sql = "SELECT " + ", ".join(f"{i} AS c{i}" for i in range(100))
    with (
        stagetrace.timeline("job"),
        stagetrace.stage("s", note="x" * 1000),
        connection.cursor() as cursor,
    ):
        cursor.execute(long_sql)
    (tl,) = captured
    (query,) = tl.of_kind("db.query")
    assert len(query.attrs["db.query.text"]) == 101 and query.attrs["db.query.text"][-1] == "…"
    (stage,) = tl.of_kind("custom")
    assert len(stage.attrs["note"]) == 51 and stage.attrs["note"].endswith("…")


def test_a_request_running_10000_queries_stays_under_the_stage_cap(captured):
    """Past max_stages nothing more is kept, yet the per-kind summary counts every query."""
    stagetrace.configure(max_stages=200)
    with stagetrace.timeline("job"), connection.cursor() as cursor:
        for _ in range(10_000):
            cursor.execute("SELECT 1")
    (tl,) = captured
    assert len(tl.stages) == 200
    assert tl.by_kind["db.query"].count == 10_000
    assert tl.count("db.query") == 10_000
    assert tl.dropped_stages == 10_000 - 199
