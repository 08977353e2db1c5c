"""The recorder: what runs on the request path.

A timeline in progress is a `Live` list of *records*; a record is a plain list (see the slot
constants below). The `ContextVar` holds the record of the innermost open stage, so each asyncio
task, thread, and asgiref hop sees its own position in the tree, and concurrent requests never
share anything. Entering a stage appends one record and sets the ContextVar; leaving it stores
the end time and sets the ContextVar back to the parent. No locks, no span objects, no string
formatting: everything else is built after the request by `_pipeline.freeze`.

Every function here is called from inside the host application's request and must never raise:
the hot paths are written so that they cannot (no lookups that can fail), the rest are guarded.
"""

from __future__ import annotations

import random
import time
from contextvars import ContextVar
from typing import Any

from . import _config, _pipeline, _safety

now = time.perf_counter_ns
_wall = time.time_ns
_rand = random.random
_bits = random.getrandbits

# Record slots.
TL, PARENT, KIND, NAME, START, END, ATTRS, ERROR, OWNER, AUX = range(10)

Record = list[Any]

_current: ContextVar[Record | None] = ContextVar("stagetrace.current", default=None)
_get = _current.get
_set = _current.set

# AUX marker of a stage that arrived after the timeline's `max_stages`: it is timed but not
# kept, and folded into the per-kind summary when it ends.
_OVERFLOW = object()

MAX_ERROR_MESSAGE = 1000


class Live(list):  # type: ignore[type-arg]
    """A timeline being recorded. The list holds the records; slots hold the request facts."""

    __slots__ = (
        "__weakref__",
        "cap",
        "trace_id",
        "span_id",
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
    )

    cap: int
    trace_id: int
    span_id: int
    framework: str
    protocol: str
    method: str | None
    path: str | None
    wall0: int
    settings: _config.Settings

    def __init__(self) -> None:
        super().__init__()
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

    # list subclasses compare by content; a timeline is only ever equal to itself.
    __eq__ = object.__eq__
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Live timeline {self.trace_id:032x} {len(self)} records>"

    def dispose(self) -> None:
        """Drop the records once frozen (or not wanted). Each record points back at this list,
        so without this every timeline is a reference cycle that only the garbage collector
        frees — measured at +1 ms per request on a Django view with 77 stages, from the extra
        full collections over Django's large heap."""
        del self[:]
        self.last_exc = None
        self.ovf_child = None


def describe(tl: Live, exc: BaseException) -> tuple[str, str]:
    """(qualified type, message) of an exception, computed once per exception per timeline."""
    last = tl.last_exc
    if last is not None and last[0] is exc:
        return last[1]
    t = type(exc)
    mod = t.__module__
    name = t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"
    try:
        msg = str(exc)
    except Exception:
        msg = "<unprintable>"
    if len(msg) > MAX_ERROR_MESSAGE:
        msg = msg[:MAX_ERROR_MESSAGE] + "…"
    out = (name, msg)
    tl.last_exc = (exc, out)
    return out


# --- timelines ------------------------------------------------------------------------------


def begin(
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
) -> Record | None:
    """Start a timeline and its root stage in the current context; None when not recording.

    Not recording means: disabled, sampled out, an excluded path, or already inside a live
    timeline (an inner adapter then adds its stages to the outer timeline instead of starting a
    second one, so wrapping an app twice never doubles anything).
    """
    try:
        cur = _get()
        if cur is not None and not cur[TL].ended:
            return None
        cfg = _config.settings()
        if not cfg.enabled:
            return None
        if path is not None and cfg.exclude_re is not None and cfg.exclude_re.search(path):
            return None
        if cfg.sample_rate < 1.0 and _rand() >= cfg.sample_rate:
            return None
        tl = Live()
        tl.cap = cfg.max_stages
        tl.settings = cfg
        tl.trace_id = trace_id or _bits(128) or 1
        tl.span_id = _bits(64) or 1
        tl.request_id = request_id
        tl.framework = framework
        tl.protocol = protocol
        tl.method = method
        tl.path = path
        tl.wall0 = _wall()
        root = [tl, None, kind, name, now(), 0, attrs, None, None, None]
        tl.append(root)
        _set(root)
        return root
    except Exception as exc:
        _safety.report("recorder.begin", exc)
        return None


