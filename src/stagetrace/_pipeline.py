"""The pipeline: finished timelines → analyzers → sinks, after the response.

The recorder hands each finished (sealed, lazy) `Timeline` to `submit`, on the request's
thread. `submit` gives it synchronously to `capture()` listeners (analyzed first) and appends it
to the bounded queue of the `Pipeline`'s background worker; when the queue is full the timeline
is dropped and counted, and the request never waits.

The worker is woken once per batch, not once per timeline: a wake-up costs a futex call on the
request thread and, worse, a thread that then competes with requests for the GIL (measured:
freezing on a worker woken per timeline added more request latency than freezing inline). The
first timeline after an idle period wakes it; it then waits `BATCH_DELAY` to gather more, and
drains everything queued in one go. `flush()` cuts the wait short.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import _guard, _recorder
from ._model import Finding, Timeline
from ._state import STATE
from .analyzers import log_findings
from .analyzers._queries import forget_analyzed

if TYPE_CHECKING:
    from .typing import Analyzer, Sink

logger = logging.getLogger("stagetrace")


def analyze(timeline: Timeline, analyzers: Sequence[Analyzer]) -> Timeline:
    """Run each analyzer on the timeline and return it with their findings attached."""
    found: list[Finding] = []
    for analyzer in analyzers:
        try:
            result = analyzer(timeline)
            if result:
                found.extend(result)
        except BaseException as exc:
            _reraise_if_stopping(exc)
            STATE.counters["analyzer_errors"] += 1
            _warn_once(f"analyzer {analyzer!r}", exc)
    forget_analyzed()
    if not found:
        return timeline
    timeline = timeline.with_findings(found)
    try:
        log_findings(timeline)
    except BaseException as exc:
        _reraise_if_stopping(exc)
        _guard.report("pipeline.log_findings", exc)
    return timeline


#: Set on the worker thread (see `_reraise_if_stopping`).
_on_worker = threading.local()


def _reraise_if_stopping(exc: BaseException) -> None:
    """Re-raise `exc` when it is the application stopping: `KeyboardInterrupt` or `SystemExit`
    on one of its own threads (`flush()` draining the queue itself, a `capture()` analyzing on
    the request's thread). Anything else a sink or analyzer raises is counted and swallowed,
    ``asyncio.CancelledError`` included (an asyncio-based exporter's cancelled send): it is
    no ``Exception``, and used to end the worker for good. On the worker these two are
    swallowed as well: raised on a daemon thread, they cannot stop the process, only end the
    worker and with it every later delivery."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not getattr(_on_worker, "on", False):
        raise exc


def submit(tl: _recorder.Live) -> None:
    """Receive a finished live timeline from the recorder, on the request path: keep it short
    (queue it; the worker seals, builds and analyzes it). Only while a `capture()` listens is
    the timeline built and analyzed here, synchronously."""
    state = STATE
    state.counters["timelines"] += 1
    if tl.dropped:
        state.counters["stages_dropped"] += tl.dropped
    listeners = state.listeners
    pipeline = state.pipeline
    if listeners:
        timeline = _recorder.finished(tl)
        settings = tl.settings
        if settings.analyzers:
            timeline = analyze(timeline, settings.analyzers)
        for target in listeners:
            target.append(timeline)
        if pipeline is not None:
            pipeline.put(timeline, True)
    elif pipeline is None or not pipeline.put(tl, False):
        _recorder.dispose(tl)


_warned: set[str] = set()


def _warn_once(what: str, exc: BaseException) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning(
            "stagetrace: %s failed (further failures only counted): %r", what, exc, exc_info=exc
        )


class Pipeline:
    """Analyzers and sinks behind one daemon thread and a bounded queue.

    `put` never blocks and takes no lock: it appends to a deque and wakes the thread only when
    it is idle. The thread starts on the first `put`, not before. A sink with an
    ``emit_many(timelines)`` method gets each batch in one call; others get ``emit`` per
    timeline. A sink is only ever called by one worker at a time, also when a new pipeline
    takes it over from the one it `replaces`.
    """

    #: How long the woken worker waits to gather a batch before draining the queue.
    BATCH_DELAY = 0.05
    #: How long `retire` waits, by default, for the worker to deliver what is queued.
    RETIRE_TIMEOUT = 5.0
    #: How long a new pipeline's worker waits for the one it replaces to stop before it
    #: delivers anything (see ``_after``).
    AFTER_TIMEOUT = 30.0

    def __init__(
        self,
        sinks: Sequence[Sink],
        analyzers: Sequence[Analyzer],
        maxsize: int,
        replaces: Pipeline | None = None,
    ) -> None:
        self.sinks = tuple(sinks)
        self.analyzers = tuple(analyzers)
        self.maxsize = maxsize
        self._q: deque[tuple[Any, bool]] = deque()
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._progress = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._submitted = 0
        self._done = 0
        self._idle = True
        self._closed = False
        self._stop = False
        #: The sinks to close when the worker stops (set by `retire`, emptied by who closes).
        self._to_close: list[Sink] = []
        #: Set once retired and stopped, sinks closed.
        self._stopped = threading.Event()
        self._pid = os.getpid()
        #: The `_stopped` of the pipeline this one `replaces`, when they share a sink (and the
        #: process it was made in): the worker delivers nothing before that one stopped, so a
        #: sink `retire` gave up waiting for never has two workers at once, and gets what was
        #: queued in order.
        self._after: tuple[int, threading.Event] | None = None
        if replaces is not None:
            theirs = {id(sink) for sink in replaces.sinks}
            if any(id(sink) in theirs for sink in self.sinks):
                self._after = (self._pid, replaces._stopped)
        # Every pipeline, started or not, for the fork hook: a sink's `after_fork` (a lock
        # renewed, a file reopened) is due in a forked child whether or not a worker ran.
        _pipelines.add(self)
        #: Per sink: whether its ``flush`` takes a ``timeout`` (then it gets what is left of
        #: the caller's deadline, not a deadline of its own on top).
        self._flush_takes_timeout = tuple(_takes_timeout(s) for s in self.sinks)

    def depth(self) -> int:
        """Timelines waiting for the worker."""
        return len(self._q)

    def put(self, timeline: Any, analyzed: bool) -> bool:
        """Queue a timeline (a built, analyzed `Timeline`, or a finished live one the worker
        seals and builds) for the sinks; False (and counted) when full or closed."""
        if self._closed:
            return False
        if len(self._q) >= self.maxsize:
            STATE.counters["timelines_dropped"] += 1
            return False
        self._submitted += 1
        self._q.append((timeline, analyzed))
        if self._idle:
            self._idle = False
            if self._thread is None:
                self._start()
            else:
                self._wake.set()
        return True

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            _install_process_hooks()
            t = threading.Thread(target=self._run, name="stagetrace-worker", daemon=True)
            self._thread = t
            t.start()

    def _run(self) -> None:
        _on_worker.on = True
        q = self._q
        try:
            after = self._after
            if after is not None and after[0] == os.getpid():
                # Bounded: a sink stuck for good in the old worker must not stop delivery to
                # the others for good (past the bound, two workers may be in that sink).
                after[1].wait(self.AFTER_TIMEOUT)
            self._after = None
            while not self._stop:
                if self._idle:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    if not q:
                        continue
                # Gather a batch, unless someone is waiting for a flush.
                self._hurry.wait(self.BATCH_DELAY)
                try:
                    self._drain()
                except BaseException as exc:  # our own code, or the logging of an error
                    _guard.report("pipeline.worker", exc)
                self._idle = True
                if q:  # put() saw us busy and did not wake us: go on
                    self._idle = False
            self._drain()
        finally:
            if self._stop:
                self._close_sinks()
                self._stopped.set()
            else:
                # Ended after all (the logging of an error raised): the next put() finds the
                # worker idle and without a thread, and starts another.
                self._thread = None
                self._idle = True

    def _drain(self) -> None:
        q = self._q
        while q:
            batch: list[Timeline] = []
            taken = 0
            try:
                try:
                    while taken < 512:
                        item, analyzed = q.popleft()
                        taken += 1
                        if analyzed:
                            batch.append(item)
                            continue
                        try:
                            timeline = _recorder.finished(item)
                        except BaseException as exc:
                            _reraise_if_stopping(exc)
                            _guard.report("pipeline.build", exc)
                            continue
                        if self.analyzers:
                            timeline = analyze(timeline, self.analyzers)
                        batch.append(timeline)
                except IndexError:
                    pass
                if batch:
                    self._emit(batch)
            finally:
                # Counted as done when taken, delivered or not: `flush` waits for the count,
                # and must not wait out its deadline for a timeline that failed to build.
                self._done += taken
                with self._progress:
                    self._progress.notify_all()

    def _emit(self, batch: list[Timeline]) -> None:
        for sink in self.sinks:
            many = getattr(sink, "emit_many", None)
            try:
                if many is not None:
                    many(batch)
                else:
                    for timeline in batch:
                        try:
                            sink.emit(timeline)
                        except BaseException as exc:
                            _reraise_if_stopping(exc)
                            STATE.counters["sink_errors"] += 1
                            _warn_once(f"sink {sink!r}", exc)
            except BaseException as exc:
                _reraise_if_stopping(exc)
                STATE.counters["sink_errors"] += 1
                _warn_once(f"sink {sink!r}", exc)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until everything queued before this call reached the sinks, then flush them.

        Returns False when the deadline passed first (the rest stays queued), or a sink's
        ``flush`` returned False (the OTLP export: not everything reached the collector)."""
        target = self._submitted
        if getattr(_on_worker, "on", False):
            # Called from a sink or an analyzer, on a worker: this pipeline's own, in the
            # middle of a delivery, or another's (this one took over its sinks and waits for
            # that worker to stop, so waiting would wait for ourselves). Draining here would
            # call the sinks from inside one of them — out of order, nested, into a sink that
            # holds its own lock — and the caller's own flush in the middle of its emit.
            return self._done >= target
        deadline = None if timeout is None else time.monotonic() + timeout
        self._deliver(target, deadline)
        delivered = True
        for sink, takes_timeout in zip(self.sinks, self._flush_takes_timeout, strict=True):
            fl = getattr(sink, "flush", None)
            if fl is not None:
                try:
                    if takes_timeout and deadline is not None:
                        done = fl(max(0.0, deadline - time.monotonic()))
                    else:
                        done = fl()
                    if done is False:  # the sink says what it holds did not all go out
                        delivered = False
                except BaseException as exc:
                    _reraise_if_stopping(exc)
                    STATE.counters["sink_errors"] += 1
                    _warn_once(f"sink {sink!r} flush", exc)
        return delivered and self._done >= target

    def delivered(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds until everything queued before this call reached the
        sinks, without flushing them (what `stagetrace.recent()` needs of the memory sink).

        On a worker (a sink or an analyzer calling `recent()`), nothing is waited for or
        delivered: draining there would call the sinks from inside one of them — out of order,
        nested as deep as the queue is long, and into a sink that holds its own lock."""
        target = self._submitted
        if not getattr(_on_worker, "on", False):
            self._deliver(target, time.monotonic() + timeout)
        return self._done >= target

    def _deliver(self, target: int, deadline: float | None) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            # never started, gone (interpreter shutdown), or called from a sink: drain here.
            self._drain()
            return
        with self._progress:
            while self._done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._hurry.set()
                self._wake.set()
                self._progress.wait(0.05 if remaining is None else min(remaining, 0.05))
        self._hurry.clear()

    def retire(self, timeout: float | None = None, keep: Sequence[Sink] = ()) -> bool:
        """Stop accepting, drain what is queued (up to `timeout`, `RETIRE_TIMEOUT` by default),
        stop the thread, and close the sinks, except those in `keep`: the ones the next
        pipeline goes on using (a sink object given to ``configure()`` again, every sink at
        ``shutdown()``) — a closed sink may never work again (the otel sink's exporter stops
        for good).

        When the worker has not caught up by the deadline (a sink is stuck), it goes on
        delivering what it took, and closes the sinks itself once it stopped: a sink is never
        written to after ``close()`` (a closed JSON lines sink would reopen its file, and
        nobody close it again)."""
        self._closed = True
        drained = self.flush(self.RETIRE_TIMEOUT if timeout is None else timeout)
        kept = {id(sink) for sink in keep}
        self._to_close = [sink for sink in self.sinks if id(sink) not in kept]
        self._stop = True
        self._hurry.set()
        self._wake.set()
        _pipelines.discard(self)
        after = self._after
        if self._thread is None and after is not None and not after[1].is_set():
            # Never started, but the pipeline before it may still be inside a sink they
            # share: a worker of its own waits for that one, then closes and says stopped
            # (so the pipeline after this one waits for the whole line).
            self._start()
        t = self._thread
        if t is threading.current_thread():
            pass  # retired from a sink or analyzer this worker runs: `_run` closes, after it
        elif t is None or not t.is_alive():
            self._close_sinks()
            self._stopped.set()
        elif self._done >= self._submitted and (after is None or after[1].is_set()):
            t.join(timeout=1.0)  # idle: it only has to see `_stop`, and close
        return drained

    def _close_sinks(self) -> None:
        """Close the sinks `retire` gave up (once each: the worker and `retire` may race)."""
        to_close = self._to_close
        while to_close:
            try:
                sink = to_close.pop(0)
            except IndexError:  # the other one took the last
                return
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:
                    _reraise_if_stopping(exc)
                    STATE.counters["sink_errors"] += 1
                    _warn_once(f"sink {sink!r} close", exc)

    def _after_fork_in_child(self, seen: set[int]) -> None:
        """Start the child empty; each sink's `after_fork` once (`seen`: the ids of the sinks
        done already: pipelines share sinks)."""
        # The parent owns what was queued before the fork; the child starts empty.
        for item, analyzed in self._q:
            if not analyzed:
                _recorder.dispose(item)
        self._q.clear()
        self._thread = None
        self._idle = True
        self._after = None  # the parent's workers are not ours to wait for
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._progress = threading.Condition()
        self._start_lock = threading.Lock()
        self._submitted = 0
        self._done = 0
        self._pid = os.getpid()
        for sink in self.sinks:
            if id(sink) in seen:
                continue
            seen.add(id(sink))
            hook = getattr(sink, "after_fork", None)
            if hook is not None:
                try:
                    hook()
                except BaseException as exc:
                    _reraise_if_stopping(exc)
                    _guard.report("pipeline.after_fork", exc)


def _takes_timeout(sink: Any) -> bool:
    """Whether a sink's ``flush`` takes a ``timeout`` as its first argument, which can be
    passed by position (a keyword-only one is left alone: that flush is called without it)."""
    fl = getattr(sink, "flush", None)
    if fl is None:
        return False
    try:
        params = list(inspect.signature(fl).parameters.values())
    except (TypeError, ValueError):
        return False
    return (
        bool(params)
        and params[0].name == "timeout"
        and params[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    )


#: Pipelines not retired, for the fork hook (weakly).
_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_hooks_installed = False


def _install_process_hooks() -> None:
    """Flush at interpreter exit; restart cleanly in forked children (gunicorn --preload).
    Installed at configuration (a process may fork inside its first timeline, before any
    worker started) and, for pipelines built otherwise, when a worker starts."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(flush_at_shutdown)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork)
    # A multiprocessing child configuring stagetrace itself (forkserver, or fork from a parent
    # that had not): it ends with os._exit(), so flush in multiprocessing's exit finalizers.
    mp = sys.modules.get("multiprocessing")
    if mp is not None and "multiprocessing.util" in sys.modules:
        try:
            if mp.parent_process() is not None:
                _finalize_with_multiprocessing(None)
        except Exception as exc:
            _guard.report("pipeline.multiprocessing", exc)


def flush_at_shutdown() -> None:
    """Deliver what is queued, within one deadline (``otel_flush_timeout``) for the worker and
    the sinks together: at interpreter exit, and at an ASGI app's lifespan shutdown (uvicorn
    re-raises SIGTERM after its graceful shutdown, and the process dies without exit
    handlers)."""
    pipeline = STATE.pipeline
    if pipeline is not None:
        cfg = STATE.settings
        pipeline.flush(timeout=cfg.otel_flush_timeout if cfg is not None else 5.0)


def _after_fork() -> None:
    seen: set[int] = set()
    for pipeline in list(_pipelines):
        pipeline._after_fork_in_child(seen)
    STATE.in_flight.clear()
    # Only the forking thread lives on in the child. Forked during a request (multiprocessing
    # started from a view), its context still names the parent's open stage: the child would
    # add its stages to a copy of that timeline that never ends, and `begin` would decline
    # each of its own timelines as nested. The child starts outside any timeline.
    _recorder.restore(None)
    _flush_when_multiprocessing_child_ends()


_multiprocessing_hooked = False


def _flush_when_multiprocessing_child_ends() -> None:
    """A multiprocessing child (fork start method; Pool workers) ends with ``os._exit()``
    once its target returns: atexit never runs there, and what it queued would be lost. It
    runs multiprocessing's own exit finalizers first (``util._exit_function``): flush in one.

    Registered from this (``os.register_at_fork``) hook, a finalizer would be wiped: the
    child's ``Process._bootstrap`` clears the finalizer registry, and only then runs the
    after-fork callbacks — so register one of those, which registers the finalizer. Once per
    line of processes: the callback is inherited by later children (the flag as well)."""
    global _multiprocessing_hooked
    util = sys.modules.get("multiprocessing.util")
    if util is None or _multiprocessing_hooked:
        return
    _multiprocessing_hooked = True
    # The registry keeps its key object weakly: this module's function lives as long as it.
    util.register_after_fork(flush_at_shutdown, _finalize_with_multiprocessing)


def _finalize_with_multiprocessing(_: object) -> None:
    import multiprocessing.util

    # Ahead of the finalizers of multiprocessing's queues, manager proxies (10) and pools (15),
    # so that a sink writing to one still can; `flush_at_shutdown` keeps to the flush deadline.
    multiprocessing.util.Finalize(None, flush_at_shutdown, exitpriority=20)
