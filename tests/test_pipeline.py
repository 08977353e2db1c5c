"""The pipeline: background delivery, bounded queue, flush, analyzers, failure isolation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import stagetrace
import stagetrace._state
from stagetrace import Finding, Timeline
from tests.helpers import wsgi_environ


class RecordingSink:
    def __init__(self) -> None:
        self.got: list[Timeline] = []
        self.threads: set[str] = set()

    def emit(self, timeline: Timeline) -> None:
        self.threads.add(threading.current_thread().name)
        self.got.append(timeline)


class BlockingSink:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.got: list[Timeline] = []

    def emit(self, timeline: Timeline) -> None:
        self.entered.set()
        self.release.wait(10)
        self.got.append(timeline)


class BrokenSink:
    def emit(self, timeline: Timeline) -> None:
        raise RuntimeError("disk on fire")


def test_sinks_receive_timelines_on_the_background_worker():
    """Sinks run on the stagetrace worker thread, never on the thread that ended the request."""
    sink = RecordingSink()
    stagetrace.configure(sinks=[sink])
    with stagetrace.timeline("job"):
        pass
    assert stagetrace.flush(5)
    assert [t.name for t in sink.got] == ["job"]
    assert sink.threads == {"stagetrace-worker"}


def test_a_full_queue_drops_and_counts_without_blocking():
    """With the sink stuck, timelines beyond queue_size are dropped and counted; the
    recording thread never waits."""
    sink = BlockingSink()
    stagetrace.configure(sinks=[sink], queue_size=3)
    with stagetrace.timeline("first"):
        pass
    assert sink.entered.wait(5)  # the worker is now stuck inside emit()
    for _ in range(10):
        with stagetrace.timeline("more"):
            pass
    stats = stagetrace.stats()
    assert stats["timelines_dropped"] == 7
    assert stats["queue_depth"] == 3
    sink.release.set()
    assert stagetrace.flush(5)
    assert len(sink.got) == 4
    assert stagetrace.stats()["timelines"] == 11


def test_flush_gives_up_at_its_deadline():
    """flush(timeout) returns False when the sink does not catch up in time."""
    sink = BlockingSink()
    stagetrace.configure(sinks=[sink])
    with stagetrace.timeline("job"):
        pass
    assert sink.entered.wait(5)
    assert stagetrace.flush(0.05) is False
    sink.release.set()
    assert stagetrace.flush(5) is True


def test_a_sinks_flush_gets_what_is_left_of_the_deadline():
    """One deadline covers the worker and the sinks: a sink whose ``flush`` takes a timeout
    (the OTLP exporter's) gets what the wait for the worker left of it, not a deadline of its
    own on top; a sink whose ``flush`` takes none is still called."""
    import time

    class SlowToDrain(BlockingSink):
        def __init__(self) -> None:
            super().__init__()
            self.flush_timeouts: list[float | None] = []

        def flush(self, timeout: float | None = None, /) -> None:  # positional only
            self.flush_timeouts.append(timeout)

    class Plain(RecordingSink):
        flushed = 0

        def flush(self) -> None:
            self.flushed += 1

    slow, plain = SlowToDrain(), Plain()
    stagetrace.configure(sinks=[slow, plain])
    with stagetrace.timeline("job"):
        pass
    assert slow.entered.wait(5)
    threading.Timer(0.3, slow.release.set).start()  # the worker catches up after 0.3 s
    t = time.monotonic()
    assert stagetrace.flush(1.0)
    assert time.monotonic() - t < 1.0
    (left,) = slow.flush_timeouts
    assert left is not None and 0.0 < left <= 0.75
    assert plain.flushed == 1


def test_a_failing_sink_is_counted_and_does_not_starve_the_others(caplog):
    """A sink that raises is counted and logged once; the next sink still gets the timeline."""
    good = RecordingSink()
    stagetrace.configure(sinks=[BrokenSink(), good])
    for _ in range(3):
        with stagetrace.timeline("job"):
            pass
    assert stagetrace.flush(5)
    assert len(good.got) == 3
    assert stagetrace.stats()["sink_errors"] == 3
    assert sum("disk on fire" in r.getMessage() for r in caplog.records) == 1


def test_analyzers_add_findings_before_sinks_and_captures_see_them():
    """Findings returned by analyzers are attached to the timeline everyone receives."""

    def slow_queries(tl: Timeline) -> list[Finding]:
        ids = tuple(s.id for s in tl.of_kind("db.query"))
        return [Finding("many_queries", f"{len(ids)} queries", ids, {"count": len(ids)})]

    def broken(tl: Timeline) -> None:
        raise ValueError("bug in analyzer")

    sink = RecordingSink()
    stagetrace.configure(sinks=[sink], analyzers=[broken, slow_queries])
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        for _ in range(2):
            with stagetrace.stage("q", kind="db.query"):
                pass
    assert stagetrace.flush(5)
    for tl in (got[0], sink.got[0]):
        (f,) = tl.findings
        assert f.kind == "many_queries" and f.stages == (1, 2)
        assert tl.to_dict()["findings"][0]["attrs"] == {"count": 2}
    assert stagetrace.stats()["analyzer_errors"] == 1


def test_without_capture_the_timeline_is_frozen_on_the_worker():
    """With no capture active, the request path only queues raw records."""
    seen = []

    class Probe:
        def emit(self, timeline: Timeline) -> None:
            seen.append((timeline.name, threading.current_thread().name))

    stagetrace.configure(sinks=[Probe()])
    with stagetrace.timeline("job"):
        pass
    worker = stagetrace._state.STATE.pipeline
    assert stagetrace.flush(5)
    assert seen == [("job", "stagetrace-worker")]
    assert worker is stagetrace._state.STATE.pipeline


def test_reconfiguring_drains_the_old_sinks_first():
    """configure() replacing the sinks delivers what was queued to the old ones."""
    old = RecordingSink()
    stagetrace.configure(sinks=[old])
    for _ in range(5):
        with stagetrace.timeline("job"):
            pass
    new = RecordingSink()
    stagetrace.configure(sinks=[new])
    assert len(old.got) == 5 and new.got == []


def test_configure_past_a_stuck_sink_closes_it_only_after_its_last_timeline(monkeypatch):
    """configure() waits for the old sinks at most its deadline, without holding stagetrace's
    lock; the old worker delivers the rest afterwards and only then closes them (they used to be
    closed at the deadline and written into afterwards: a closed JSON lines sink reopened its
    file, one leaked descriptor per such configure())."""
    from stagetrace import _pipeline
    from stagetrace._state import STATE

    monkeypatch.setattr(_pipeline.Pipeline, "RETIRE_TIMEOUT", 1.0, raising=False)

    class Tracking(RecordingSink):
        closed = False
        late = 0

        def emit(self, timeline: Timeline) -> None:
            self.late += self.closed
            super().emit(timeline)

        def close(self) -> None:
            self.closed = True

    slow, tracking = BlockingSink(), Tracking()
    stagetrace.configure(sinks=[slow, tracking])
    for i in range(3):
        with stagetrace.timeline(f"job {i}"):
            pass
        assert slow.entered.wait(5)
    done = threading.Event()
    threading.Thread(target=lambda: (stagetrace.configure(sinks=[]), done.set())).start()
    try:
        assert not done.wait(0.2)  # waiting for the stuck sink...
        assert STATE.lock.acquire(timeout=0.5)  # ... with the lock free
        STATE.lock.release()
        assert done.wait(5)
        assert not tracking.closed
    finally:
        slow.release.set()
    deadline = time.monotonic() + 5
    while not tracking.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tracking.closed and tracking.late == 0
    assert [t.name for t in tracking.got] == ["job 0", "job 1", "job 2"]


def test_a_sink_kept_past_a_stuck_worker_never_has_two_workers_at_once():
    """shutdown() (or a configure() keeping a sink object) gives up waiting for a stuck sink;
    the fresh worker delivers to that sink only once the old one stopped: one timeline at a
    time, in the order they ended."""

    class Stuck(BlockingSink):
        inside = 0
        most = 0

        def emit(self, timeline: Timeline) -> None:
            self.inside += 1
            self.most = max(self.most, self.inside)
            try:
                super().emit(timeline)
            finally:
                self.inside -= 1

    sink = Stuck()
    stagetrace.configure(sinks=[sink])
    with stagetrace.timeline("a"):
        pass
    assert sink.entered.wait(5)
    assert stagetrace.shutdown(0.2) is False
    with stagetrace.timeline("b"):
        pass
    time.sleep(0.3)  # the fresh worker has woken meanwhile
    sink.release.set()
    assert stagetrace.flush(5)
    assert [t.name for t in sink.got] == ["a", "b"] and sink.most == 1


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, stagetrace
    stagetrace.configure(jsonl=sys.argv[1])
    for i in range(50):
        with stagetrace.timeline("exit-job", i=i):
            pass
    # no flush(): the worker must drain at interpreter exit
    """
)


