"""The recorder: what runs on the request path, and the only module that knows a record's layout.

A timeline in progress is a `Live` list of *records*; a record is a plain list (slots below). The
`ContextVar` holds the record of the innermost open stage, so each asyncio task, thread and
asgiref hop sees its own position in the tree and concurrent requests never share anything.
Entering a stage appends one record and sets the ContextVar; leaving it stores the end time and
sets the ContextVar back to the parent. No locks, no span objects, no string formatting.

When a timeline ends, `end` only stamps the end time, drops what a finished request no longer
needs (the last exception, the position to restore) and hands the live timeline to the callback
`connect` installed (each stage dropped its owner when it exited; one still open keeps it until
the seal). The pipeline's worker then *seals* it (`seal`: one pass over its records —
deferred names and attributes are computed, values that are not plain data are turned into
strings, the record→timeline cycle is broken — into one flat tuple) and `build`s a lazy
`Timeline`, whose stages are made from the flat tuple only when someone reads them (`_Rows`).

Everything here runs inside the host's request and must never raise into it: the hot paths are
written so that they cannot, the rest report to `internal_error` and carry on. Adapters use the
functions below and never index a record themselves.
"""

from __future__ import annotations

import functools
import random
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _errors, _guard, _sql
from ._model import KindSummary, Stage, StageError, Timeline, stage_span_id
from ._state import STATE

if TYPE_CHECKING:
    from ._options import Settings

now = time.perf_counter_ns
_wall = time.time_ns
_rand = random.random
_bits = random.getrandbits

# Record slots. OWNER holds the object a stage belongs to while it is open (see `enter_owned`)
# and the record's index once the timeline is sealed.
TL, PARENT, KIND, NAME, START, END, ATTRS, ERROR, OWNER, AUX = range(10)
# A middleware record has four more slots, its phase marks (AUX is `_MARKS`): when it called the
# next layer, when that returned, whether it answered without it (None: undecided), and whether
# its outbound phase starts only at the response (``split_at_response``). In the record rather
# than in a list of their own: one object fewer per middleware for the garbage collector to
# follow while the timeline waits for the worker.
M_IN, M_OUT, M_SHORT, M_SPLIT = range(10, 14)

#: An opaque handle on an open (or closed) stage.
Record = list[Any]
#: A finished timeline sealed by the worker (`seal`): plain values, ready to build from.
Sealed = tuple[Any, ...]

_current: ContextVar[Record | None] = ContextVar("stagetrace.current", default=None)

#: The innermost open record of this context (None outside a timeline). Adapters call it to
#: decide cheaply whether they are recording at all.
current = _current.get
#: Put back a position taken with `current()` (streaming bodies resume where they left off).
restore = _current.set

_get = _current.get
_set = _current.set

# AUX marker of a stage that arrived after the timeline's `max_stages`: it is timed but not
# kept, and folded into the per-kind summary when it ends.
_OVERFLOW = object()
# AUX marker of a middleware record (its marks follow in slots M_IN ... M_SPLIT).
_MARKS = object()

MAX_ERROR_MESSAGE = 1000
MAX_LIST_ITEMS = 100


class Live(list):  # type: ignore[type-arg]
    """A timeline being recorded. The list holds the records; slots hold the request facts."""

    __slots__ = (
        "__weakref__",
        "cap",
        "trace_id",
        "span_id",
        "parent_span_id",
        "parent_local",
        "trace_flags",
        "tracestate",
        "request_id",
        "framework",
        "protocol",
        "method",
        "path",
        "route",
        "status",
        "wall0",
        "ended",
        "final",
        "dropped",
        "ovf_kinds",
        "ovf_child",
        "last_exc",
        "settings",
        "extra",
        "queries",
        "cut_sql",
        "internal_errors",
        "sent",
        "deferred",
        "discarded",
    )

    cap: int
    trace_id: int
    span_id: int
    framework: str
    protocol: str
    method: str | None
    path: str | None
    wall0: int
    settings: Settings

    def __init__(self) -> None:
        super().__init__()
        self.parent_span_id: int | None = None
        #: The parent is a span of this process (an OpenTelemetry span current when the
        #: request began), not one from another service: the root is then not a server span.
        self.parent_local = False
        self.trace_flags = 1
        self.tracestate: str | None = None
        self.request_id: str | None = None
        self.route: str | None = None
        self.status: int | None = None
        self.ended = False
        self.final = 0
        self.dropped = 0
        self.ovf_kinds: dict[str, list[int]] | None = None
        self.ovf_child: dict[int, int] | None = None
        self.last_exc: tuple[BaseException, tuple[str, str]] | None = None
        self.extra: dict[str, Any] | None = None
        self.queries: dict[Any, list[Any]] | None = None
        #: The statements whose recorded text was cut (`note_cut`), by length and hash: the
        #: beginning kept for the statement hash (computed when the timeline is sealed),
        #: whether it is only the beginning, and the attribute dicts of their stages.
        self.cut_sql: dict[tuple[int, int], tuple[str, bool, list[dict[str, Any]]]] | None = None
        self.internal_errors = 0
        self.sent = 0
        #: (function, plain argument) computing more root attributes when the timeline is
        #: built, off the request path (the gateway's request attributes).
        self.deferred: tuple[Callable[[Any], dict[str, Any]], Any] | None = None
        #: Set by `discard`: the timeline is dropped when it ends instead of delivered.
        self.discarded = False

    # list subclasses compare by content; a timeline is only ever equal to itself.
    __eq__ = object.__eq__
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Live timeline {self.trace_id:032x} {len(self)} records>"


class _Sealed(list):  # type: ignore[type-arg]
    """Stands in for the timeline of every record once its timeline ended: ``cap`` 0 sends a
    late `enter` (a task that outlived its request) to the overflow path, which records
    nothing, with no extra test on the hot path."""

    __slots__ = ()
    cap = 0
    ended = True
    last_exc = None


_SEALED = _Sealed()


def _ignore(tl: Live) -> None:
    pass


_deliver: Callable[[Live], None] = _ignore


def connect(deliver: Callable[[Live], None] | None) -> None:
    """Hand every finished live timeline to `deliver` (the pipeline's `submit`, which queues it
    for the worker to `seal` and `build`); None: drop them."""
    global _deliver
    _deliver = deliver or _ignore


def internal_error(site: str, exc: BaseException | None = None) -> None:
    """Report an internal error at `site` (see `_guard.report`) and mark the live timeline of
    this context, whose root then carries ``stagetrace.internal_errors``."""
    _guard.report(site, exc)
    try:
        cur = _get()
        if cur is not None:
            tl = cur[TL]
            if not tl.ended:
                tl.internal_errors += 1
    except Exception:  # pragma: no cover - a corrupted context var is not worth a crash
        pass


def describe(tl: Any, exc: BaseException) -> tuple[str, str]:
    """(qualified type, message) of an exception, computed once per exception per timeline.
    The message is what `_errors.message` keeps of it: a database error's keeps no values it
    quotes, a validation error's no input it refused."""
    last = tl.last_exc
    if last is not None and last[0] is exc:
        return last[1]  # type: ignore[no-any-return]
    t = type(exc)
    mod = t.__module__
    name = t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"
    try:
        msg = _errors.message(exc, getattr(tl, "settings", None))
    except Exception:
        msg = "<unprintable>"
    if len(msg) > MAX_ERROR_MESSAGE:
        msg = msg[:MAX_ERROR_MESSAGE] + "…"
    out = (_plain_str(name), _plain_str(msg))
    if type(tl) is Live:
        tl.last_exc = (exc, out)
    return out


def discard() -> bool:
    """Leave the timeline of this context out: it keeps running (so stages opened in it close
    normally) but records nothing more and is dropped when it ends. True if there was one."""
    cur = _get()
    if cur is None:
        return False
    tl = cur[TL]
    if tl.ended:
        return False
    tl.discarded = True
    tl.cap = 0
    return True


def discarded_here() -> Live | None:
    """The timeline this context is positioned in if `discard` left it out — ended or not:
    work the request left running (a task holding a copy of its context) still belongs to
    it. None otherwise."""
    cur = _get()
    if cur is None:
        return None
    tl = cur[TL]
    return tl if getattr(tl, "discarded", False) else None


def forget_exception(rec: Record | None) -> None:
    """Drop the exception `describe` cached on `rec`'s timeline. A timeline can stay in flight
    after the application returned (until the server is done with the response); an exception
    the application handled holds its traceback, whose frames can hold the very response being
    served — which would keep a response dropped without ``close()`` alive for ever."""
    tl = timeline_of(rec)
    if tl is not None:
        tl.last_exc = None


