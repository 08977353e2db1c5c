"""Outbound HTTP calls as ``http.client`` stages: httpx and httpx2 (sync and async), requests.

Every request these libraries send goes through ``Client.send``, ``AsyncClient.send`` or
``requests.Session.send``. The stage is named ``METHOD host`` and
carries scheme, host, port, path, the query's parameter *names* (never their values), the status
code and any error; the URL is taken apart after the request, not on it. A recorded request's
calls carry a W3C ``traceparent`` naming their http.client stage (option
``propagate_traceparent``, on by default with the otel sink; a header the caller set is
never replaced) — or, when
the otel sink runs with another OpenTelemetry propagator (``OTEL_PROPAGATORS=b3``, ...), that
propagator's headers. Installed
by the web adapters (reference-counted); a library that is not installed is skipped. Beside
OpenTelemetry's requests instrumentation, which wraps ``Session.send`` too, ours stays the
outer wrapper whichever is installed first (`_patch_otel_requests`).

The headers are added per *hop*, one level down (httpx's ``Client._send_single_request``,
requests' ``HTTPAdapter.send``), and taken off again as soon as that hop is sent: ``send``
follows redirects (and httpx's auth flows) itself, building each next request as a copy of the
last, so headers put on above it would ride along on every copy the client hands back
(``response.request``, ``next_request``) and go out again with a later retry, in another
trace or in none.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

import wrapt

from .. import _recorder
from .._http.headers import redact_query, safe
from .._patching import Patcher, leave
from .._state import STATE

__all__ = ["install", "uninstall"]

_patcher = Patcher("http clients")
_users = 0


def _attrs(raw: tuple[str, str, list[Any]]) -> dict[str, Any]:
    method, url, outcome = raw
    parts = urlsplit(url)
    attrs: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": parts.scheme,
        "server.address": parts.hostname or "",
        "url.path": safe(parts.path or "/"),
    }
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        attrs["server.port"] = port
    query = redact_query(parts.query)
    if query:
        attrs["url.query"] = query
    if outcome and outcome[0] is not None:
        attrs["http.response.status_code"] = outcome[0]
    return attrs


def _name(raw: tuple[str, str]) -> str:
    """``METHOD host``; without a host, ``METHOD path`` (never the query or credentials)."""
    method, url = raw
    parts = urlsplit(url)
    return f"{method} {parts.hostname or safe(parts.path or '/')}"


_SITE = "httpclients.send"
_TRACEPARENT = "httpclients.traceparent"


def _begin(request: Any, url_of: Any, outcome: list[Any]) -> Any:
    try:
        method, url = str(request.method), str(url_of(request))
        return _recorder.enter(
            "http.client", (_name, (method, url)), (_attrs, (method, url, outcome))
        )
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        return None


def _propagate(request: Any) -> dict[str, str] | None:
    """Trace context for the server one hop calls, guarded (`_add`); None when nothing was
    added."""
    try:
        return _add(request)
    except Exception as exc:
        _recorder.internal_error(_TRACEPARENT, exc)
        return None


def _add(request: Any) -> dict[str, str] | None:
    """W3C trace context for the server we call: a ``traceparent`` naming the stage sending
    this hop, the http.client stage (and the request's ``tracestate``), unless the caller set
    one. Returns the headers added, which `_unpropagate` takes off the request object again
    once the hop is sent: a request object sent again (or outside any request) must not carry
    this call's trace context."""
    tl = _recorder.live()
    if tl is None or not tl.settings.propagate_traceparent or tl.discarded:
        return None
    headers = request.headers
    propagation = STATE.propagation
    if propagation is None and "traceparent" in headers:
        return None
    span = _recorder.current_span()
    if span is None:
        return None
    if propagation is not None:  # the application's OpenTelemetry propagator (b3, jaeger...)
        return propagation.inject(headers, span, tl.tracestate)  # type: ignore[no-any-return]
    trace_id, span_id, flags = span
    added = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"}
    if tl.tracestate and "tracestate" not in headers:
        added["tracestate"] = tl.tracestate
    for name, value in added.items():
        headers[name] = value
    return added


def _unpropagate(request: Any, added: dict[str, str]) -> None:
    try:
        headers = request.headers
        for name, value in added.items():
            if headers.get(name) == value:
                del headers[name]
    except Exception as exc:
        _recorder.internal_error(_TRACEPARENT, exc)


def _status(outcome: list[Any], response: Any) -> None:
    try:
        status = getattr(response, "status_code", None)
        outcome[0] = status if type(status) is int else None
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)


def _wrap_sync(orig: Any, url_of: Any, unhopped: Any = None) -> Any:
    """The client's ``send``: the http.client stage. With `unhopped(client, request)` true,
    the hops are not ours to see (a transport adapter not derived from the one whose send we
    wrap): the trace context goes on here, for the whole call, as it did before hops."""

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _patcher.applied:
            return orig(self, request, *args, **kwargs)
        outcome: list[Any] = [None]
        rec = _begin(request, url_of, outcome)
        added = _propagate(request) if unhopped is not None and unhopped(self, request) else None
        try:
            response = orig(self, request, *args, **kwargs)
        except BaseException as exc:
            if added:
                _unpropagate(request, added)
            leave(_SITE, rec, exc)
            raise
        if added:
            _unpropagate(request, added)
        _status(outcome, response)
        leave(_SITE, rec)
        return response

    return send