def test_the_worker_flushes_at_interpreter_exit(tmp_path):
    """Timelines still queued when the program ends are written before it exits."""
    path = tmp_path / "exit.jsonl"
    subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(path)], check=True, timeout=60)
    lines = path.read_text().splitlines()
    assert [json.loads(x)["stages"][0]["attrs"]["i"] for x in lines] == list(range(50))


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, stagetrace
    stagetrace.configure(jsonl=sys.argv[1])
    with stagetrace.timeline("parent-before-fork"):
        pass
    stagetrace.flush(5)
    pid = os.fork()
    if pid == 0:
        with stagetrace.timeline("child"):
            pass
        ok = stagetrace.flush(5)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    with stagetrace.timeline("parent-after-fork"):
        pass
    stagetrace.flush(5)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_worker(tmp_path):
    """After fork (gunicorn --preload) the child restarts the worker and writes its own lines."""
    path = tmp_path / "fork.jsonl"
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FORK_SCRIPT, str(path)], check=True, timeout=60
    )
    names = sorted(json.loads(x)["stages"][0]["name"] for x in path.read_text().splitlines())
    assert names == ["child", "parent-after-fork", "parent-before-fork"]


FORK_IN_REQUEST_SCRIPT = textwrap.dedent(
    """
    import os, sys, stagetrace
    stagetrace.configure(jsonl=sys.argv[1])
    with stagetrace.timeline("parent-request"):  # the first timeline: no worker yet
        pid = os.fork()
        if pid == 0:
            with stagetrace.timeline("child"):
                pass
            ok = stagetrace.flush(5)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
    stagetrace.flush(5)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_child_forked_during_a_timeline_records_its_own(tmp_path):
    """A process forked while a timeline is being recorded (multiprocessing started from a
    view) starts outside it: its own timelines are recorded, not declined as nested in a copy
    of the parent's that never ends."""
    path = tmp_path / "fork.jsonl"
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FORK_IN_REQUEST_SCRIPT, str(path)],
        check=True,
        timeout=60,
    )
    names = sorted(json.loads(x)["stages"][0]["name"] for x in path.read_text().splitlines())
    assert names == ["child", "parent-request"]


