"""The gateway stage every HTTP (and websocket) timeline starts with, for every adapter.

`begin_http` takes what the protocol parser (`asgi.request` or `wsgi.request`) found and starts
the timeline with the attributes OpenTelemetry's HTTP server conventions name, plus stagetrace's
own (queue time, requests in flight, process and thread). Nothing is recorded for a request that
is not sampled, beyond the sampling decision itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .. import _recorder
from .._state import STATE
from . import headers as H

if TYPE_CHECKING:
    from .._options import Settings

#: More requests in flight than this means timelines are not being ended (a server that never
#: closes responses): the bookkeeping resets rather than growing.
MAX_IN_FLIGHT = 10_000

#: Headers every adapter reads (besides the configured request id header and the allowlist).
BASE_HEADERS = (
    "traceparent",
    "tracestate",
    "baggage",
    "x-request-start",
    "x-queue-start",
    "content-length",
    "host",
    "user-agent",
)

#: What the context hooks attached for the request this context began: (root, tokens). Kept in
#: the context, not on the timeline, because the timeline may have ended (and been sealed by
#: the worker) before the gateway hands the context back — Django's test client closes the
#: response inside the call.
_attached: ContextVar[tuple[Any, Any] | None] = ContextVar("stagetrace.attached", default=None)

#: ``[True]`` while a WSGI gateway runs the application for a request it left out (excluded,
#: sampled out): a gateway inside it — Flask's ``wsgi_app`` under its own ``__call__``, both
#: wrapped; an app a WSGI middleware wraps — takes no second draw, which would record a
#: request the outer one left out (with ``sample_rate`` 0.5, three requests in four). A list,
#: emptied when the call returns, for the contexts copied from it that outlive it.
_left_out: ContextVar[list[bool] | None] = ContextVar("stagetrace.http.left_out", default=None)


def run_left_out(app: Any, *args: Any) -> Any:
    """``app(*args)`` for a request this gateway left out: gateways inside do not record it."""
    mark = [True]
    token = _left_out.set(mark)
    try:
        return app(*args)
    finally:
        mark.clear()
        _left_out.reset(token)


_wanted_cache: dict[tuple[str, tuple[str, ...]], frozenset[str]] = {}


def wanted_headers(cfg: Settings) -> frozenset[str]:
    """The lower-case names of the headers a gateway needs to look at, for this configuration."""
    key = (cfg.request_id_header, cfg.record_headers)
    found = _wanted_cache.get(key)
    if found is None:
        found = _wanted_cache[key] = frozenset((*BASE_HEADERS, key[0], *key[1]))
    return found


class Request:
    """What a protocol parser found in an incoming request (plain data)."""

    __slots__ = ("carrier", "client", "headers", "method", "path", "query", "scheme", "version")

    def __init__(
        self,
        method: str | None,
        path: str,
        query: str | bytes | None,
        scheme: str | None,
        headers: dict[str, Any],
        client: str | None = None,
        version: str | None = None,
        carrier: dict[str, str] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.scheme = scheme
        self.headers = headers
        self.client = client
        self.version = version
        #: Every header (lower-case names), only while the application's OpenTelemetry
        #: propagator is not W3C's (`_state.State.propagation`): what it may read is not known
        #: in advance. Dropped once the context hooks read it, so the queued timeline never
        #: keeps it.
        self.carrier = carrier


def wanted(cfg: Settings, path: str) -> bool:
    """Whether to record a request for `path` here: no timeline is recording in this context
    already (an outer gateway records it), the path is not excluded, and it is sampled in.
    Gateways ask this before parsing anything else of the request, so a request that is not
    recorded costs only this."""
    cur = _recorder.current()
    if cur is not None and _recorder.timeline_of(cur) is not None:
        return False
    if _left_out.get():  # a gateway around this one decided already: not recorded
        return False
    return _recorder.sampled(cfg, path)


def begin_http(
    cfg: Settings,
    gateway: str,
    request: Request,
    *,
    framework: str,
    protocol: str = "http",
    extra: dict[str, Any] | None = None,
) -> _recorder.Record | None:
    """Start an HTTP (or websocket) timeline for `request`, which `wanted` said to record; its
    root record, or None when not recording. The root's attribute dict belongs to the gateway:
    `end_http` and the adapters add to it (`_recorder.root_attrs`). `extra` becomes the
    timeline's adapter-owned ``extra`` dict."""
    path = H.safe(request.path)
    h = request.headers
    parent = H.traceparent(h.get("traceparent")) if "traceparent" in h else None
    in_flight = STATE.in_flight
    if len(in_flight) > MAX_IN_FLIGHT:
        in_flight.clear()
    attrs: dict[str, Any] = {
        "process.pid": os.getpid(),
        "thread.id": threading.get_ident(),
        "stagetrace.in_flight": len(in_flight) + 1,
    }
    rid = h.get(cfg.request_id_header)
    root = _recorder.begin(
        cfg,
        gateway,
        kind="gateway",
        framework=framework,
        protocol=protocol,
        method=request.method,
        path=path,
        attrs=attrs,
        request_id=H.request_id(rid) if rid else None,
        trace_id=parent[0] if parent else None,
        parent_span_id=parent[1] if parent else None,
        trace_flags=parent[2] if parent else 1,
        tracestate=H.tracestate(h.get("tracestate")) if parent else None,
        sample=False,
    )
    if root is not None:
        tl = _recorder.timeline_of(root)
        if tl is not None:
            in_flight.add(tl)
            if extra is not None:
                tl.extra = extra
            # What the request says about itself is parsed when the timeline is built, on the
            # worker: the request only keeps the raw values (plain strings, never exported raw).
            # Plain values only: a timeline kept by the memory sink must not keep the settings
            # (and through them the sinks of an earlier configuration) alive.
            # One tuple of plain values rather than the `Request` and a tuple around it: one
            # object fewer for the collector to follow in a kept timeline, where each reaches
            # its oldest generation (and brings the next full collection closer).
            tl.deferred = (
                request_attrs,
                (
                    request.method,
                    request.scheme,
                    request.query,
                    request.headers,
                    request.client,
                    request.version,
                    cfg.record_query_values,
                    cfg.record_headers,
                    tl.wall0,
                ),
            )
            if STATE.context_hooks:
                tokens = attach(root, request)
                if tokens:
                    _attached.set((root, tokens))
    request.carrier = None
    return root