# --- timelines ------------------------------------------------------------------------------


def sampled(cfg: Settings, path: str | None) -> bool:
    """Whether a request for `path` is recorded: enabled, not excluded, sampled in."""
    if not cfg.enabled:
        return False
    if path is not None and cfg.exclude_re is not None and cfg.exclude_re.search(path):
        STATE.counters["timelines_excluded"] += 1
        return False
    if cfg.sample_rate < 1.0 and _rand() >= cfg.sample_rate:
        STATE.counters["timelines_sampled_out"] += 1
        return False
    return True


def begin(
    cfg: Settings,
    name: str,
    *,
    kind: str = "gateway",
    framework: str = "custom",
    protocol: str = "http",
    method: str | None = None,
    path: str | None = None,
    attrs: dict[str, Any] | None = None,
    request_id: str | None = None,
    trace_id: int | None = None,
    parent_span_id: int | None = None,
    trace_flags: int = 1,
    tracestate: str | None = None,
    owner: object = None,
    sample: bool = True,
) -> Record | None:
    """Start a timeline and its root stage in the current context; None when not recording.

    Not recording means: disabled, sampled out, an excluded path, or already inside a live
    timeline (an inner adapter then adds its stages to the outer timeline instead of starting a
    second one, so wrapping an app twice never doubles anything). Everything is prepared before
    the context variable is set: if anything fails, the context is left as it was. With
    ``sample=False`` the caller already decided (`sampled`) that this one is recorded.
    """
    try:
        cur = _get()
        if cur is not None and not cur[TL].ended:
            return None
        if sample and not sampled(cfg, path):
            return None
        tl = Live()
        tl.cap = cfg.max_stages
        tl.settings = cfg
        tl.trace_id = trace_id or _bits(128) or 1  # new_trace_id(), inlined: once per request
        tl.span_id = _bits(64) or 1
        tl.parent_span_id = parent_span_id
        tl.trace_flags = trace_flags
        tl.tracestate = tracestate
        tl.request_id = request_id
        tl.framework = framework
        tl.protocol = protocol
        tl.method = method
        tl.path = path
        tl.wall0 = _wall()
        # AUX of a root: the position to restore when it ends.
        root = [tl, None, kind, name, now(), 0, attrs, None, owner, cur]
        tl.append(root)
    except Exception as exc:
        _guard.report("recorder.begin", exc)
        return None
    _set(root)
    return root


def new_trace_id() -> int:
    """A random, valid (non-zero) 128-bit trace id."""
    return _bits(128) or 1


def end(root: Record | None, exc: BaseException | None = None) -> None:
    """End the timeline whose root record is `root` and hand it to the pipeline. If the root is
    this context's current position, the position from before `begin` is restored.

    Only what must happen now happens here, on the request's thread: the end time, the
    context, dropping the references a finished request no longer needs (the last exception
    and its traceback, the outer position). Sealing the records into plain data (`seal`) is the
    worker's job."""
    if root is None:
        return
    t = now()
    try:
        tl = root[TL]
        if tl.ended:
            return
        root[END] = t
        tl.ended = True
        tl.final = len(tl)
        tl.cap = 0  # a late enter() in a task that outlived the request records nothing
        _leave_timeline(root)
        if exc is not None:
            root[ERROR] = describe(tl, exc)
        tl.last_exc = None
        root[AUX] = None
        if _deliver is _ignore or tl.discarded:  # nobody receives it: drop it
            del tl[:]
            return
    except Exception as e:
        _guard.report("recorder.end", e)
        return
    try:
        _deliver(tl)
    except Exception as e:
        _guard.report("pipeline.submit", e)


def _leave_timeline(root: Record) -> None:
    """If this context is positioned inside `root`'s timeline, put back the position from
    before `begin`."""
    cur = _get()
    if cur is not None and cur[TL] is root[TL]:
        prev = root[AUX]
        _set(prev if prev is not None and not prev[TL].ended else None)


def abandon_job(owner: object) -> None:
    """After a failure ending what `begin_owned_job(owner)` started: leave its timeline's
    context anyway, so the thread or task is not left inside it."""
    rec = find_open(owner)
    while rec is not None and rec[PARENT] is not None:
        rec = rec[PARENT]
    if rec is not None and rec[OWNER] is owner:
        _leave_timeline(rec)


def live() -> Live | None:
    """The live timeline of the current context, if one is being recorded."""
    cur = _get()
    if cur is None:
        return None
    tl = cur[TL]
    return None if tl.ended else tl


def timeline_of(rec: Record | None) -> Live | None:
    """The live timeline a record belongs to (None once it ended)."""
    if rec is None:
        return None
    tl = rec[TL]
    return None if tl.ended else tl


def root_of(tl: Live) -> Record:
    """The root record of a live timeline."""
    return tl[0]  # type: ignore[no-any-return]


def set_route(route: str | None) -> None:
    """Set the current timeline's route template (the URL pattern that matched)."""
    cur = _get()
    if cur is not None:
        cur[TL].route = route


def set_status(status: int | None) -> None:
    """Set the current timeline's status (HTTP status, websocket close code)."""
    cur = _get()
    if cur is not None:
        cur[TL].status = status


def parent_of(rec: Record | None) -> Record | None:
    """The record of the stage enclosing `rec` (None for a root)."""
    return None if rec is None else rec[PARENT]


def mark_sent(root: Record | None) -> None:
    """The response is complete (its last byte handed to the server): remember when, as the
    gateway's ``http.response.sent_ns``. The first mark counts."""
    if root is None:
        return
    tl = root[TL]
    if not tl.ended and not tl.sent:
        tl.sent = now() - root[START] or 1


def response_sent(rec: Record | None = None) -> bool:
    """Whether the response of the timeline of `rec` (default: the current one) was sent."""
    rec = _get() if rec is None else rec
    if rec is None:
        return False
    tl = rec[TL]
    return bool(not tl.ended and tl.sent)


def start_of(rec: Record) -> int:
    """When a stage started (``perf_counter_ns``)."""
    return rec[START]  # type: ignore[no-any-return]


def root_attrs(root: Record) -> dict[str, Any]:
    """The root stage's own attribute dict, which its adapter adds to in place."""
    attrs = root[ATTRS]
    if type(attrs) is not dict:
        attrs = root[ATTRS] = _attrs_now(attrs)
    return attrs  # type: ignore[no-any-return]


# --- stages: the hot path -------------------------------------------------------------------


def enter(kind: str, name: Any, attrs: Any = None) -> Record | None:
    """Open a stage under the current one; returns its record (or None when not recording).

    `kind` must be one of `KINDS`; adapters pass constants, so it is not checked here. `name`
    is a string, or ``(function, argument)`` to build the name when the timeline is sealed;
    `attrs` a dict (never mutated by stagetrace, so constants may be shared) or
    ``(function, argument)``. Deferred forms are computed when the worker seals the timeline,
    so they must hold plain data only (never the application's objects: a queued timeline must
    not keep them alive).
    """
    cur = _get()
    if cur is None:
        return None
    tl = cur[0]
    if len(tl) < tl.cap:
        rec = [tl, cur, kind, name, now(), 0, attrs, None, None, None]
        tl.append(rec)
        _set(rec)
        return rec
    return _enter_overflow(cur, kind, None)


def leave(site: str, rec: Record | None, exc: BaseException | None = None) -> None:
    """Close a stage opened by `enter`; `exc` is the exception it ended with, if any. A stage
    closed earlier (see `detach_to_root`) keeps its first end.

    Guarded in its own frame, for adapters (a helper guarding a call to `exit` cost a Python
    frame per stage, ~1,000 instructions, on every stage of every request): should closing
    fail, the failure is reported at `site` and the context still goes back to the parent.

    The context goes back to the parent only if it is positioned in `rec`'s timeline: a
    generator holding a stage open across ``yield`` may be closed anywhere — by the garbage
    collector in the middle of another request, say — and must not move that request's
    position (it would lose the rest of its stages) or leave a finished request's stage
    current in a context that had none."""
    if rec is None:
        return
    try:
        t = now()
        cur = _get()
        if cur is rec or (cur is not None and cur[0] is rec[0]):
            _set(rec[1])
        if not rec[5]:
            rec[5] = t
        rec[8] = None  # the owner (an application object) is needed only while the stage is open
        if exc is not None:
            _exit_error(rec, exc)
        if rec[9] is _OVERFLOW:
            _fold_overflow(rec)
    except Exception as e:
        internal_error(site, e)
        try:
            if _get() is rec:
                _set(rec[PARENT])
        except Exception:  # pragma: no cover - nothing more can be done
            pass


