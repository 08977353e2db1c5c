"""URL resolution (``route``), the view (``view``), and asgiref's thread hop."""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import iscoroutinefunction

from .. import _recorder
from ._common import hop_started, patcher, qualname, take_thread_wait

enter, leave = _recorder.enter, _recorder.exit
_get = _recorder._get


def _route_attrs(match: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"http.route": match.route}
    if match.view_name:
        attrs["django.view_name"] = match.view_name
    if match.namespace:
        attrs["django.namespace"] = match.namespace
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


def _timed_view(callback: Any, name: tuple[Any, Any]) -> Any:
    """The view as Django will call it, recorded; same sync/async nature as `callback`."""
    if iscoroutinefunction(callback):

        async def view(*args: Any, **kwargs: Any) -> Any:
            rec = enter("view", name)
            try:
                response = await callback(*args, **kwargs)
            except BaseException as exc:
                leave(rec, exc)
                raise
            leave(rec)
            return response

        return view

    def sync_view(*args: Any, **kwargs: Any) -> Any:
        rec = enter("view", name)
        take_thread_wait(rec)
        try:
            response = callback(*args, **kwargs)
        except BaseException as exc:
            leave(rec, exc)
            raise
        leave(rec)
        return response

    return sync_view


def install() -> None:
    from asgiref.sync import SyncToAsync
    from django.core.handlers import base

    def resolve_request(orig: Any) -> Any:
        def resolve_request(self: Any, request: Any) -> Any:
            if _get() is None or not patcher.applied:
                return orig(self, request)
            rec = enter("route", "<unresolved>")
            try:
                match = orig(self, request)
            except BaseException as exc:
                if rec is not None:
                    rec[_recorder.ATTRS] = {"http.route": None, "url.path": request.path_info}
                leave(rec, exc)
                raise
            if rec is not None:
                route = match.route
                rec[_recorder.NAME] = route or "<root>"
                rec[_recorder.ATTRS] = (_route_attrs, match)
                rec[_recorder.TL].route = route
            leave(rec)
            return match

        return resolve_request

    def make_view_atomic(orig: Any) -> Any:
        # The callback Django is about to call, after it made it atomic if configured; the
        # user's view object itself is never replaced (csrf_exempt, identity checks hold).
        def make_view_atomic(self: Any, view: Any) -> Any:
            callback = orig(self, view)
            cur = _get()
            if cur is None or not patcher.applied:
                return callback
            method = getattr(cur[_recorder.TL], "method", None)
            return _timed_view(callback, (view_name, (view, method)))

        return make_view_atomic

    patcher.wrap(base.BaseHandler, "resolve_request", resolve_request)
    patcher.wrap(base.BaseHandler, "make_view_atomic", make_view_atomic)

    def sync_to_async_call(orig: Any) -> Any:
        async def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _get() is None:
                return await orig(self, *args, **kwargs)
            token = hop_started.set(_recorder.now())
            try:
                return await orig(self, *args, **kwargs)
            finally:
                hop_started.reset(token)

        return __call__

    patcher.wrap(SyncToAsync, "__call__", sync_to_async_call)