#: What `begin_http` keeps of a request for `request_attrs`: method, scheme, query, headers,
#: client, protocol version, then the options ``record_query_values`` and ``record_headers``
#: and the request's start (wall clock, ns).
RequestFacts = tuple[
    str | None,
    str | None,
    str | bytes | None,
    dict[str, Any],
    str | None,
    str | None,
    tuple[str, ...],
    tuple[str, ...],
    int,
]


def request_attrs(args: RequestFacts) -> dict[str, Any]:
    """The gateway attributes OpenTelemetry's HTTP server conventions name, from the raw
    request: method, scheme, the query with its values redacted, server and client address,
    user agent, protocol version, request body size, allowed headers, and the queue time the
    proxy reported."""
    method, scheme, raw_query, h, client, version, query_values, record_headers, wall0 = args
    attrs: dict[str, Any] = {}
    if method is not None:
        attrs["http.request.method"] = method
    if scheme:
        attrs["url.scheme"] = scheme
    query = H.redact_query(raw_query, query_values)
    if query:
        attrs["url.query"] = query
    host, port = H.host_and_port(h.get("host"))
    if host:
        attrs["server.address"] = H.safe(host, 255)
        if port is not None:
            attrs["server.port"] = port
    if client:
        attrs["client.address"] = H.safe(client, 64)
    agent = H.text(h.get("user-agent"), 512)
    if agent:
        attrs["user_agent.original"] = H.safe(agent, 512)
    if version:
        attrs["network.protocol.version"] = version
    size = H.content_length(h.get("content-length"))
    if size is not None:
        attrs["http.request.body.size"] = size
    start = h.get("x-request-start") or h.get("x-queue-start")
    if start:
        waited = H.queue_time_ns(start, wall0)
        if waited is not None:
            attrs["stagetrace.queue_time_ns"] = waited
    if record_headers:
        attrs.update(H.header_attrs(h, record_headers))
    return attrs


def release(root: _recorder.Record | None) -> Any:
    """Undo what the context hooks did when `root`'s request began: call it where the gateway
    gives the caller its context back (in the context that began the request). Returns what
    they had attached (None: nothing), for `again` where the request's work goes on after it
    (a WSGI body)."""
    if root is None:
        return None
    try:
        found = _attached.get()
        if found is not None and found[0] is root:
            _attached.set(None)
            detach(found[1])
            return found[1] or None
    except Exception as exc:
        _recorder.internal_error("context.exit", exc)
    return None


def held(root: _recorder.Record | None) -> Any:
    """What the context hooks attached in this context for `root`'s request (None: nothing),
    to attach again (`again`, `resumed`) where the request's work goes on after `release`."""
    try:
        found = _attached.get()
        if found is not None and found[0] is root and found[1]:
            return found[1]
    except Exception as exc:
        _recorder.internal_error("context.enter", exc)
    return None