#: `leave` reporting failures as the recorder's own: ``exit(rec, exc=None)``.
exit = functools.partial(leave, "recorder.exit")


def close(rec: Record | None, exc: BaseException | None = None) -> None:
    """Close a record from outside its context (a response closed by the server, say): like
    `exit`, but leaves the caller's current stage alone. Closing twice keeps the first end."""
    if rec is None or rec[END]:
        return
    rec[END] = now()
    rec[OWNER] = None
    if exc is not None:
        _exit_error(rec, exc)
    if rec[AUX] is _OVERFLOW:
        _fold_overflow(rec)


def finish(rec: Record | None, exc: BaseException | None = None) -> None:
    """Close `rec` whether or not it is this context's current stage: `exit` when it is, else
    `close` (inner stages were left open, or it was opened in another task)."""
    if rec is None:
        return
    if _get() is rec:
        exit(rec, exc)
    else:
        close(rec, exc)


def is_closed(rec: Record | None) -> bool:
    """Whether a stage has ended (None counts as closed)."""
    return rec is None or bool(rec[END])


def enter_middleware(
    name: str, attrs: Any = None, split_at_response: bool = False
) -> Record | None:
    """Open a `middleware` stage whose in/out phases are split by `inner_begin`/`inner_end`.
    With `split_at_response`, the outbound phase starts only at `inner_end(rec, True)` (for
    middleware such as ``BaseHTTPMiddleware`` that get the response before the inner layer is
    done)."""
    cur = _get()
    if cur is None:
        return None
    tl = cur[0]
    if len(tl) < tl.cap:
        rec = [
            tl,
            cur,
            "middleware",
            name,
            now(),
            0,
            attrs,
            None,
            None,
            _MARKS,
            0,
            0,
            None,
            split_at_response,
        ]
        tl.append(rec)
        _set(rec)
        return rec
    return _enter_overflow(cur, "middleware", None)


def nearest_middleware(limit: int = 16) -> Record | None:
    """The innermost open middleware stage around the current position: the layer whose call
    to the next one is happening now."""
    rec = _get()
    for _ in range(limit):
        if rec is None:
            return None
        if rec[KIND] == "middleware" and not rec[END]:
            return rec if rec[AUX] is _MARKS else None
        if rec[PARENT] is None:
            return None
        rec = rec[PARENT]
    return None


def calls_inner(limit: int = 16) -> Record | None:
    """The innermost open middleware stage around the current position is calling the next
    layer now: mark the end of its inbound phase (the first time) and return it, for
    `inner_end` — `nearest_middleware` and `inner_begin` in one call, which ASGI layers make
    once each per request."""
    rec = _get()
    for _ in range(limit):
        if rec is None:
            return None
        if rec[KIND] == "middleware" and not rec[END]:
            if rec[AUX] is not _MARKS:
                return None
            if not rec[M_IN]:
                rec[M_IN] = now()
            return rec
        if rec[PARENT] is None:
            return None
        rec = rec[PARENT]
    return None


def open_middleware(name: str, limit: int = 8) -> Record | None:
    """The open middleware record named `name` (the same string object the stage was entered
    with): the current record, or a near ancestor when the middleware opened stages of its own
    around calling the next layer."""
    rec = _get()
    for _ in range(limit):
        if rec is None:
            return None
        if rec[NAME] is name and rec[KIND] == "middleware":
            return rec
        rec = rec[PARENT]
    return None


def calls_next(name: str) -> Record | None:
    """The middleware named `name` (entered with this very string) is calling the next layer
    now: mark the end of its inbound phase and return its record (for `inner_end`), in one
    call — this runs once per middleware per request."""
    rec = _get()
    for _ in range(8):
        if rec is None:
            return None
        if rec[3] is name and rec[2] == "middleware":
            if rec[9] is _MARKS and not rec[10]:
                rec[10] = now()
            return rec
        rec = rec[1]
    return None


#: What `enter_layer` returns outside a timeline.
_NO_LAYER: tuple[None, None] = (None, None)


def enter_layer(name: str, split_at_response: bool = False) -> tuple[Record | None, Record | None]:
    """An ASGI middleware layer (an object wrapping the next one) is called: the layer around
    it ends its inbound phase (`calls_inner`) and this layer's stage opens (`enter_middleware`),
    in one call — each layer makes it once per request. Returns ``(its record, the outer
    layer's record)`` for `leave_layer`; ``(None, None)`` outside a timeline."""
    cur = _get()
    if cur is None:
        return _NO_LAYER
    t = now()
    # calls_inner, inlined for its usual case: the layer around this one is the current stage
    if cur[2] == "middleware" and not cur[5]:
        outer = cur if cur[9] is _MARKS else None
        if outer is not None and not outer[10]:
            outer[10] = t
    else:
        outer = calls_inner()
    tl = cur[0]
    if len(tl) < tl.cap:
        # as `enter_middleware` makes it (the marks in slots M_IN ... M_SPLIT)
        rec = [
            tl, cur, "middleware", name, t, 0, None, None, None,
            _MARKS, 0, 0, None, split_at_response,
        ]  # fmt: skip
        tl.append(rec)
        _set(rec)
        return rec, outer
    return _enter_overflow(cur, "middleware", None), outer


def leave_layer(
    site: str, rec: Record | None, outer: Record | None, exc: BaseException | None = None
) -> None:
    """The ASGI middleware layer `enter_layer` opened returns: its stage closes (`leave`, with
    `exc` if it raised) and the outbound phase of the layer around it starts (`inner_end`), in
    one guarded call; failures are reported at `site`."""
    t = 0
    if rec is not None:
        try:  # leave, inlined
            t = now()
            cur = _get()
            if cur is rec or (cur is not None and cur[0] is rec[0]):
                parent = rec[1]
                if parent[5]:  # ended when the response was sent (`detach_to_root`)
                    parent = _open_ancestor(parent)
                _set(parent)
            if not rec[5]:
                rec[5] = t
            rec[8] = None
            if exc is not None:
                _exit_error(rec, exc)
            if rec[9] is _OVERFLOW:
                _fold_overflow(rec)
        except Exception as e:
            internal_error(site, e)
            try:
                if _get() is rec:
                    _set(rec[PARENT])
            except Exception:  # pragma: no cover - nothing more can be done
                pass
    if outer is not None:
        try:  # inner_end, inlined
            if outer[9] is _MARKS and not outer[5] and not outer[13]:
                outer[11] = t or now()
        except Exception as e:
            internal_error(site, e)


def _open_ancestor(rec: Record) -> Record:
    """The innermost stage still open from `rec` up (the root at the latest): where work goes
    that a layer does after returning from a next layer whose stages ended when the response
    was sent, before the background tasks or ``yield`` dependency teardowns that followed —
    work done after those is no part of a stage that ended before them."""
    while rec[END] and rec[PARENT] is not None:
        rec = rec[PARENT]
    return rec


def inner_begin(rec: Record | None) -> None:
    """The middleware `rec` is calling the next layer now: its inbound phase ends."""
    if rec is not None and rec[9] is _MARKS and not rec[10]:
        rec[10] = now()


def inner_end(rec: Record | None, at_response: bool = False) -> None:
    """The next layer returned to the middleware `rec`: its outbound phase starts. For a stage
    entered with ``split_at_response``, only the call with `at_response` counts."""
    if rec is not None and rec[9] is _MARKS and not rec[5] and (at_response or not rec[13]):
        rec[11] = now()