def _unhopped_requests(session: Any, request: Any) -> bool:
    """Whether the adapter sending `request` is not an ``HTTPAdapter`` whose ``send`` is our
    hop wrapper: a ``BaseAdapter`` of its own (requests_mock's, a Unix-socket adapter), one
    overriding ``send``, or ``responses`` having replaced it in a test."""
    try:
        adapter = session.get_adapter(url=request.url)
        return not getattr(type(adapter).send, "__stagetrace_patch__", False)
    except Exception:  # no adapter for this URL: requests raises that itself
        return False


def _wrap_async(orig: Any, url_of: Any) -> Any:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _patcher.applied:
            return await orig(self, request, *args, **kwargs)
        outcome: list[Any] = [None]
        rec = _begin(request, url_of, outcome)
        try:
            response = await orig(self, request, *args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        _status(outcome, response)
        leave(_SITE, rec)
        return response

    return send


def _hop_sync(orig: Any) -> Any:
    """One hop: the trace context goes on the request object just for the time it is sent."""

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _patcher.applied:
            return orig(self, request, *args, **kwargs)
        added = _propagate(request)
        if not added:
            return orig(self, request, *args, **kwargs)
        try:
            response = orig(self, request, *args, **kwargs)
        except BaseException:
            _unpropagate(request, added)
            raise
        _unpropagate(request, added)
        return response

    return send


def _hop_async(orig: Any) -> Any:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _patcher.applied:
            return await orig(self, request, *args, **kwargs)
        added = _propagate(request)
        if not added:
            return await orig(self, request, *args, **kwargs)
        try:
            response = await orig(self, request, *args, **kwargs)
        except BaseException:
            _unpropagate(request, added)
            raise
        _unpropagate(request, added)
        return response

    return send


def _url(request: Any) -> str:
    return str(request.url)


def _patch_httpx(module: Any) -> None:
    _patcher.wrap(module.Client, "send", lambda orig: _wrap_sync(orig, _url))
    _patcher.wrap(module.AsyncClient, "send", lambda orig: _wrap_async(orig, _url))
    _patcher.wrap(module.Client, "_send_single_request", _hop_sync)
    _patcher.wrap(module.AsyncClient, "_send_single_request", _hop_async)


def _patch_requests(module: Any) -> None:
    _patch_session(module.Session)
    # Each redirect goes through Session.send again (a stage of its own, inside the first).
    _patcher.wrap(module.adapters.HTTPAdapter, "send", _hop_sync)


#: ``requests.Session`` and the ``send`` wrapper we last put on it.
_session: tuple[Any, Any] = (None, None)


def _patch_session(session: Any) -> None:
    global _session
    _patcher.wrap(session, "send", lambda orig: _wrap_sync(orig, _url, _unhopped_requests))
    _session = (session, vars(session)["send"])


def _patch_otel_requests(module: Any) -> None:
    """OpenTelemetry's requests instrumentation wraps ``Session.send`` too, and the wrapper
    put on last runs first. Ours must run first: OpenTelemetry's span is then a child of the
    http.client stage (as its httpx instrumentation's always is: that one works in the
    transport). Run first itself, it starts its span before the stage, beside it, and the
    called service becomes its child, not the stage's. So while ours is on top, its
    instrumentor's ``instrument`` and ``uninstrument`` work on ``Session.send`` with ours
    taken off, and ours goes back on top afterwards. (``uninstrument`` puts back what its
    wrapper wrapped when it finds its marker on ``Session.send``; ``functools.wraps`` copies
    that marker onto ours, so with ours on top it would take ours off and leave its own.)"""
    instrumentor = module.RequestsInstrumentor
    _patcher.wrap(instrumentor, "_instrument", _beneath_ours)
    _patcher.wrap(instrumentor, "_uninstrument", _beneath_ours)


def _beneath_ours(orig: Any) -> Any:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        session, ours = _session
        if not _patcher.applied or session is None or vars(session).get("send") is not ours:
            return orig(self, *args, **kwargs)  # another tool's wrapper on top: its order
        session.send = ours.__wrapped__
        try:
            return orig(self, *args, **kwargs)
        finally:
            try:
                _patch_session(session)
            except Exception as exc:
                _recorder.internal_error("httpclients.patch.requests", exc)

    return call


# httpx2 is httpx's successor with the same client API.
_LIBRARIES = {
    "httpx": _patch_httpx,
    "httpx2": _patch_httpx,
    "requests": _patch_requests,
    "opentelemetry.instrumentation.requests": _patch_otel_requests,
}
_patched: set[str] = set()


def _when_imported(name: str) -> None:
    def hook(module: Any) -> None:
        if _users and name not in _patched:
            _patched.add(name)
            try:
                _LIBRARIES[name](module)
            except Exception as exc:  # a version without what we wrap: the import goes on
                _recorder.internal_error(f"httpclients.patch.{name}", exc)

    if name in sys.modules:
        hook(sys.modules[name])
    else:
        wrapt.register_post_import_hook(hook, name)


def install() -> None:
    """Patch the HTTP client libraries — now if imported, else when they are (once, however
    many adapters ask)."""
    global _users
    _users += 1
    if _users == 1:
        for name in _LIBRARIES:
            _when_imported(name)


def uninstall() -> None:
    """Undo `install` once no adapter needs it any more."""
    global _users, _session
    _users = max(0, _users - 1)
    if _users == 0:
        _patcher.undo()
        _patched.clear()
        _session = (None, None)