def again(tokens: Any) -> Any:
    """Attach what `held` found once more, in the context running now; `kept` (or `detach`)
    undoes it."""
    out = []
    for hook, token in tokens:
        try:
            redo = getattr(hook, "again", None)
            if redo is not None:
                out.append((hook, redo(token)))
        except Exception as exc:
            _recorder.internal_error("context.enter", exc)
    return out


def kept(redone: Any) -> Any:
    """Undo `again`, returning what to attach next time: the context as the work left it (an
    OpenTelemetry span a body made current and holds open across chunks is current again
    when it resumes)."""
    out = []
    for hook, token in redone:
        try:
            out.append((hook, hook.leave(token)))
        except Exception as exc:
            _recorder.internal_error("context.exit", exc)
    return out


def resumed(content: Iterable[Any], tokens: Any) -> Iterator[Any]:
    """Iterate `content` with what the context hooks attached for its request (`held`)
    attached again while each chunk is produced — as the body left it after the previous
    chunk: a WSGI server iterates the body after the gateway gave the caller its context
    back, and the body's work (a query, an OpenTelemetry span) belongs to the request's
    context as the view's did. Between chunks the server's context is its own again.
    Exceptions pass through.

    A hook whose attached context is one context variable's value says so (``context_var``,
    and its token's second item is that value): the usual case, OpenTelemetry's, is then
    three C calls a chunk, not two hook calls — this runs once per chunk of every streamed
    response."""
    it = iter(content)
    var = getattr(tokens[0][0], "context_var", None) if len(tokens) == 1 else None
    if var is not None:
        value = tokens[0][1][1]
        while True:
            reset = var.set(value)
            try:
                chunk = next(it)
            except StopIteration:
                return
            finally:
                value = var.get()
                try:
                    var.reset(reset)
                except ValueError as exc:  # the body switched contexts under us
                    _recorder.internal_error("context.exit", exc)
            yield chunk
    while True:
        redone = again(tokens)
        try:
            chunk = next(it)
        except StopIteration:
            return
        finally:
            tokens = kept(redone)
        yield chunk


def attach(root: _recorder.Record | None, request: Request | None) -> Any:
    """Run the context hooks (`_state.State.context_hooks`) for a recorded request, right after
    its timeline began; returns what `detach` needs. Hooks that fail are reported and skipped."""
    hooks = STATE.context_hooks
    if not hooks or root is None:
        return None
    tl = _recorder.timeline_of(root)
    if tl is None:
        return None
    tokens = []
    for hook in hooks:
        try:
            tokens.append((hook, hook.enter(tl, request)))
        except Exception as exc:
            _recorder.internal_error("context.enter", exc)
    return tokens


def adopt(root: _recorder.Record | None) -> bool:
    """Make `root`'s timeline a child of the span the context hooks find current (their
    ``adopt``), without attaching anything: for a job whose context another instrumentation
    owns. Whether it did; failures are reported, never raised."""
    hooks = STATE.context_hooks
    if not hooks or root is None:
        return False
    tl = _recorder.timeline_of(root)
    if tl is None or tl.parent_local:
        return False
    for hook in hooks:
        try:
            found = getattr(hook, "adopt", None)
            if found is not None and found(tl):
                return True
        except Exception as exc:
            _recorder.internal_error("context.adopt", exc)
    return False


def detach(tokens: Any) -> None:
    """Undo `attach`, in reverse order."""
    if not tokens:
        return
    for hook, token in reversed(tokens):
        try:
            hook.exit(token)
        except Exception as exc:
            _recorder.internal_error("context.exit", exc)


def end_http(
    root: _recorder.Record | None,
    status: int | None = None,
    response_size: int | None = None,
    exc: BaseException | None = None,
) -> None:
    """End an HTTP timeline begun by `begin_http`, recording status and response size. A
    websocket's status is its close code: the timeline's ``status``, but no HTTP status, so
    not ``http.response.status_code`` (the ASGI gateway records ``websocket.close_code``)."""
    if root is None:
        return
    tl = _recorder.timeline_of(root)
    if tl is None:
        return
    if status is not None:
        tl.status = status
    attrs = _recorder.root_attrs(root)
    if tl.status is not None and tl.protocol == "http":
        attrs["http.response.status_code"] = tl.status
    if response_size is not None:
        attrs["http.response.body.size"] = response_size
    try:
        _recorder.end(root, exc)
    finally:  # after: whoever waits for it to end (the pytest plugin) then has it
        STATE.in_flight.discard(tl)