def run_link(
    name: str,
    call: Callable[[Any], Any],
    arg: Any,
    site: str,
    convert: Callable[[Any, Exception], Any] | None,
    caller: str | None = None,
) -> Any:
    """One link of a synchronous middleware chain whose links turn exceptions into results
    (Django's ``convert_exception_to_response``), in one frame: the middleware stage named
    `caller` (entered with this very string), which calls this link, ends its inbound phase;
    ``call(arg)`` runs in a `middleware` stage named `name`; an `Exception` it raises is
    recorded on the stage and turned into the result by ``convert(arg, exc)``; then the
    caller's outbound phase starts — so the conversion's time is in neither of the caller's
    own phases. With `caller` None (the chain's first link, or one whose caller marks its
    split by other means) no other stage is marked. The call's other exceptions, and the
    conversion's, pass through untouched; stagetrace's own are reported at `site`. With
    `convert` None, every exception of the call passes through (`run_layer`)."""
    rec = outer = None
    try:
        cur = _get()
        if cur is not None:
            t = now()
            if caller is not None:
                # calls_next, inlined for its usual case: the caller's stage is the current one
                if cur[3] is caller and cur[9] is _MARKS:
                    outer = cur
                    if not cur[10]:
                        cur[10] = t
                else:  # it opened stages of its own around calling this link
                    outer = calls_next(caller)
                    if outer is not None and outer[9] is not _MARKS:
                        outer = None
            tl = cur[0]
            if len(tl) < tl.cap:
                # as `enter_middleware` makes it (the marks in slots M_IN ... M_SPLIT)
                rec = [
                    tl, cur, "middleware", name, t, 0, None, None, None,
                    _MARKS, 0, 0, None, False,
                ]  # fmt: skip
                tl.append(rec)
                _set(rec)
            else:
                rec = _enter_overflow(cur, "middleware", None)
    except Exception as exc:
        internal_error(site, exc)
    try:
        result = call(arg)
    except Exception as exc:
        leave(site, rec, exc)
        try:
            if convert is None:
                raise
            result = convert(arg, exc)
        except BaseException:
            _outbound(outer, site)
            raise
    except BaseException as exc:
        leave(site, rec, exc)
        _outbound(outer, site)
        raise
    else:
        if rec is not None:
            try:  # leave, inlined as in `run_layer`
                t = now()
                _set(rec[1])
                if not rec[5]:
                    rec[5] = t
                if rec[9] is _OVERFLOW:
                    _fold_overflow(rec)
            except Exception as exc:
                internal_error(site, exc)
                try:
                    _set(rec[1])
                except Exception:  # pragma: no cover - nothing more can be done
                    pass
    if outer is not None:
        try:  # inner_end, inlined
            if outer[9] is _MARKS and not outer[5] and not outer[13]:
                outer[11] = now()
        except Exception as exc:
            internal_error(site, exc)
    return result


def _outbound(outer: Record | None, site: str) -> None:
    """`inner_end(outer)`, guarded: the next layer is done with, the outer one goes on."""
    if outer is not None:
        try:
            inner_end(outer)
        except Exception as exc:
            internal_error(site, exc)


def run_layer(name: str, call: Callable[[Any], Any], arg: Any, site: str) -> Any:
    """``call(arg)``, a synchronous middleware layer, inside a `middleware` stage named `name`:
    `enter_middleware`, the call and `leave` (`run_link` without a conversion or a caller; call
    that directly where the frame counts). The layer's handler for the next one comes from
    `next_layer`. The call's exceptions pass through untouched; stagetrace's own are reported
    at `site`."""
    return run_link(name, call, arg, site, None)


def next_layer(
    call: Callable[[Any], Any], name: str, site: str, is_async: bool = False
) -> Callable[[Any], Any]:
    """The handler through which the middleware stage named `name` (entered with this very
    string) calls the next layer, ``call``: marks the end of the stage's inbound phase when
    called and the start of its outbound phase when ``call`` returns — `calls_next`, the call
    and `inner_end` in one frame. Outside a timeline it only calls through. With `is_async`,
    ``call`` is a coroutine function and so is the handler. Its parameter is named
    ``request``, as Django's own handlers name it: middleware may pass it by keyword."""
    if is_async:

        async def ahandler(request: Any) -> Any:
            if _get() is None:
                return await call(request)
            try:
                rec: Record | None = calls_next(name)
                if rec is not None and rec[9] is not _MARKS:
                    rec = None
            except Exception as exc:
                internal_error(site, exc)
                rec = None
            try:
                return await call(request)
            finally:
                if rec is not None:
                    try:
                        if not rec[5] and not rec[13]:
                            rec[11] = now()
                    except Exception as exc:
                        internal_error(site, exc)

        return ahandler

    def handler(request: Any) -> Any:
        rec = _get()
        if rec is None:
            return call(request)
        try:  # calls_next, inlined for its usual case: the middleware's stage is the current one
            if rec[3] is not name or rec[9] is not _MARKS:
                rec = calls_next(name)
                if rec is not None and rec[9] is not _MARKS:
                    rec = None
            elif not rec[10]:
                rec[10] = now()
        except Exception as exc:
            internal_error(site, exc)
            rec = None
        try:
            return call(request)
        finally:
            if rec is not None:
                try:  # inner_end, inlined
                    if not rec[5] and not rec[13]:
                        rec[11] = now()
                except Exception as exc:
                    internal_error(site, exc)

    return handler


def set_short_circuit(rec: Record | None, short: bool) -> None:
    """Say explicitly whether a middleware stage answered without the next layer (hooks such
    as ``process_view`` have no inner call to observe)."""
    if rec is not None and rec[AUX] is _MARKS:
        rec[M_SHORT] = short


def set_error(rec: Record | None, exc: BaseException) -> None:
    """Record `exc` on a stage that stays open (an exception a framework handler will turn
    into a response, say); the first error recorded on a stage is kept."""
    if rec is not None and rec[AUX] is not _OVERFLOW and rec[ERROR] is None:
        _exit_error(rec, exc)


def current_error_is_unset() -> bool:
    """Whether the current stage has no error recorded yet."""
    cur = _get()
    return cur is not None and cur[ERROR] is None


def set_error_here(exc: BaseException) -> None:
    """Record `exc` on the current stage, unless it already has an error."""
    set_error(_get(), exc)


def _exit_error(rec: Record, exc: BaseException) -> None:
    try:
        rec[ERROR] = describe(rec[TL], exc)
    except Exception as e:
        internal_error("recorder.exit_error", e)


def _enter_overflow(cur: Record, kind: str, owner: object) -> Record | None:
    """Past `max_stages` (or after the timeline ended): time the stage so the summary stays
    exact, but do not keep it."""
    try:
        tl = cur[TL]
        if tl.ended:
            return None
        tl.dropped += 1
        rec = [tl, cur, kind, None, now(), 0, None, None, owner, _OVERFLOW]
        _set(rec)
        return rec
    except Exception as exc:
        internal_error("recorder.overflow", exc)
        return None


def _fold_overflow(rec: Record) -> None:
    try:
        tl = rec[TL]
        if tl.ended:
            return
        duration = rec[END] - rec[START]
        if tl.ovf_child is None:
            tl.ovf_child = {}
        if tl.ovf_kinds is None:
            tl.ovf_kinds = {}
        own_children = tl.ovf_child.pop(id(rec), 0)
        acc = tl.ovf_kinds.get(rec[KIND])
        if acc is None:
            acc = tl.ovf_kinds[rec[KIND]] = [0, 0, 0]
        acc[0] += 1
        acc[1] += duration
        acc[2] += max(0, duration - own_children)
        parent = rec[PARENT]
        if parent is not None:
            tl.ovf_child[id(parent)] = tl.ovf_child.get(id(parent), 0) + duration
    except Exception as exc:
        internal_error("recorder.overflow", exc)


# --- stages that belong to an object ---------------------------------------------------------


def enter_owned(
    kind: str, name: Any, owner: object, attrs: Any = None, once: bool = False
) -> Record | None:
    """Like `enter`, but the record remembers `owner` while it is open, so `find_open` can
    close it later from code that holds no reference to the record (``__exit__`` of a shared
    object, say), and so a re-entrant call on the same owner can be recognised
    (`is_open_for`). With `once`, a call made while the current stage is already a `kind`
    stage of `owner` (a method calling its own ``super()`` implementation) enters nothing and
    returns None: the outer call is the stage."""
    cur = _get()
    if cur is None:
        return None
    if once and cur[8] is owner and cur[2] == kind:
        return None
    tl = cur[0]
    if len(tl) < tl.cap:
        rec = [tl, cur, kind, name, now(), 0, attrs, None, owner, None]
        tl.append(rec)
        _set(rec)
        return rec
    return _enter_overflow(cur, kind, owner)


def is_open_for(owner: object, kind: str) -> bool:
    """True when the innermost open stage is a `kind` stage owned by `owner` (a method calling
    its own super() implementation: record the outer call only)."""
    cur = _get()
    return cur is not None and cur[OWNER] is owner and cur[KIND] == kind