MULTIPROCESSING_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, stagetrace

    def job():
        with stagetrace.timeline("child"):
            pass  # and return: multiprocessing ends the child with os._exit()

    if __name__ == "__main__":
        stagetrace.configure(jsonl=sys.argv[1])
        with stagetrace.timeline("parent"):
            pass
        stagetrace.flush(5)
        p = multiprocessing.get_context("fork").Process(target=job)
        p.start()
        p.join(30)
        sys.exit(p.exitcode)
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_multiprocessing_child_delivers_its_timelines_when_it_ends(tmp_path):
    """A multiprocessing child (fork start method, as Pool workers use) ends with os._exit(),
    which skips atexit: what it queued is flushed by multiprocessing's own exit finalizers
    (it used to be lost, uncounted, unless the worker's batch delay had passed)."""
    path = tmp_path / "mp.jsonl"
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", MULTIPROCESSING_SCRIPT, str(path)],
        check=True,
        timeout=60,
    )
    names = sorted(json.loads(x)["stages"][0]["name"] for x in path.read_text().splitlines())
    assert names == ["child", "parent"]


def test_shutdown_flushes_and_recording_goes_on_into_the_same_sinks():
    """shutdown() delivers what is queued and stops the worker; a later timeline starts a fresh
    worker that delivers to the same sinks, which shutdown() therefore leaves open (a closed
    otel sink used to drop every later span). reset() closes them."""
    closed = []

    class Closing(RecordingSink):
        def close(self) -> None:
            closed.append(True)

    sink = Closing()
    stagetrace.configure(sinks=[sink])
    with stagetrace.timeline("a"):
        pass
    assert stagetrace.shutdown(5)
    assert closed == [] and [t.name for t in sink.got] == ["a"]
    with stagetrace.timeline("b"):
        pass
    assert stagetrace.flush(5)
    assert [t.name for t in sink.got] == ["a", "b"]
    stagetrace.reset()
    assert closed == [True]


