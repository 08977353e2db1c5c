"""After the request: freeze the records into a `Timeline`, analyze it, hand it to sinks.

`submit()` is the only part that runs on the request path, once per timeline: it freezes
synchronously only when a `capture()` is listening, and otherwise just appends the raw records
to a bounded queue. One background thread (`Worker`) freezes, analyzes and emits to the sinks.
When the queue is full the timeline is dropped and counted; the request never waits.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _config, _recorder, _safety
from ._model import Finding, KindSummary, Stage, StageError, Timeline

if TYPE_CHECKING:
    from .typing import Analyzer, Sink

logger = logging.getLogger("stagetrace")

MAX_ATTR_STRING = 8192


# --- freezing -------------------------------------------------------------------------------


def _clean_value(value: Any) -> Any:
    if value is None or type(value) in (int, bool):
        return value
    if isinstance(value, str):
        value = str(value)
        return value if len(value) <= MAX_ATTR_STRING else value[:MAX_ATTR_STRING] + "…"
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(float(value))
    if isinstance(value, (list, tuple)):
        return [_clean_value(v) for v in value[:100]]
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return _clean_value(text)


def clean_attrs(attrs: Mapping[Any, Any] | None) -> dict[str, Any]:
    """Attributes as JSON-safe values: scalars kept, long strings cut, anything else `str()`."""
    if not attrs:
        return {}
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        t = type(v)
        if t is str:
            if len(v) > MAX_ATTR_STRING:
                v = v[:MAX_ATTR_STRING] + "…"
        elif not (t is int or t is bool or v is None):
            v = _clean_value(v)
        out[k if type(k) is str else str(k)] = v
    return out


def _name(raw: Any) -> str:
    """A record's name: a string, or ``(function, argument)`` to compute it now, after the
    request (adapters use that to keep parsing off the request path)."""
    if type(raw) is str:
        return raw
    if type(raw) is tuple and len(raw) == 2 and callable(raw[0]):
        try:
            return str(raw[0](raw[1]))
        except Exception as exc:
            _safety.report("pipeline.name", exc)
            return "?"
    return str(raw)


def _attrs(raw: Any) -> Any:
    if type(raw) is tuple:
        try:
            return _recorder.attrs_of(raw)
        except Exception as exc:
            _safety.report("pipeline.attrs", exc)
            return {}
    return raw


def freeze(tl: _recorder.Live) -> Timeline:
    """Build the immutable `Timeline` from a finished live timeline's records."""
    R = _recorder
    records = tl[: tl.final or len(tl)]
    root = records[0]
    t0 = root[R.START]
    t_end = root[R.END] or R.now()
    n = len(records)
    index = {id(r): i for i, r in enumerate(records)}
    parents: list[int | None] = [None] * n
    durations = [0] * n
    child_ns = [0] * n
    unfinished = [False] * n
    for i, r in enumerate(records):
        end = r[R.END]
        if not end:
            end = t_end
            unfinished[i] = True
        d = end - r[R.START]
        durations[i] = d if d > 0 else 0
        p = r[R.PARENT]
        if p is not None and i:
            pi = index.get(id(p))
            parents[i] = pi
            if pi is not None:
                child_ns[pi] += durations[i]
    ovf_child = tl.ovf_child or {}
    by_kind: dict[str, list[int]] = {}
    stages: list[Stage] = []
    for i, r in enumerate(records):
        _, _, kind, name, start, _, raw_attrs, err, _, aux = r
        d = durations[i]
        own = d - child_ns[i] - ovf_child.get(id(r), 0) if ovf_child else d - child_ns[i]
        if own < 0:
            own = 0
        acc = by_kind.get(kind)
        if acc is None:
            acc = by_kind[kind] = [0, 0, 0]
        acc[0] += 1
        acc[1] += d
        acc[2] += own
        attrs = clean_attrs(raw_attrs if type(raw_attrs) is not tuple else _attrs(raw_attrs))
        if unfinished[i]:
            attrs["unfinished"] = True
        phases = short = None
        if kind == "middleware":
            if type(aux) is list and aux[0]:
                inner_end = aux[1] if aux[1] else start + d
                phases = {"in": max(0, aux[0] - start), "out": max(0, start + d - inner_end)}
                short = False
            else:
                phases = {"in": d, "out": 0}
                short = True
            if type(aux) is list and len(aux) > 2:
                short = bool(aux[2])
        stages.append(
            Stage(
                i,
                parents[i],
                kind,
                name if type(name) is str else _name(name),
                start - t0 if start > t0 else 0,
                d,
                own,
                attrs,
                StageError(err[0], err[1]) if err is not None else None,
                phases,
                short,
            )
        )
    for kind, (count, total, own) in (tl.ovf_kinds or {}).items():
        acc = by_kind.get(kind)
        if acc is None:
            acc = by_kind[kind] = [0, 0, 0]
        acc[0] += count
        acc[1] += total
        acc[2] += own
    cfg = tl.settings
    trace_id = f"{tl.trace_id:032x}"
    return Timeline(
        trace_id=trace_id,
        span_id=f"{tl.span_id:016x}",
        request_id=tl.request_id or trace_id,
        service=cfg.service,
        framework=tl.framework,
        protocol=tl.protocol,
        method=tl.method,
        path=tl.path,
        route=tl.route,
        status=tl.status,
        start_unix_nano=tl.wall0,
        duration_ns=max(0, t_end - t0),
        stages=tuple(stages),
        by_kind={k: KindSummary(*v) for k, v in by_kind.items()},
        findings=(),
        dropped_stages=tl.dropped,
    )