def here_is(kinds: frozenset[str], owner: object) -> bool:
    """Whether the innermost open stage (one past `max_stages` too) is of one of `kinds` or
    owned by `owner`: one look at the current stage, for a driver asking whether its call is
    someone else's stage already (`stagetrace.dbapi`)."""
    cur = _get()
    return cur is not None and not cur[END] and (cur[KIND] in kinds or cur[OWNER] is owner)


MAX_UNWIND = 64


def find_open(owner: object) -> Record | None:
    """The innermost open record owned by `owner`, looking up from the current stage."""
    rec = _get()
    for _ in range(MAX_UNWIND):
        if rec is None:
            return None
        if rec[OWNER] is owner and not rec[END]:
            return rec
        rec = rec[PARENT]
    return None


def exit_owned(owner: object, exc: BaseException | None = None) -> bool:
    """Close the innermost open stage owned by `owner` (the current one, usually); the context
    goes back to that stage's parent. False when there is none (not recording, or it was
    already closed)."""
    rec = _get()
    if rec is None:
        return False
    if rec[8] is not owner:
        rec = find_open(owner)
        if rec is None:
            return False
    t = now()
    _set(rec[1])
    if not rec[5]:
        rec[5] = t
    rec[8] = None
    if exc is not None:
        _exit_error(rec, exc)
    if rec[9] is _OVERFLOW:
        _fold_overflow(rec)
    return True


def begin_owned_job(cfg: Settings, name: str, owner: object, attrs: dict[str, Any] | None) -> bool:
    """Start a ``job`` timeline owned by `owner`, or — inside a live timeline — a ``task``
    stage of it. Returns whether anything is being recorded. See `end_owned_job`."""
    root = begin(
        cfg, name, kind="task", framework="python", protocol="job", attrs=attrs, owner=owner
    )
    if root is not None:
        return True
    return enter_owned("task", name, owner, attrs) is not None


def end_owned_job(owner: object, exc: BaseException | None = None) -> None:
    """End what `begin_owned_job(owner)` started in this context: the timeline when its root is
    the innermost stage `owner` has open, else the task stage."""
    rec = find_open(owner)
    if rec is None:
        return
    if rec[PARENT] is None:
        end(rec, exc)
    else:
        finish(rec, exc)


def current_span() -> tuple[int, int, int] | None:
    """(trace id, span id, trace flags) of the innermost open stage of this context — what
    other instrumentation should see as the current span — or None outside a timeline and in
    a discarded one (none of its spans will exist). A stage past `max_stages` is not exported:
    its nearest kept ancestor stands in."""
    rec = _get()
    if rec is None:
        return None
    tl = rec[TL]
    if tl.ended or tl.discarded:
        return None
    while rec is not None and rec[AUX] is _OVERFLOW:
        rec = rec[PARENT]
    if rec is None:
        return None
    i = _index_of(tl, rec)
    if i is None:
        return tl.trace_id, tl.span_id, tl.trace_flags
    return tl.trace_id, stage_span_id(tl.span_id, i), tl.trace_flags


def _index_of(tl: Live, rec: Record) -> int | None:
    """The position of `rec` in `tl`: records are appended in the order they start, so a
    binary search by start time finds it in O(log n) (a record entered with an explicit
    earlier start, `enter_at`, breaks the order: then a scan from the end)."""
    start = rec[START]
    n = len(tl)
    i = bisect_left(tl, start, key=_start_of)
    while i < n:
        r = tl[i]
        if r is rec:
            return i
        if r[START] != start:
            break
        i += 1
    for i in range(n - 1, -1, -1):
        if tl[i] is rec:
            return i
    return None


def _start_of(rec: Record) -> int:
    return rec[START]  # type: ignore[no-any-return]


def current_kind() -> str | None:
    """The kind of the innermost open stage of this context that the timeline keeps (None
    outside a timeline, in a discarded one, and for a stage past `max_stages`, which is
    counted but not kept)."""
    rec = _get()
    if rec is None:
        return None
    tl = rec[TL]
    if tl.ended or tl.discarded or rec[AUX] is _OVERFLOW:
        return None
    return rec[KIND]  # type: ignore[no-any-return]


def kind_totals(root: Record | None) -> tuple[dict[str, list[int]], int] | None:
    """Per-kind ``[count, self time ns]`` of the stages of `root`'s timeline so far (stages
    still open count up to now; a stage's self time is its duration minus its children's,
    never below zero), and the time since the timeline began; None once it ended. For the
    ``Server-Timing`` header, which goes out with the response headers."""
    if root is None:
        return None
    tl = root[TL]
    if tl.ended:
        return None
    t = now()
    n = len(tl)
    durations = [0] * n
    index: dict[int, int] = {}
    for i in range(n):
        rec = tl[i]
        index[id(rec)] = i
        durations[i] = (rec[END] or t) - rec[START]
    children = [0] * n
    ovf = tl.ovf_child or {}
    for i in range(1, n):
        parent = tl[i][PARENT]
        j = index.get(id(parent)) if parent is not None else None
        if j is not None:
            children[j] += durations[i]
    totals: dict[str, list[int]] = {}
    for i in range(n):
        rec = tl[i]
        own = durations[i] - children[i] - ovf.get(id(rec), 0)
        acc = totals.get(rec[KIND])
        if acc is None:
            acc = totals[rec[KIND]] = [0, 0]
        acc[0] += 1
        acc[1] += own if own > 0 else 0
    for kind, (count, _total, self_ns) in (tl.ovf_kinds or {}).items():
        acc = totals.setdefault(kind, [0, 0])
        acc[0] += count
        acc[1] += self_ns
    return totals, t - root[START]


# --- attributes and names ------------------------------------------------------------------


def set_attrs(rec: Record | None, attrs: Mapping[str, Any]) -> None:
    """Add attributes to a given (open or closed) record; a new dict, never mutated in place."""
    if rec is None or rec[AUX] is _OVERFLOW:
        return
    old = rec[ATTRS]
    if type(old) is tuple:
        old = _attrs_now(old)
    rec[ATTRS] = {**old, **attrs} if old else dict(attrs)


def annotate(attrs: Mapping[str, Any]) -> None:
    """Add attributes to the innermost open stage (a new dict: attr dicts are never mutated
    in place, so a dict passed to `enter` may be shared)."""
    set_attrs(_get(), attrs)


def set_name(rec: Record | None, name: Any, attrs: Mapping[str, Any] | None = None) -> None:
    """Rename a stage (a route once it matched, say), adding `attrs` (as `set_attrs`)."""
    if rec is not None and rec[AUX] is not _OVERFLOW:
        rec[NAME] = name
        if attrs:
            set_attrs(rec, attrs)


def aux(rec: Record | None) -> Any:
    """Adapter-owned scratch data kept on a non-middleware stage while it is open (routing
    state, say); None if unset."""
    if rec is None:
        return None
    value = rec[AUX]
    return None if value is _OVERFLOW or value is _MARKS else value


def set_aux(rec: Record | None, value: Any) -> None:
    """Set a stage's adapter-owned scratch data (plain data only: it is queued with the
    timeline). Not for middleware stages, whose AUX holds their phases."""
    if rec is not None and rec[AUX] is not _OVERFLOW and rec[KIND] != "middleware":
        rec[AUX] = value


def nearest_open(kind: str, limit: int = 32, dropped: bool = False) -> Record | None:
    """The innermost open stage of `kind` around the current position; with `dropped`, also
    one past `max_stages` (timed for the summary but not kept)."""
    rec = _get()
    for _ in range(limit):
        if rec is None:
            return None
        if rec[KIND] == kind and not rec[END] and (dropped or rec[AUX] is not _OVERFLOW):
            return rec
        rec = rec[PARENT]
    return None


def open_of(kinds: frozenset[str], limit: int = 32) -> bool:
    """Whether a stage of one of `kinds` is open around the current position (one past
    `max_stages` too): `nearest_open` for several kinds at once, in one walk."""
    rec = _get()
    for _ in range(limit):
        if rec is None:
            return False
        if rec[KIND] in kinds and not rec[END]:
            return True
        rec = rec[PARENT]
    return False