def end(root: Record | None, exc: BaseException | None = None) -> None:
    """End the timeline whose root record is `root` and hand it to the pipeline."""
    if root is None:
        return
    t = now()
    try:
        tl: Live = root[TL]
        if tl.ended:
            return
        root[END] = t
        if exc is not None:
            root[ERROR] = describe(tl, exc)
        tl.ended = True
        tl.final = len(tl)
        cur = _get()
        if cur is not None and cur[TL] is tl:
            _set(None)
        _pipeline.submit(tl)
    except Exception as e:
        _safety.report("recorder.end", e)


def live_timeline() -> Live | None:
    """The live timeline of the current context, if one is being recorded."""
    cur = _get()
    if cur is None:
        return None
    tl: Live = cur[TL]
    return None if tl.ended else tl


def set_route(route: str | None) -> None:
    """Set the current timeline's route template (the URL pattern that matched)."""
    cur = _get()
    if cur is not None:
        cur[TL].route = route


def set_status(status: int | None) -> None:
    cur = _get()
    if cur is not None:
        cur[TL].status = status


# --- stages: the hot path -------------------------------------------------------------------


def enter(kind: str, name: Any, attrs: Any = None) -> Record | None:
    """Open a stage under the current one; returns its record (or None when not recording).

    `kind` must be one of `KINDS`; adapters pass constants, so it is not checked here. `name`
    is a string, or ``(function, argument)`` to build the name after the request; `attrs` a
    dict (never mutated by stagetrace, so constants may be shared) or ``(function, argument)``.
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
    return _enter_overflow(cur, kind)


def exit(rec: Record | None, exc: BaseException | None = None) -> None:
    """Close a stage opened by `enter`; `exc` is the exception it ended with, if any."""
    if rec is None:
        return
    rec[5] = now()
    _set(rec[1])
    if exc is not None:
        _exit_error(rec, exc)
    if rec[9] is _OVERFLOW:
        _fold_overflow(rec)


def close(rec: Record | None, exc: BaseException | None = None) -> None:
    """Close a record from outside its context (a response closed by the server, say): like
    `exit`, but leaves the caller's current stage alone. Closing twice keeps the first end."""
    if rec is None or rec[END]:
        return
    rec[END] = now()
    if exc is not None:
        _exit_error(rec, exc)
    if rec[AUX] is _OVERFLOW:
        _fold_overflow(rec)


def enter_middleware(name: str, attrs: dict[str, Any] | None = None) -> Record | None:
    """Open a `middleware` stage whose in/out phases are split by `inner_begin`/`inner_end`."""
    cur = _get()
    if cur is None:
        return None
    tl = cur[0]
    if len(tl) < tl.cap:
        rec = [tl, cur, "middleware", name, now(), 0, attrs, None, None, [0, 0]]
        tl.append(rec)
        _set(rec)
        return rec
    return _enter_overflow(cur, "middleware")


def open_middleware(name: str) -> Record | None:
    """The open middleware record named `name` (the same string object the stage was entered
    with): the current record, or a near ancestor when the middleware opened stages of its own
    around calling the next layer."""
    rec = _get()
    for _ in range(8):
        if rec is None:
            return None
        if rec[NAME] is name and rec[KIND] == "middleware":
            return rec
        rec = rec[PARENT]
    return None


def inner_begin(rec: Record | None) -> None:
    """The middleware `rec` is calling the next layer now: its inbound phase ends."""
    if rec is not None:
        aux = rec[9]
        if aux is not _OVERFLOW and not aux[0]:
            aux[0] = now()