def analyze(timeline: Timeline, analyzers: Sequence[Analyzer]) -> Timeline:
    """Run each analyzer on the timeline and return it with their findings attached."""
    found: list[Finding] = []
    for analyzer in analyzers:
        try:
            result = analyzer(timeline)
            if result:
                found.extend(result)
        except Exception as exc:
            _config.count("analyzer_errors")
            _warn_once(f"analyzer {analyzer!r}", exc)
    return timeline.with_findings(found)


def process(tl: _recorder.Live) -> Timeline:
    """Freeze and analyze a finished live timeline, then release its records."""
    try:
        return analyze(freeze(tl), tl.settings.analyzers)
    finally:
        tl.dispose()


def submit(tl: _recorder.Live) -> None:
    """Called once when a timeline ends, on the request path: keep it short."""
    state = _config.state()
    state.counters["timelines"] += 1
    listeners = state.listeners
    worker = state.worker
    if listeners:
        try:
            timeline = process(tl)
        except Exception as exc:
            _safety.report("pipeline.freeze", exc)
            return
        for target in listeners:
            target.append(timeline)
        if worker is not None:
            worker.put(timeline)
    elif worker is None or not worker.put(tl):
        tl.dispose()  # nobody wants it


_warned: set[str] = set()


def _warn_once(what: str, exc: BaseException) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning(
            "stagetrace: %s failed (further failures only counted): %r", what, exc, exc_info=exc
        )


# --- the background worker ------------------------------------------------------------------