def _attrs_now(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    if type(raw) is tuple:
        return dict(raw[0](raw[1]))
    return dict(raw)


# --- after the response: background work outside the request's stages ------------------------


def detach_to_root() -> None:
    """The response is complete and work continues after it (background tasks): close every
    stage still open between the root and here, so that the middleware, route and view they
    belong to end when the response was sent, and continue at the root. Their wrappers' later
    exits keep these ends."""
    rec = _get()
    if rec is None:
        return
    t = now()
    try:
        while rec[PARENT] is not None:
            if not rec[END]:
                if rec[AUX] is _MARKS and rec[M_IN] and not rec[M_OUT]:
                    rec[M_OUT] = t
                rec[END] = t
            rec = rec[PARENT]
    except Exception as exc:
        internal_error("recorder.detach", exc)
        return
    if not rec[TL].ended:
        _set(rec)


def enter_at(parent: Record, kind: str, name: Any, attrs: Any = None) -> Record | None:
    """Open a stage as a child of `parent` (instead of the current stage)."""
    prev = _get()
    _set(parent)
    rec = enter(kind, name, attrs)
    if rec is None:
        _set(prev)
    return rec


# --- SQL repeats (for N+1 and duplicate analysis) ---------------------------------------------


def note_repeat(
    rec: Record | None, attrs: dict[str, Any], text: str, sql: str, params: Any
) -> None:
    """After a ``db.query`` stage opened with the attribute dict `attrs` for the statement
    `sql`, recorded as `text` (`sql` itself, or `sql` cut at ``max_sql_length``): mark it a
    duplicate of an earlier run of the same statement with the same parameters
    (``stagetrace.duplicate_of``), and once its recorded text repeats, add the call site
    (for the N+1 finding: where the loop is).

    Two statements sharing their recorded text are different statements: for a cut one, its
    whole text's length and (cached) hash join the parameters' key — the whole text is not
    kept. Repeats are counted by the recorded text; a cut statement takes the call site at
    every repeat, as which statement it is (`note_cut`'s hash) is known only at the seal. Never
    raises: the stage is open, and a failure here must not keep the caller from closing it."""
    try:
        key = _sql.params_key(params)
        cut = sql is not text
        if cut and key is not None:
            key = (key, len(sql), hash(sql))
        runs, dup = note_query(rec, text, key)
        if dup is not None:
            attrs["stagetrace.duplicate_of"] = dup
        if runs == 2 or (cut and runs > 2):
            attrs.update(_sql.call_site())
    except Exception as exc:
        internal_error("recorder.note_query", exc)


def note_query(rec: Record | None, text: str, params_key: Any) -> tuple[int, int | None]:
    """Remember that the db.query stage `rec` ran the statement recorded as `text` with
    parameters hashing to `params_key` (None: not hashable). Returns (how many times this
    text ran in the timeline, this one included — 0 for a stage not kept; the index of an
    earlier stage with the same text and the same parameters, or None)."""
    if rec is None or rec[AUX] is _OVERFLOW:
        return 0, None
    tl = rec[TL]
    seen = tl.queries
    if seen is None:
        seen = tl.queries = {}
    entry = seen.get(text)
    index = len(tl) - 1 if tl[-1] is rec else None
    if entry is None:
        seen[text] = [1, {params_key: index} if params_key is not None else {}]
        return 1, None
    runs = entry[0] = entry[0] + 1
    dup = None
    if params_key is not None:
        by_params = entry[1]
        dup = by_params.get(params_key)
        if dup is None:
            by_params[params_key] = index
    return runs, dup


#: The attribute of a ``db.query`` stage whose recorded text was cut: a hash of the
#: statement's fingerprint (`_sql.statement_hash`), by which the analyzers tell apart
#: statements whose recorded texts are the same.
QUERY_HASH = "stagetrace.db.query.hash"

#: How much of a cut statement `note_cut` keeps for its hash: twice ``max_sql_length``, and at
#: least this many characters. Statements the same up to there share their hash. Bounded, so
#: that a queued timeline never holds a statement's whole text (a bulk INSERT, an inline
#: ``IN`` list of a million values) and the fingerprint at the seal stays a few milliseconds.
MIN_HASHED_SQL = 8192


def note_cut(rec: Record | None, attrs: dict[str, Any], sql: str) -> None:
    """After a ``db.query`` stage opened with the attribute dict `attrs` whose recorded text is
    `sql` cut at ``max_sql_length``: keep the beginning of `sql` (`MIN_HASHED_SQL`), once per
    statement of the timeline, until the timeline is sealed, which adds `QUERY_HASH` to
    `attrs` — off the request path, as a fingerprint costs about as much as the text's length.
    Never raises."""
    try:
        if rec is None or rec[AUX] is _OVERFLOW:
            return
        tl = rec[TL]
        cut = tl.cut_sql
        if cut is None:
            cut = tl.cut_sql = {}
        key = (len(sql), hash(sql))
        entry = cut.get(key)
        if entry is None:
            keep = max(2 * tl.settings.max_sql_length, MIN_HASHED_SQL)
            short = len(sql) > keep
            entry = cut[key] = (sql[:keep] if short else sql, short, [])
        entry[2].append(attrs)
    except Exception as exc:
        internal_error("recorder.note_cut", exc)


def _hash_cut_sql(cut: dict[tuple[int, int], tuple[str, bool, list[dict[str, Any]]]]) -> None:
    """Add the statement hash of each cut statement to its stages' attributes (at the seal)."""
    for sql, short, stages in cut.values():
        h = _sql.statement_hash(sql, short)
        for attrs in stages:
            attrs[QUERY_HASH] = h


# --- sealing and loading -------------------------------------------------------------------


def _plain_str(text: str) -> str:
    """`text` with lone surrogates replaced, so it encodes as UTF-8 everywhere."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _plain(value: Any, limit: int) -> Any:
    """A value as plain data: JSON scalars kept, long strings cut with a marker, flat lists of
    scalars, anything else as its ``str()``."""
    t = type(value)
    if t is str:
        if len(value) > limit:
            value = value[:limit] + "…"
        return _plain_str(value)
    if value is None or t is int or t is bool:
        return value
    if t is float:
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
        )
    if isinstance(value, (list, tuple)):
        return [_scalar(v, limit) for v in value[:MAX_LIST_ITEMS]]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _plain(float(value), limit)
    if isinstance(value, str):  # a subclass (Django's SafeString): as a plain str
        return _plain(str.__str__(value), limit)
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return _plain(text, limit)


def _scalar(value: Any, limit: int) -> Any:
    out = _plain(value, limit)
    return out if type(out) is not list else str(out)


#: Attributes that have a cap of their own (``max_sql_length``), applied where they are recorded.
_OWN_CAP = frozenset(("db.query.text", "db.query.parameters"))


def _clean_attrs(attrs: Any, limit: int, sql_limit: int) -> dict[str, Any] | None:
    """Attributes as plain data, strings cut at `limit` (SQL at `sql_limit`); the same dict
    when it already is (shared constants stay shared and unmodified)."""
    if type(attrs) is tuple:
        attrs = _attrs_now(attrs)
    if not attrs:
        return None
    for k, v in attrs.items():
        t = type(v)
        if type(k) is not str or not (
            v is None
            or t is int
            or t is bool
            or (t is str and (len(v) <= limit or (k in _OWN_CAP and len(v) <= sql_limit + 1)))
        ):
            break
    else:
        return attrs  # type: ignore[no-any-return]
    return {
        (k if type(k) is str else str(k)): _plain(v, sql_limit if k in _OWN_CAP else limit)
        for k, v in attrs.items()
    }


#: Cap on a string kept from the application before the timeline's own limits apply.
MAX_KEPT_STRING = 65536


def plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes given by the application (`stage(**attrs)`, `annotate()`) as plain data,
    now: a timeline must never keep the application's objects alive once it is queued."""
    return {str(k): _plain(v, MAX_KEPT_STRING) for k, v in attrs.items()}


def _name_now(raw: Any) -> str:
    if type(raw) is tuple and len(raw) == 2 and callable(raw[0]):
        raw = raw[0](raw[1])
    if isinstance(raw, str):
        return str.__str__(raw)
    return str(raw)


#: Values per stage in a sealed timeline's flat row store.
W = 8
#: Positions within a row.
R_PARENT, R_KIND, R_NAME, R_START, R_END, R_ATTRS, R_ERROR, R_AUX = range(W)


def dispose(tl: Live) -> None:
    """Forget a finished timeline nobody will seal (a full queue): release its records."""
    del tl[:]
    tl.queries = tl.cut_sql = None


def finished(tl: Live) -> Timeline:
    """The `Timeline` of a finished live timeline (`seal`, then `build`)."""
    return build(seal(tl))


def seal(tl: Live) -> Sealed:
    """Turn a finished live timeline into plain data, on the worker: one pass, after which
    nothing kept references the application's objects or forms a reference cycle. The stages
    go into ONE flat tuple (8 values each: parent index, kind, name, start, end, attributes,
    error, middleware marks) rather than an object each: what a memory sink keeps is then a
    handful of objects per request, which keeps the garbage collector's young generation small
    and its full collections (which traverse the application's whole heap) rare.

    `build` then makes the `Timeline` object and parses the gateway's request attributes;
    `Stage` objects are built only when someone reads them (`_Rows`)."""
    final = tl.final
    records = tl[:final]
    flat: list[Any] = []
    extend = flat.extend
    for i, r in enumerate(records):
        r[8] = i
        p = r[1]
        pi = p[8] if p is not None else None
        if type(pi) is not int or pi >= i:
            pi = None
        name = r[3]
        if type(name) is not str:
            try:
                name = _plain(_name_now(name), 1000)
            except Exception as exc:
                internal_error("recorder.name", exc)
                name = "?"
        attrs = r[6]
        if type(attrs) is tuple:
            try:
                attrs = _attrs_now(attrs)
            except Exception as exc:
                internal_error("recorder.attrs", exc)
                attrs = None
        # only middleware phase marks belong to the timeline, not adapters' scratch data
        aux_ = (r[10], r[11], r[12]) if r[9] is _MARKS else None
        extend((pi, r[2], name, r[4], r[5], attrs, r[7], aux_))
    del tl[:]
    tl.queries = None
    cut = tl.cut_sql
    if cut is not None:
        tl.cut_sql = None
        try:
            _hash_cut_sql(cut)
        except Exception as exc:
            internal_error("recorder.query_hash", exc)
    extra: dict[str, Any] = {}
    if tl.sent:
        extra["http.response.sent_ns"] = tl.sent
    if tl.internal_errors:
        extra["stagetrace.internal_errors"] = tl.internal_errors
    ovf_kinds, ovf_child = tl.ovf_kinds, tl.ovf_child
    own_dropped = None
    if ovf_kinds and ovf_child:
        own_dropped = {r[8]: ovf_child[id(r)] for r in records if id(r) in ovf_child}
    status = tl.status
    return (
        tl.settings,
        (
            tl.trace_id,
            tl.span_id,
            tl.request_id,
            tl.framework,
            tl.protocol,
            tl.method,
            tl.path,
            tl.route,
            status if type(status) is int else None,
            tl.wall0,
            tl.dropped,
            tl.parent_span_id,
            tl.trace_flags,
            tl.tracestate,
            tl.parent_local,
        ),
        tuple(flat),
        {k: tuple(v) for k, v in ovf_kinds.items()} if ovf_kinds else None,
        own_dropped,
        extra,
        tl.deferred,
    )


def build(sealed: Sealed) -> Timeline:
    """The (lazy) `Timeline` of a sealed timeline: on the worker, or for `capture()`."""
    cfg, head, flat, ovf_kinds, own_dropped, extra, deferred = sealed
    (
        trace,
        span,
        request_id,
        framework,
        protocol,
        method,
        path,
        route,
        status,
        wall0,
        dropped,
        parent,
        flags,
        tracestate,
        parent_local,
    ) = head
    t0 = flat[R_START]
    t_end = flat[R_END] or t0
    trace_id = f"{trace:032x}"
    return Timeline(
        trace_id,
        f"{span:016x}",
        request_id or trace_id,
        cfg.service,
        framework,
        protocol,
        method,
        path,
        route,
        status,
        wall0,
        max(0, t_end - t0),
        None,
        None,
        (),
        dropped,
        load=_Rows(
            flat,
            t0,
            t_end,
            ovf_kinds,
            own_dropped,
            cfg.max_attr_length,
            cfg.max_sql_length,
            extra or None,
            deferred,
        ),
        parent_span_id=f"{parent:016x}" if parent else None,
        trace_flags=flags,
        tracestate=tracestate,
        parent_is_remote=bool(parent) and not parent_local,
    )


_tuple_new = tuple.__new__
_NO_ATTRS: Mapping[str, Any] = MappingProxyType({})
_proxy = MappingProxyType


def _middleware_phases(aux: Any, start: int, d: int) -> tuple[dict[str, int], bool]:
    """A middleware stage's in/out phases and whether it answered without the next layer, from
    its sealed marks `aux` (its start and duration `d`)."""
    if aux is not None and aux[0]:
        inner_end = aux[1] if aux[1] else start + d
        phases = {"in": max(0, aux[0] - start), "out": max(0, start + d - inner_end)}
        short = False
    else:
        phases = {"in": d, "out": 0}
        short = True
    if aux is not None and aux[2] is not None:
        short = bool(aux[2])
    return phases, short


class _Rows:
    """The stages of a sealed timeline, built into `Stage` objects on demand: all at once
    (``load()``), or only those of one kind and their ancestors (what the analyzers read), so a
    timeline whose stages nobody reads costs nothing more."""

    __slots__ = (
        "_child",
        "_root",
        "_stages",
        "flat",
        "limits",
        "n",
        "own_dropped",
        "ovf_kinds",
        "extra",
        "more_fn",
        "more_arg",
        "t0",
        "t_end",
    )

    def __init__(
        self,
        flat: tuple[Any, ...],
        t0: int,
        t_end: int,
        ovf_kinds: dict[str, tuple[int, int, int]] | None,
        own_dropped: dict[int, int] | None,
        limit: int,
        sql_limit: int,
        extra: dict[str, Any] | None = None,
        deferred: tuple[Callable[[Any], dict[str, Any]], Any] | None = None,
    ) -> None:
        self.flat = flat
        #: What the root's attributes still lack: the adapter's extra attributes and the
        #: deferred request attributes (``more_fn(more_arg)``), merged when the root is first
        #: read (`_root_attrs`, which keeps the result in ``_root``), so a timeline nobody reads
        #: never parses its request. In slots of their own, not a tuple: every object a kept
        #: timeline holds that the garbage collector tracks ends up in its oldest generation.
        self.extra = extra
        self.more_fn: Callable[[Any], dict[str, Any]] | None = None
        self.more_arg: Any = None
        if deferred is not None:
            self.more_fn, self.more_arg = deferred
        self._root: dict[str, Any] | None = None
        self.n = len(flat) // W
        self.t0 = t0
        self.t_end = t_end
        self.ovf_kinds = ovf_kinds
        self.own_dropped = own_dropped
        self.limits = (limit, sql_limit)
        self._child: list[int] | None = None
        self._stages: list[Stage | None] | None = None

    def indexes(self, kind: str) -> list[int]:
        """Positions of the stages of `kind`."""
        return [i for i, k in enumerate(self.flat[R_KIND::W]) if k == kind]

    def count(self, kind: str) -> int:
        """Stages of `kind`, dropped ones included."""
        n = self.flat[R_KIND::W].count(kind)
        if self.ovf_kinds and kind in self.ovf_kinds:
            n += self.ovf_kinds[kind][0]
        return n

    def rows(self, kind: str) -> list[tuple[int, str, int, Mapping[str, Any]]]:
        """The stages of `kind` as ``(id, name, duration_ns, attrs)`` (what the analyzers read;
        no `Stage` is built; the attributes are read-only views of the recorded dicts: plain
        data, not yet cut to the length limits)."""
        flat, t_end = self.flat, self.t_end
        out = []
        for i in self.indexes(kind):
            b = i * W
            d = (flat[b + R_END] or t_end) - flat[b + R_START]
            attrs = self._root_attrs() if i == 0 else flat[b + R_ATTRS]
            out.append(
                (i, flat[b + R_NAME], d if d > 0 else 0, _proxy(attrs) if attrs else _NO_ATTRS)
            )
        return out

    def _root_attrs(self) -> Any:
        """The root's recorded attributes with the extra and the request's (once)."""
        # Read every field first, then `_root`: a reader that finished sets `_root` before it
        # clears the fields, so a reader that saw a cleared field also sees its `_root`.
        fn, arg, extra = self.more_fn, self.more_arg, self.extra
        root = self._root
        if root is not None:
            return root
        if fn is None and extra is None:
            return self.flat[R_ATTRS]
        attrs = dict(self.flat[R_ATTRS] or ())
        if fn is not None:
            try:
                attrs = {**fn(arg), **attrs}
            except Exception as exc:
                _guard.report("recorder.request_attrs", exc)
        if extra:
            attrs.update(extra)
        self._root = attrs
        self.extra = self.more_fn = self.more_arg = None
        return attrs

    def lineage(self, i: int) -> Iterator[tuple[str, str]]:
        """``(kind, name)`` of the ancestors of stage `i`, nearest first."""
        if not 0 <= i < self.n:
            raise IndexError(f"no stage {i} in this timeline")
        flat = self.flat
        pi = flat[i * W + R_PARENT]
        while pi is not None:
            b = pi * W
            yield flat[b + R_KIND], flat[b + R_NAME]
            pi = flat[b + R_PARENT]

    def _children(self) -> list[int]:
        child = self._child
        if child is None:
            flat, t_end = self.flat, self.t_end
            child = [0] * self.n
            for i in range(self.n):
                pi = flat[i * W]
                if pi is not None:
                    b = i * W
                    d = (flat[b + R_END] or t_end) - flat[b + R_START]
                    if d > 0:
                        child[pi] += d
            self._child = child
        return child

    def stage(self, i: int) -> Stage:
        """The `Stage` at position `i` (built once)."""
        stages = self._stages
        if stages is None:
            stages = self._stages = [None] * self.n
        st = stages[i]
        if st is None:
            st = stages[i] = self._make(i, self._children())
        return st

    def _make(self, i: int, child: list[int]) -> Stage:
        b = i * W
        pi, kind, name, start, end_, attrs, err, aux_ = self.flat[b : b + W]
        if i == 0:
            attrs = self._root_attrs()
        d = (end_ or self.t_end) - start
        if d < 0:
            d = 0
        own = d - child[i]
        if self.own_dropped:
            own -= self.own_dropped.get(i, 0)
        if own < 0:
            own = 0
        if attrs:
            attrs = _clean_attrs(attrs, *self.limits)
            attrs = dict(attrs) if attrs else {}
        else:
            attrs = {}
        if not end_:
            attrs["unfinished"] = True
        phases = short = None
        if kind == "middleware":
            phases, short = _middleware_phases(aux_, start, d)
        t0 = self.t0
        return _tuple_new(
            Stage,
            (
                i,
                pi,
                kind,
                name,
                start - t0 if start > t0 else 0,
                d,
                own,
                attrs,
                StageError(err[0], err[1]) if err is not None else None,
                phases,
                short,
            ),
        )

    def export_rows(self) -> list[tuple[Any, ...]]:
        """Every stage as a plain tuple of `Stage`'s fields (see `stages_once`): `_make` in one
        loop, without its per-stage call, slice and dict copy. Its duration and own-time lines
        repeat `_make`'s on purpose (a call per stage is what this saves); the two are checked
        equal by ``tests/otel/test_mapping.py::test_stages_once_equals_the_timelines_stages``."""
        flat, t0, t_end = self.flat, self.t0, self.t_end
        child = self._children()
        own_dropped = self.own_dropped
        limit, sql_limit = self.limits
        clean = _clean_attrs
        empty = _NO_ATTRS
        out: list[tuple[Any, ...]] = []
        append = out.append
        b = 0
        for i in range(self.n):
            pi, kind, name, start, end_, attrs, err, aux_ = flat[b : b + W]
            b += W
            if i == 0:
                attrs = self._root_attrs()
            d = (end_ or t_end) - start
            if d < 0:
                d = 0
            own = d - child[i]
            if own_dropped:
                own -= own_dropped.get(i, 0)
            if own < 0:
                own = 0
            attrs = (clean(attrs, limit, sql_limit) or empty) if attrs else empty
            if not end_:
                attrs = {**attrs, "unfinished": True}
            phases = short = None
            if kind == "middleware":
                phases, short = _middleware_phases(aux_, start, d)
            append(
                (
                    i,
                    pi,
                    kind,
                    name,
                    start - t0 if start > t0 else 0,
                    d,
                    own,
                    attrs,
                    StageError(err[0], err[1]) if err is not None else None,
                    phases,
                    short,
                )
            )
        return out

    def load(self) -> tuple[tuple[Stage, ...], dict[str, KindSummary]]:
        """Every stage, and the per-kind totals (dropped stages included)."""
        child = self._children()
        stages = self._stages
        if stages is None:
            stages = self._stages = [None] * self.n
        by_kind: dict[str, list[int]] = {}
        out = []
        for i in range(self.n):
            st = stages[i]
            if st is None:
                st = stages[i] = self._make(i, child)
            out.append(st)
            acc = by_kind.get(st.kind)
            if acc is None:
                acc = by_kind[st.kind] = [0, 0, 0]
            acc[0] += 1
            acc[1] += st.duration_ns
            acc[2] += st.self_ns
        for kind, (count, total, own) in (self.ovf_kinds or {}).items():
            acc = by_kind.get(kind)
            if acc is None:
                acc = by_kind[kind] = [0, 0, 0]
            acc[0] += count
            acc[1] += total
            acc[2] += own
        self._stages = None
        return tuple(out), {k: KindSummary(*v) for k, v in by_kind.items()}

    def __call__(self) -> tuple[tuple[Stage, ...], dict[str, KindSummary]]:
        return self.load()


def stages_once(timeline: Timeline) -> Sequence[tuple[Any, ...]]:
    """The stages of `timeline` for a reader that goes through each of them once (the
    OpenTelemetry export), as tuples of a `Stage`'s fields in its order (equal to the stages).

    When none were built yet they are read straight from the sealed rows in one pass: no
    `Stage`, no copy of an attribute dict that is already plain data (the reader must not
    change it), no per-kind totals, and nothing kept on the timeline — this runs for every
    exported timeline. Stages already built (by an analyzer, say) are reused."""
    load = timeline._load
    if type(load) is not _Rows or timeline._stages is not None:
        return timeline.stages
    if load._stages is not None:
        child = load._children()
        make = load._make
        return [st if st is not None else make(i, child) for i, st in enumerate(load._stages)]
    return load.export_rows()


# --- streaming: a body produced chunk by chunk ------------------------------------------------


def carry(
    content: Iterable[Any],
    at: Record | None,
    done: Callable[[int, int, BaseException | None], None] | None = None,
    here: bool = False,
) -> Iterator[Any]:
    """Iterate `content` with the recorder positioned at `at` for the first chunk and, for each
    later one, where producing the previous chunk left it — so a stage the producer holds open
    across ``yield`` (``with stage(...)`` around a loop of yields, a template streaming its
    output) nests and closes correctly although the server resumes it from another context.
    With `here`, each chunk until one leaves a stage open (the first one too) is produced
    where the iteration finds the recorder instead, if that is an open stage of `at`'s
    timeline: a streamed response's ``response.write``, which opened after `at` (the stage that
    built the response) — or, when a layer holds the response start back until the first chunk
    (GZip), only after that chunk — and spans the body's production.

    With `done`, chunks (which must have a length: bytes) are counted and ``done(chunks, size,
    error)`` is called once when the iteration ends, fails (`error`) or is closed — one
    generator per response body rather than a counting one stacked on this one (a frame
    resumption per chunk, measured on a streaming view)."""
    it = iter(content)
    pos = at
    chunks = size = 0
    error: BaseException | None = None
    follow = here
    try:
        while True:
            prev = _get()
            if (
                follow
                and prev is not None
                and at is not None
                and prev[TL] is at[TL]
                and not prev[END]
            ):
                pos = prev
            given = pos
            _set(pos)
            try:
                chunk = next(it)
            except StopIteration:
                return
            finally:
                pos = _get()
                _set(prev)
                follow = follow and pos is given
            if done is not None:
                chunks += 1
                size += len(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        if done is not None:
            error = exc
        raise
    finally:
        if done is not None:
            _done(done, chunks, size, error)
            # the exception's traceback holds this frame: no reference cycle through `error`
            error = None


def _done(
    done: Callable[[int, int, BaseException | None], None],
    chunks: int,
    size: int,
    error: BaseException | None,
) -> None:
    try:
        done(chunks, size, error)
    except Exception as exc:  # never replaces the application's own exception
        internal_error("recorder.carry", exc)


async def acarry(
    content: Any,
    at: Record | None,
    done: Callable[[int, int, BaseException | None], None] | None = None,
) -> AsyncIterator[Any]:
    """`carry` for an async iterable."""
    it = content.__aiter__()
    pos = at
    chunks = size = 0
    error: BaseException | None = None
    try:
        while True:
            prev = _get()
            _set(pos)
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                return
            finally:
                pos = _get()
                _set(prev)
            if done is not None:
                chunks += 1
                size += len(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        if done is not None:
            error = exc
        raise
    finally:
        if done is not None:
            _done(done, chunks, size, error)
            # the exception's traceback holds this frame: no reference cycle through `error`
            error = None