def inner_end(rec: Record | None) -> None:
    """The next layer returned to the middleware `rec`: its outbound phase starts."""
    if rec is not None:
        aux = rec[9]
        if aux is not _OVERFLOW:
            aux[1] = now()


def set_error(rec: Record | None, exc: BaseException) -> None:
    """Record `exc` on a stage that stays open (an exception a framework handler will turn
    into a response, say)."""
    if rec is not None and rec[AUX] is not _OVERFLOW:
        _exit_error(rec, exc)


def _exit_error(rec: Record, exc: BaseException) -> None:
    try:
        rec[ERROR] = describe(rec[TL], exc)
    except Exception as e:
        _safety.report("recorder.exit_error", e)


def _enter_overflow(cur: Record, kind: str) -> Record | None:
    """Past `max_stages`: time the stage so the summary stays exact, but do not keep it."""
    try:
        tl: Live = cur[TL]
        tl.dropped += 1
        rec = [tl, cur, kind, None, now(), 0, None, None, None, _OVERFLOW]
        _set(rec)
        return rec
    except Exception as exc:
        _safety.report("recorder.overflow", exc)
        return None


def _fold_overflow(rec: Record) -> None:
    try:
        tl: Live = rec[TL]
        if tl.ended and tl.final and rec[START] > tl[0][END]:
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
        _safety.report("recorder.overflow", exc)


def enter_owned(
    kind: str, name: Any, owner: object, attrs: dict[str, Any] | None = None
) -> Record | None:
    """Like `enter`, but the record remembers `owner`, so `find_open` can close it later from
    code that holds no reference to the record (``__exit__`` of a shared object, say), and so
    a re-entrant call on the same owner can be recognised (`is_open_for`)."""
    rec = enter(kind, name, attrs)
    if rec is not None:
        rec[OWNER] = owner
    return rec


def is_open_for(owner: object, kind: str) -> bool:
    """True when the innermost open stage is a `kind` stage owned by `owner` (a method calling
    its own super() implementation: record the outer call only)."""
    cur = _get()
    return cur is not None and cur[OWNER] is owner and cur[KIND] == kind


MAX_UNWIND = 64


def find_open(owner: object) -> Record | None:
    """The innermost open record owned by `owner`, looking up from the current stage."""
    rec = _get()
    if rec is None:
        return None
    tl = rec[TL]
    for _ in range(MAX_UNWIND):
        if rec[OWNER] is owner and not rec[END]:
            return rec
        rec = rec[PARENT]
        if rec is None or rec[TL] is not tl:
            return None
    return None


def set_short_circuit(rec: Record | None, short: bool) -> None:
    """Say explicitly whether a middleware stage answered without the next layer (hooks such
    as ``process_view`` have no inner call to observe)."""
    if rec is not None and type(rec[AUX]) is list:
        rec[AUX] = [rec[AUX][0], rec[AUX][1], short]


def attrs_of(raw: Any) -> dict[str, Any]:
    """A record's attributes as a dict: adapters may store ``(function, argument)`` to build
    them after the request instead (see `_pipeline.freeze`)."""
    if not raw:
        return {}
    if type(raw) is tuple:
        return dict(raw[0](raw[1]))
    return dict(raw)


def annotate_record(rec: Record | None, attrs: dict[str, Any]) -> None:
    """Add attributes to a given (open or closed) record; a new dict, never mutated in place."""
    if rec is None or rec[AUX] is _OVERFLOW:
        return
    old = rec[ATTRS]
    if type(old) is tuple:
        old = attrs_of(old)
    rec[ATTRS] = {**old, **attrs} if old else dict(attrs)


def annotate(attrs: dict[str, Any]) -> None:
    """Add attributes to the innermost open stage (a new dict: attr dicts are never mutated
    in place, so a dict passed to `enter` may be shared)."""
    annotate_record(_get(), attrs)