def test_configure_closes_only_the_sinks_it_replaces():
    """A sink object given to configure() stays open, and keeps receiving, across a later
    configure() of another option; it is closed once a configure() no longer uses it."""

    class Closing(RecordingSink):
        closed = False

        def emit(self, timeline: Timeline) -> None:
            if self.closed:
                raise RuntimeError("emit() after close()")
            super().emit(timeline)

        def close(self) -> None:
            self.closed = True

    kept, other = Closing(), RecordingSink()
    stagetrace.configure(sinks=[kept])
    with stagetrace.timeline("a"):
        pass
    stagetrace.configure(sample_rate=1.0)
    assert not kept.closed
    with stagetrace.timeline("b"):
        pass
    assert stagetrace.flush(5)
    assert [t.name for t in kept.got] == ["a", "b"]
    stagetrace.configure(sinks=[other])
    assert kept.closed
    assert stagetrace.stats()["sink_errors"] == 0


def test_internal_errors_are_counted_not_raised(monkeypatch, captured):
    """A bug inside stagetrace's recorder never reaches the application."""
    from stagetrace import _runtime

    def boom() -> None:
        raise RuntimeError("internal bug")

    monkeypatch.setattr(_runtime, "settings", boom)
    with stagetrace.timeline("job"):
        value = 42
    assert value == 42 and captured == []
    assert stagetrace.stats()["internal_errors"] == 1


