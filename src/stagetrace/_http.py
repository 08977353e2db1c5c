"""HTTP details shared by the web adapters: request ids, queue time, traceparent."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from . import _config, _recorder

#: What an incoming request id may look like: printable, no spaces, at most 200 characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,200}")


def valid_request_id(value: str | bytes | None) -> str | None:
    """The request id if it is safe to record and echo, else None (a new one is generated)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip()
    return value if _REQUEST_ID.fullmatch(value) else None


def queue_time_ns(header: str | bytes | None, now_unix_ns: int) -> int | None:
    """Time the request waited before the app saw it, from ``X-Request-Start``/``X-Queue-Start``.

    Accepts what nginx (``t=1700000000.123``, seconds), Heroku (milliseconds) and others
    (microseconds, nanoseconds) send, with or without ``t=``; the unit is told by the
    magnitude. Returns None for anything unparseable or implausible (negative beyond clock
    skew, or more than an hour).
    """
    if not header:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    text = header.strip()
    if text.startswith("t="):
        text = text[2:]
    try:
        value = float(text)
    except ValueError:
        return None
    if value != value or value <= 0:  # NaN
        return None
    if value > 1e17:
        start_ns = int(value)
    elif value > 1e14:
        start_ns = int(value * 1_000)
    elif value > 1e11:
        start_ns = int(value * 1_000_000)
    else:
        start_ns = int(value * 1_000_000_000)
    waited = now_unix_ns - start_ns
    if waited < -1_000_000_000 or waited > 3600 * 1_000_000_000:
        return None
    return max(0, waited)


_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def trace_id_from_traceparent(value: str | bytes | None) -> int | None:
    """The trace id of a W3C ``traceparent`` header, so the timeline joins the caller's trace."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None:
        return None
    trace_id = int(m.group(1), 16)
    return trace_id or None


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def begin_http(
    gateway: str,
    *,
    framework: str,
    method: str | None,
    path: str | None,
    scheme: str | None = None,
    request_id: str | bytes | None = None,
    queue_start: str | bytes | None = None,
    traceparent: str | bytes | None = None,
    body_size: Any = None,
    protocol: str = "http",
) -> _recorder.Record | None:
    """Start an HTTP (or websocket) timeline with the gateway attributes every adapter records:
    method, scheme, request size, process and thread, requests in flight in this process, and
    the queue time the proxy reported. Returns the root record, or None when not recording.

    The root's attribute dict belongs to the gateway: `end_http` and the adapters add to it in
    place (`gateway_attrs`)."""
    root = _recorder.begin(
        gateway,
        kind="gateway",
        framework=framework,
        protocol=protocol,
        method=method,
        path=path,
        request_id=valid_request_id(request_id) if request_id else None,
        trace_id=trace_id_from_traceparent(traceparent) if traceparent else None,
    )
    if root is None:
        return None
    tl = root[_recorder.TL]
    in_flight = _config._state.in_flight
    if len(in_flight) > MAX_IN_FLIGHT:  # timelines that never ended: do not grow forever
        in_flight.clear()
    in_flight.add(tl)
    attrs: dict[str, Any] = {
        "process.pid": os.getpid(),
        "thread.id": threading.get_ident(),
        "stagetrace.in_flight": len(in_flight),
    }
    if method is not None:
        attrs["http.request.method"] = method
    if scheme is not None:
        attrs["url.scheme"] = scheme
    if body_size is not None:
        size = _int(body_size)
        if size is not None:
            attrs["http.request.body.size"] = size
    if queue_start:
        waited = queue_time_ns(queue_start, tl.wall0)
        if waited is not None:
            attrs["stagetrace.queue_time_ns"] = waited
    root[_recorder.ATTRS] = attrs
    return root


#: More requests in flight than this means timelines are not being ended (a server that never
#: closes responses): the bookkeeping resets rather than growing.
MAX_IN_FLIGHT = 10_000


def gateway_attrs(root: _recorder.Record) -> dict[str, Any]:
    """The gateway's own attribute dict, to add to in place."""
    attrs = root[_recorder.ATTRS]
    if type(attrs) is not dict:
        attrs = root[_recorder.ATTRS] = _recorder.attrs_of(attrs)
    return attrs  # type: ignore[no-any-return]


def end_http(
    root: _recorder.Record | None,
    status: int | None = None,
    response_size: int | None = None,
    exc: BaseException | None = None,
) -> None:
    """End an HTTP timeline begun by `begin_http`, recording status and response size."""
    if root is None:
        return
    tl = root[_recorder.TL]
    if status is not None:
        tl.status = status
    attrs = gateway_attrs(root)
    if tl.status is not None:
        attrs["http.response.status_code"] = tl.status
    if response_size is not None:
        attrs["http.response.body.size"] = response_size
    _config._state.in_flight.discard(tl)
    _recorder.end(root, exc)
