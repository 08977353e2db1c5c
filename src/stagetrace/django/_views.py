"""URL resolution (``route``), the view (``view``), the error response Django builds from an
exception (404/500 handlers and their templates), and asgiref's thread hop."""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import iscoroutinefunction

from .. import _recorder
from .._http.headers import safe
from .._names import CACHED_METHODS, remember
from .._patching import leave
from ._common import hop_started, patcher, qualname
from ._common import thread_wait as _thread_wait

_SITE = "django.view"
_hop = hop_started.get


def _route_attrs(match: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"http.route": str(match.route)}
    if match.view_name:
        attrs["django.view_name"] = str(match.view_name)
    if match.namespace:
        attrs["django.namespace"] = str(match.namespace)
    return attrs


def view_name(view_and_method: tuple[Any, str | None]) -> str:
    """``module.function`` for function views; ``module.Class.method`` for class-based views
    (the handler the method dispatches to, or the DRF viewset action)."""
    view, method = view_and_method
    func = view
    while isinstance(func, functools.partial):
        func = func.func
    cls = getattr(func, "view_class", None) or getattr(func, "cls", None)
    if cls is None:
        return qualname(func)
    made_for = _function_of(cls)
    if made_for is not None:
        return made_for
    handler = None
    actions = getattr(func, "actions", None)
    if method:
        m = method.lower()
        if isinstance(actions, dict):
            handler = actions.get(m)
        elif hasattr(cls, m):
            handler = m
        elif m == "head" and hasattr(cls, "get"):
            handler = "get"
        else:
            handler = "http_method_not_allowed"
    return f"{qualname(cls)}.{handler}" if handler else qualname(cls)


def _function_of(cls: Any) -> str | None:
    """``module.function`` when `cls` is a class made around a view function and named after
    it (DRF's ``@api_view`` names each ``WrappedAPIView`` class after its function, and only
    its ``__name__``): the function is the view. None for any other class."""
    name = getattr(cls, "__name__", None)
    qual = getattr(cls, "__qualname__", None)
    if not isinstance(name, str) or not isinstance(qual, str) or qual.rpartition(".")[2] == name:
        return None
    module = getattr(cls, "__module__", None)
    return f"{module}.{name}" if isinstance(module, str) else name


_views: dict[tuple[int, Any], tuple[Any, tuple[str, bool]]] = {}


def _view_facts(view: Any, method: Any) -> tuple[str, bool]:
    """The stage name of `view` for `method` and whether the view is a coroutine function,
    cached per view (asgiref's `iscoroutinefunction` costs five Python calls; Django asks
    about the view on every request) without keeping the view alive (`remember`)."""
    key = (id(view), method)
    entry = _views.get(key)
    if entry is not None and entry[0]() is view:
        return entry[1]
    facts = (view_name((view, method)), iscoroutinefunction(view))
    return remember(_views, key, view, facts) if method in CACHED_METHODS else facts


def _enter(kind: str, name: Any) -> Any:
    try:
        return _recorder.enter(kind, name)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        return None


def _timed_view(callback: Any, name: str, is_async: bool) -> Any:
    """The view as Django will call it, recorded; same sync/async nature as `callback`."""
    if is_async:

        async def view(*args: Any, **kwargs: Any) -> Any:
            rec = _enter("view", name)
            try:
                response = await callback(*args, **kwargs)
            except BaseException as exc:
                leave(_SITE, rec, exc)
                raise
            leave(_SITE, rec)
            return response

        return view

    def sync_view(*args: Any, **kwargs: Any) -> Any:
        try:
            rec = _recorder.enter("view", name)
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
            rec = None
        if _hop() is not None:
            _thread_wait(rec)
        try:
            response = callback(*args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        leave(_SITE, rec)
        return response

    return sync_view


def _exception_name(exc: Any) -> str:
    return f"error response {type(exc).__name__}"


def install() -> None:
    from asgiref.sync import SyncToAsync
    from django.core.handlers import base, exception

    def resolve_request(orig: Any) -> Any:
        def resolve_request(self: Any, request: Any) -> Any:
            if _recorder.current() is None or not patcher.applied:
                return orig(self, request)
            rec = _enter("route", "<unresolved>")
            try:
                match = orig(self, request)
            except BaseException as exc:
                try:
                    _recorder.set_attrs(rec, {"url.path": safe(str(request.path_info))})
                except Exception as e:
                    _recorder.internal_error("django.route", e)
                leave(_SITE, rec, exc)
                raise
            try:
                route = str(match.route)
                try:
                    attrs = _route_attrs(match)
                except Exception as exc:  # the stage keeps its name, without attributes
                    _recorder.internal_error("django.route", exc)
                    attrs = None
                _recorder.set_name(rec, route or "<root>", attrs)
                _recorder.set_route(route)
            except Exception as exc:
                _recorder.internal_error("django.route", exc)
            leave(_SITE, rec)
            return match

        return resolve_request

    def make_view_atomic(orig: Any) -> Any:
        # The callback Django is about to call, after it made it atomic if configured; the
        # user's view object itself is never replaced (csrf_exempt, identity checks hold).
        def make_view_atomic(self: Any, view: Any) -> Any:
            callback = orig(self, view)
            if not patcher.applied:
                return callback
            try:
                tl = _recorder.live()
                if tl is None:
                    return callback
                name, is_async = _view_facts(view, tl.method)
                if callback is not view:  # made atomic: a new function around the view
                    is_async = iscoroutinefunction(callback)
            except Exception as exc:
                _recorder.internal_error("django.view_name", exc)
                return callback
            return _timed_view(callback, name, is_async)

        return make_view_atomic

    patcher.wrap(base.BaseHandler, "resolve_request", resolve_request)
    patcher.wrap(base.BaseHandler, "make_view_atomic", make_view_atomic)

    def response_for_exception(orig: Any) -> Any:
        # Turning an exception into a response (404/403/400/500 handlers, their templates, the
        # technical debug page) is work of its own, not the innermost middleware's.
        def response_for_exception(request: Any, exc: Any) -> Any:
            if _recorder.current() is None or not patcher.applied:
                return orig(request, exc)
            rec = _enter("view", _exception_name(exc))
            try:
                response = orig(request, exc)
            except BaseException as e:
                leave(_SITE, rec, e)
                raise
            try:
                _recorder.set_attrs(rec, {"exception.type": qualname(type(exc))})
            except Exception as e:
                _recorder.internal_error(_SITE, e)
            leave(_SITE, rec)
            return response

        return response_for_exception

    patcher.wrap(exception, "response_for_exception", response_for_exception)

    def sync_to_async_call(orig: Any) -> Any:
        async def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None:
                return await orig(self, *args, **kwargs)
            token = hop_started.set(_recorder.now())
            try:
                return await orig(self, *args, **kwargs)
            finally:
                hop_started.reset(token)

        return __call__

    patcher.wrap(SyncToAsync, "__call__", sync_to_async_call)