def test_a_kept_timeline_holds_few_objects_the_garbage_collector_follows():
    """Every object a timeline kept by the memory sink holds that the collector tracks reaches
    its oldest generation and brings the next full collection closer: a served request's kept
    timeline holds four (the timeline, its rows, the flat row tuple and the request's plain
    facts) — not the gateway's request object or tuples around it."""
    import gc
    import types

    from stagetrace.wsgi import StagetraceMiddleware

    def app(environ, start_response):
        with stagetrace.stage("work", kind="template", rows=3):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    stagetrace.configure(sinks=["memory"])
    wrapped = StagetraceMiddleware(app)
    environ = wsgi_environ("/kept", QUERY_STRING="a=1", HTTP_USER_AGENT="test")
    body = wrapped(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(body) == b"ok"
    body.close()
    assert stagetrace.flush(5)
    (tl,) = stagetrace.recent()
    gc.collect(0)  # what a young collection leaves tracked is what gets promoted
    seen: dict[int, object] = {}
    stack: list[object] = [tl]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(
            obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
        ):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    tracked = sorted(type(o).__name__ for o in seen.values() if gc.is_tracked(o))
    assert tracked == ["Timeline", "_Rows", "tuple", "tuple"]
    assert tl.stages[0].attrs["user_agent.original"] == "test"  # the facts are all there
    assert tl.stages[0].attrs["url.query"] == "a=REDACTED"


def test_a_kept_timeline_read_by_two_threads_at_once_keeps_its_request_attributes():
    """The worker (mapping for export) and an application thread (``recent()``) can read a
    kept timeline's root for the first time at once. The reader that comes second must still
    see the request's attributes, not a half-cleared state (the regression: it called the
    deferred parser with None, counted an internal error and kept a root without them)."""
    import linecache
    import sys

    from stagetrace._recorder import _Rows
    from stagetrace.wsgi import StagetraceMiddleware

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    stagetrace.configure(sinks=["memory"])
    environ = wsgi_environ("/x", QUERY_STRING="a=1", HTTP_USER_AGENT="ua")
    body = StagetraceMiddleware(app)(environ, lambda *a: None)
    b"".join(body)
    body.close()
    assert stagetrace.flush(5)
    (tl,) = stagetrace.recent()
    rows = tl._load
    code = _Rows._root_attrs.__code__
    paused, go = threading.Event(), threading.Event()

    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None

        def local(frame, event, arg):
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
            if event == "line" and "attrs = dict(self.flat" in line and not paused.is_set():
                paused.set()  # the first reader stops just before it builds the root
                go.wait(5)
            return local

        return local

    got: dict[str, Any] = {}

    def first_reader() -> None:
        sys.settrace(tracer)
        try:
            got["a"] = dict(rows._root_attrs())
        finally:
            sys.settrace(None)

    t = threading.Thread(target=first_reader)
    t.start()
    assert paused.wait(5)
    got["b"] = dict(tl.stages[0].attrs)  # another thread reads the whole root meanwhile
    go.set()
    t.join(5)
    for attrs in (got["a"], got["b"], dict(tl.stages[0].attrs)):
        assert attrs["user_agent.original"] == "ua" and attrs["http.request.method"] == "GET"
    assert stagetrace.stats()["internal_errors"] == 0


def test_a_sink_or_analyzer_raising_a_base_exception_is_counted_and_delivery_goes_on():
    """``asyncio.CancelledError`` (an asyncio-based exporter's cancelled send) is no
    ``Exception``: from a sink or an analyzer it used to end the worker for good, uncounted,
    and every later timeline waited in the queue until it was full and then was dropped."""
    import asyncio

    class Cancelled(RecordingSink):
        raised = False

        def emit(self, timeline: Timeline) -> None:
            if not self.raised:
                self.raised = True
                raise asyncio.CancelledError
            super().emit(timeline)

    class CancelledMany(RecordingSink):
        raised = False

        def emit_many(self, timelines: list[Timeline]) -> None:
            if not self.raised:
                self.raised = True
                raise asyncio.CancelledError
            self.got.extend(timelines)

    def analyzer(tl: Timeline) -> None:
        if tl.name == "first":
            raise asyncio.CancelledError

    one, many = Cancelled(), CancelledMany()
    stagetrace.configure(sinks=[one, many], analyzers=[analyzer])
    with stagetrace.timeline("first"):
        pass
    assert stagetrace.flush(5)
    for i in range(3):
        with stagetrace.timeline(f"later {i}"):
            pass
    assert stagetrace.flush(5)
    stats = stagetrace.stats()
    assert stats["sink_errors"] == 2 and stats["analyzer_errors"] == 1
    assert (
        [t.name for t in one.got] == [t.name for t in many.got] == [f"later {i}" for i in range(3)]
    )
    assert stats["timelines_dropped"] == 0 and stats["queue_depth"] == 0


def test_a_worker_that_died_is_replaced_by_the_next_timeline(monkeypatch):
    """Should the worker die after all (here: the logging handler that reports a failing sink
    raises what nothing catches), the next timeline starts another, and flush() does not wait
    for the batch that was lost."""
    import logging

    class Raising(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise SystemExit  # ends a thread quietly

    class FailsOnce(RecordingSink):
        failed = False

        def emit_many(self, timelines: list[Timeline]) -> None:
            if not self.failed:
                self.failed = True
                raise RuntimeError("first one fails")
            self.got.extend(timelines)

    ended: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: ended.append(args.exc_type))
    sink = FailsOnce()
    stagetrace.configure(sinks=[sink])
    handler = Raising()
    logging.getLogger("stagetrace").addHandler(handler)
    try:
        with stagetrace.timeline("lost"):
            pass
        pipeline = stagetrace._state.STATE.pipeline
        assert pipeline is not None
        first = pipeline._thread
        assert first is not None
        first.join(5)
    finally:
        logging.getLogger("stagetrace").removeHandler(handler)
    assert not first.is_alive() and ended == [SystemExit]
    with stagetrace.timeline("delivered"):
        pass
    assert pipeline._thread is not None and pipeline._thread is not first
    assert stagetrace.flush(5)
    assert [t.name for t in sink.got] == ["delivered"]
    assert stagetrace.stats()["sink_errors"] == 1


def test_a_timeline_that_fails_to_build_does_not_hold_up_flush(monkeypatch):
    """A timeline the worker cannot build is counted as an internal error and skipped; flush()
    still returns True at once (it used to wait for it until its deadline, then say False)."""
    import time

    from stagetrace import _pipeline

    real = _pipeline._recorder.finished
    calls = []

    def finished(tl: Any) -> Timeline:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("cannot build")
        return real(tl)

    monkeypatch.setattr(_pipeline._recorder, "finished", finished)
    sink = RecordingSink()
    stagetrace.configure(sinks=[sink])
    for name in ("broken", "fine"):
        with stagetrace.timeline(name):
            pass
    t = time.monotonic()
    assert stagetrace.flush(2)
    assert time.monotonic() - t < 1.0
    assert [t.name for t in sink.got] == ["fine"]
    assert stagetrace.stats()["internal_errors_by_site"] == {"pipeline.build": 1}


class _SlowSink:
    """Takes `delay` seconds a timeline; notes two workers inside it at once, and timelines it
    got after ``close()``."""

    def __init__(self, delay: float = 0.4) -> None:
        self.delay = delay
        self.active = 0
        self.overlap = False
        self.closed = False
        self.after_close = 0
        self.got = 0
        self.lock = threading.Lock()

    def emit(self, timeline: Any) -> None:
        with self.lock:
            self.active += 1
            self.overlap |= self.active > 1
            self.after_close += self.closed
            self.got += 1
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1

    def close(self) -> None:
        self.closed = True


def _one() -> None:
    with stagetrace.timeline("t"):
        pass


def test_a_line_of_pipelines_that_never_started_waits_for_the_one_still_delivering():
    """shutdown() twice, or shutdown() then reset(), while the first worker is still inside a
    slow sink: the pipelines in between never started, and used to say "stopped" at once —
    the next one then ran a second worker in the same sink, or reset() closed the sink while
    the first worker still wrote to it."""
    sink = _SlowSink()
    stagetrace.configure(sinks=[sink])
    _one()
    _one()
    time.sleep(0.15)  # the first worker is inside emit (2 x 0.4 s)
    stagetrace.shutdown(timeout=0.05)
    stagetrace.shutdown(timeout=0.05)
    _one()
    assert stagetrace.flush(timeout=5)
    assert (sink.got, sink.overlap) == (3, False)

    closing = _SlowSink()
    stagetrace.configure(sinks=[closing])
    _one()
    _one()
    time.sleep(0.15)
    stagetrace.shutdown(timeout=0.05)
    stagetrace.reset()
    deadline = time.monotonic() + 5
    while not closing.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (closing.got, closing.closed, closing.after_close) == (2, True, 0)


def test_configure_from_inside_a_sink_closes_it_only_after_its_batch():
    """A sink calling configure() from its emit (switching configuration on some condition):
    the pipeline is retired from its own worker, which closes the sink only once its batch is
    done — it used to close it there and then, and go on delivering into it."""
    from stagetrace.sinks import MemorySink

    class Reconfiguring:
        def __init__(self) -> None:
            self.closed = False
            self.after_close = 0
            self.got = 0

        def emit(self, timeline: Any) -> None:
            self.got += 1
            self.after_close += self.closed
            if self.got == 1:
                stagetrace.configure(sinks=[MemorySink()])

        def close(self) -> None:
            self.closed = True

    sink = Reconfiguring()
    stagetrace.configure(sinks=[sink])
    for _ in range(5):
        _one()
    deadline = time.monotonic() + 5
    while not sink.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (sink.closed, sink.after_close) == (True, 0)


def test_flush_from_a_sink_never_waits_for_its_own_worker():
    """A sink calling stagetrace.flush(timeout=None) after shutdown() handed its sinks to a new
    pipeline: that pipeline's worker waits for this one to stop, so waiting for it from here
    would never end. The flush returns at once, and delivery goes on."""
    seen: dict[str, Any] = {}

    class Flushing:
        got = 0

        def emit(self, timeline: Any) -> None:
            self.got += 1
            if self.got == 1:
                time.sleep(0.3)  # meanwhile: shutdown(), and a new timeline
                started = time.monotonic()
                seen["flush"] = stagetrace.flush(timeout=None)
                seen["took"] = time.monotonic() - started

    sink = Flushing()
    stagetrace.configure(sinks=[sink])
    _one()
    time.sleep(0.1)
    stagetrace.shutdown(timeout=0.05)
    _one()
    assert stagetrace.flush(timeout=5)
    assert seen["took"] < 1.0 and sink.got == 2


def test_flush_from_a_sink_delivers_nothing_from_inside_it():
    """A sink whose ``emit`` calls stagetrace.flush() on its own worker: the flush drained the
    queue right there — the next timelines went to every sink from inside this one's
    ``emit`` (nested, out of order, into a sink that may hold its own lock) and its ``flush``
    was called in the middle of its ``emit``. It now returns False (not everything is
    delivered: the caller is delivering) and the worker goes on in order."""
    events: list[tuple[Any, ...]] = []
    second_queued = threading.Event()

    class Flushing:
        def emit(self, timeline: Any) -> None:
            events.append(("emit", timeline.name))
            if timeline.name == "first":
                second_queued.wait(5)
                events.append(("flush returned", stagetrace.flush(timeout=1)))
            events.append(("emit done", timeline.name))

        def flush(self) -> None:
            events.append(("sink flush",))

    stagetrace.configure(sinks=[Flushing()])
    with stagetrace.timeline("first"):
        pass
    while not events:
        time.sleep(0.01)
    with stagetrace.timeline("second"):
        pass
    second_queued.set()
    assert stagetrace.flush(timeout=5)
    assert events == [
        ("emit", "first"),
        ("flush returned", False),
        ("emit done", "first"),
        ("emit", "second"),
        ("emit done", "second"),
        ("sink flush",),
    ]


FORK_UNSTARTED_SCRIPT = textwrap.dedent(
    """
    import io, os, sys, time, stagetrace
    from stagetrace.sinks import ConsoleSink

    class SlowStream(io.StringIO):
        encoding = "utf-8"
        def write(self, s):
            time.sleep(1.0)  # the parent's worker holds the console sink's lock meanwhile
            return super().write(s)

    sink = ConsoleSink(SlowStream(), width=80, color="never")
    stagetrace.configure(sinks=[sink])
    with stagetrace.timeline("parent"):
        pass
    time.sleep(0.3)
    stagetrace.shutdown(timeout=0.05)  # the pipeline in force has not started
    pid = os.fork()
    if pid == 0:
        sink._stream = io.StringIO()
        with stagetrace.timeline("child"):
            pass
        stagetrace.flush(timeout=3)
        os._exit(0 if "child" in sink._stream.getvalue() else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_fork_after_shutdown_renews_the_sinks_in_the_child():
    """A fork while the pipeline in force has not started (after shutdown(), or a gunicorn
    --preload master that recorded nothing) still gives each sink its after_fork: the console
    sink's lock, held by the parent's worker as it forked, used to stay held in the child,
    which then printed nothing."""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", FORK_UNSTARTED_SCRIPT], timeout=60)
    assert done.returncode == 0


SELF_CONFIGURED_CHILD_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys

    def child(path):
        import stagetrace
        stagetrace.configure(jsonl=path)
        for name in ("a", "b", "c"):
            with stagetrace.timeline(name):
                pass

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[2])
        p = multiprocessing.Process(target=child, args=(sys.argv[1],))
        p.start()
        p.join(30)
        sys.exit(p.exitcode)
    """
)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_multiprocessing_child_configuring_itself_delivers_when_it_ends(tmp_path, method):
    """A child that configures stagetrace itself (forkserver, the default start method from
    Python 3.14; or fork from a parent that did not) ends with os._exit(): its queue is
    flushed by multiprocessing's exit finalizers too (it was lost: 0 of 3 timelines)."""
    import multiprocessing

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    script = tmp_path / "child_script.py"
    script.write_text(SELF_CONFIGURED_CHILD_SCRIPT)
    path = tmp_path / "child.jsonl"
    subprocess.run(
        [sys.executable, "-W", "ignore", str(script), str(path), method], check=True, timeout=60
    )
    names = sorted(json.loads(x)["stages"][0]["name"] for x in path.read_text().splitlines())
    assert names == ["a", "b", "c"]