class Worker:
    """One daemon thread draining a bounded queue of timelines into the sinks.

    `put` never blocks and takes no lock in the common case: it appends to a deque and wakes
    the thread only when it is asleep. The thread starts on the first `put`, not before.
    """

    IDLE_WAIT = 1.0

    def __init__(self, sinks: Sequence[Sink], maxsize: int) -> None:
        self.sinks = tuple(sinks)
        self.maxsize = maxsize
        self._q: deque[Any] = deque()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._submitted = itertools.count(1)
        self._last_ticket = 0
        self._done = 0
        self._sleeping = False
        self._flushers = 0
        self._closed = False
        self._stop = False

    def depth(self) -> int:
        return len(self._q)

    def put(self, item: Any) -> bool:
        if self._closed:
            return False
        if len(self._q) >= self.maxsize:
            _config.count("timelines_dropped")
            return False
        self._last_ticket = next(self._submitted)
        self._q.append(item)
        if self._thread is None:
            self._start()
        elif self._sleeping:
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
        q = self._q
        while True:
            try:
                item = q.popleft()
            except IndexError:
                if self._stop:
                    return
                self._sleeping = True
                if q:
                    self._sleeping = False
                    continue
                self._wake.wait(self.IDLE_WAIT)
                self._wake.clear()
                self._sleeping = False
                continue
            self._handle(item)
            self._done += 1
            if self._flushers:
                with self._progress:
                    self._progress.notify_all()

    def _handle(self, item: Any) -> None:
        try:
            timeline = process(item) if isinstance(item, _recorder.Live) else item
        except Exception as exc:
            _safety.report("pipeline.freeze", exc)
            return
        for sink in self.sinks:
            try:
                sink.emit(timeline)
            except Exception as exc:
                _config.count("sink_errors")
                _warn_once(f"sink {sink!r}", exc)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until everything queued before this call reached the sinks, then flush them.

        Returns False when the deadline passed first (the rest stays queued)."""
        target = self._last_ticket
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is None or not self._thread.is_alive():
            # never started, or gone (forked child, interpreter shutdown): drain here.
            while self._q and (deadline is None or time.monotonic() < deadline):
                try:
                    item = self._q.popleft()
                except IndexError:
                    break
                self._handle(item)
                self._done += 1
        else:
            with self._progress:
                self._flushers += 1
                try:
                    while self._done < target:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            break
                        self._wake.set()
                        self._progress.wait(0.05 if remaining is None else min(remaining, 0.05))
                finally:
                    self._flushers -= 1
        for sink in self.sinks:
            fl = getattr(sink, "flush", None)
            if fl is not None:
                try:
                    fl()
                except Exception as exc:
                    _config.count("sink_errors")
                    _warn_once(f"sink {sink!r} flush", exc)
        return self._done >= target and not self._q

    def retire(self, timeout: float = 5.0) -> bool:
        """Stop accepting, drain what is queued (up to `timeout`), stop the thread, close sinks."""
        self._closed = True
        drained = self.flush(timeout)
        self._stop = True
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=1.0)
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    _config.count("sink_errors")
                    _warn_once(f"sink {sink!r} close", exc)
        return drained

    def _after_fork_in_child(self) -> None:
        # The parent owns what was queued before the fork; the child starts empty.
        self._q.clear()
        self._thread = None
        self._sleeping = False
        self._flushers = 0
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._start_lock = threading.Lock()
        self._submitted = itertools.count(1)
        self._last_ticket = 0
        self._done = 0
        for sink in self.sinks:
            hook = getattr(sink, "after_fork", None)
            if hook is not None:
                try:
                    hook()
                except Exception as exc:
                    _safety.report("pipeline.after_fork", exc)


_hooks_installed = False


def _install_process_hooks() -> None:
    """Flush at interpreter exit; restart cleanly in forked children (gunicorn --preload)."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork)


def _at_exit() -> None:
    worker = _config.state().worker
    if worker is not None:
        worker.flush(timeout=5.0)


def _after_fork() -> None:
    worker = _config.state().worker
    if worker is not None:
        worker._after_fork_in_child()


def flush(timeout: float | None = 5.0) -> bool:
    """Deliver every finished timeline to the sinks, waiting at most `timeout` seconds."""
    worker = _config.state().worker
    return True if worker is None else worker.flush(timeout)


def shutdown(timeout: float = 5.0) -> bool:
    """Flush, then stop the background worker and close the sinks. Recording continues; the
    next timeline starts a fresh worker with the same configuration."""
    state = _config.state()
    with state.lock:
        worker = state.worker
        if worker is None:
            return True
        state.worker = type(worker)(worker.sinks, worker.maxsize)
    return worker.retire(timeout)
