"""Middleware stages, each split into its inbound and outbound halves.

``BaseHandler.load_middleware`` builds the chain once: for each ``settings.MIDDLEWARE`` entry it
calls ``import_string(path)`` to get the factory, reads its ``sync_capable``/``async_capable``
flags, calls ``factory(get_response)``, and wraps the instance. We stand in for
``import_string`` inside that module only, returning a transparent proxy of the factory:

* the factory proxy forwards every attribute (the capability flags included), so Django adapts
  the chain exactly as it would without stagetrace — no extra thread hops;
* calling it builds the real middleware around the next layer: a synchronous middleware's
  link (below) directly, anything else through a handler that marks the moment the middleware
  calls the next layer (end of the inbound phase) and the moment that call returns (start of
  the outbound phase);
* the instance proxy forwards every attribute, ``isinstance`` and the coroutine markers, and
  records one ``middleware`` stage per call; its ``process_view``, ``process_exception`` and
  ``process_template_response`` hooks are recorded as ``<path>.<hook>`` stages;
* Django then wraps each middleware in ``convert_exception_to_response``, which we also stand
  in for inside that module: for a synchronous middleware it makes a *link* that records the
  middleware's stage and its caller's in/out split in one recorder frame, with Django's own
  exception conversion inside it — one frame a layer where Django's wrapper, the proxy's
  ``__call__``, the recorder and the handler made four.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable
from typing import Any

import wrapt
from asgiref.sync import iscoroutinefunction

from .. import _recorder
from .._patching import leave
from ._common import hop_started, patcher
from ._common import thread_wait as _thread_wait

_SITE = "django.middleware"
_hop = hop_started.get
_current = _recorder.current
_run_link = _recorder.run_link

# The wrappers below run once per middleware per request, so they inline what elsewhere would be
# helper calls (a Python call costs more than the recorder's work itself); the guard rule is the
# same: stagetrace's failures are reported, the request goes on.


def _enter(name: str) -> Any:
    try:
        return _recorder.enter_middleware(name)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        return None


def _inner_handler(get_response: Callable[..., Any], path: str) -> Callable[..., Any]:
    """The `get_response` a middleware receives: marks the in/out split of its stage (in one
    recorder frame: this runs once per middleware per request). Same sync/async nature as the
    handler Django built, so the middleware adapts itself the same."""
    try:
        inner = _recorder.next_layer(get_response, path, _SITE, iscoroutinefunction(get_response))
    except Exception as exc:  # the middleware gets Django's handler: no in/out split
        _recorder.internal_error(_SITE, exc)
        return get_response
    functools.update_wrapper(inner, get_response, updated=())
    return inner


def _hook(method: Any, name: str, short_if_result: bool) -> Any:
    """A `process_*` hook as a bound method of the same instance (Django reads ``__self__``),
    with the same sync/async nature."""
    func = method.__func__ if isinstance(method, types.MethodType) else method
    owner = getattr(method, "__self__", None)

    if iscoroutinefunction(method):

        async def hook(_self: Any, *args: Any, **kwargs: Any) -> Any:
            if not patcher.applied or _recorder.current() is None:
                return await method(*args, **kwargs)
            rec = _enter(name)
            try:
                result = await method(*args, **kwargs)
            except BaseException as exc:
                leave(_SITE, rec, exc)
                raise
            _short(rec, short_if_result and result is not None)
            leave(_SITE, rec)
            return result

    else:

        def hook(_self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            if not patcher.applied or _recorder.current() is None:
                return method(*args, **kwargs)
            rec = _enter(name)
            if _hop() is not None:
                _thread_wait(rec)
            try:
                result = method(*args, **kwargs)
            except BaseException as exc:
                leave(_SITE, rec, exc)
                raise
            _short(rec, short_if_result and result is not None)
            leave(_SITE, rec)
            return result

    functools.update_wrapper(hook, func, updated=())
    return types.MethodType(hook, owner) if owner is not None else functools.partial(hook, None)


def _short(rec: Any, short: bool) -> None:
    try:
        _recorder.set_short_circuit(rec, short)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)


class _MiddlewareProxy(wrapt.ObjectProxy):
    """Stands in for a middleware instance; forwards everything, records each call."""

    def __init__(self, wrapped: Any, path: str) -> None:
        super().__init__(wrapped)
        self._self_path = path
        self._self_hooks: dict[str, Any] = {}

    def _self_hook(self, hook: str) -> Any:
        found = self._self_hooks.get(hook)
        if found is None:
            method = getattr(self.__wrapped__, hook)  # AttributeError: hasattr() stays false
            found = _hook(method, f"{self._self_path}.{hook}", hook != "process_template_response")
            self._self_hooks[hook] = found
        return found

    @property
    def process_view(self) -> Any:
        return self._self_hook("process_view")

    @property
    def process_exception(self) -> Any:
        return self._self_hook("process_exception")

    @property
    def process_template_response(self) -> Any:
        return self._self_hook("process_template_response")


class _SyncMiddleware(_MiddlewareProxy):
    def __call__(self, request: Any) -> Any:
        if not patcher.applied or _current() is None:
            return self.__wrapped__(request)
        if _hop() is not None:
            return self._self_after_hop(request)
        # enter, call and leave in one recorder frame
        return _run_link(self._self_path, self.__wrapped__, request, _SITE, None)

    def _self_after_hop(self, request: Any) -> Any:
        """The call that follows a sync_to_async hop: the stage also records how long the hop
        waited for its thread."""
        try:
            rec = _recorder.enter_middleware(self._self_path)
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
            rec = None
        _thread_wait(rec)
        try:
            response = self.__wrapped__(request)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        leave(_SITE, rec)
        return response


class _AsyncMiddleware(_MiddlewareProxy):
    async def __call__(self, request: Any) -> Any:
        if not patcher.applied or _recorder.current() is None:
            return await self.__wrapped__(request)
        try:
            rec = _recorder.enter_middleware(self._self_path)
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
            rec = None
        try:
            response = await self.__wrapped__(request)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        leave(_SITE, rec)
        return response


class _MiddlewareFactory(wrapt.ObjectProxy):
    """Stands in for a middleware class or factory in ``load_middleware``."""

    def __init__(self, wrapped: Any, path: str) -> None:
        super().__init__(wrapped)
        self._self_path = path

    def __call__(self, get_response: Any, *args: Any, **kwargs: Any) -> Any:
        path = self._self_path
        caller = _caller_cell(get_response)
        if caller is not None:
            # The next layer is one of our links, as it is: it marks this middleware's in/out
            # split itself (the last factory given it is the one that keeps it: a middleware
            # that raised MiddlewareNotUsed passed it on).
            caller[0] = path
        else:
            # Anything else (the view's layer; a link Django adapted with a thread hop, whose
            # wrapper carries the link's attributes): a handler marks the split.
            get_response = _inner_handler(get_response, path)
        instance = self.__wrapped__(get_response, *args, **kwargs)
        if instance is None:
            return None  # Django reports "Middleware factory ... returned None."
        proxy = _AsyncMiddleware if _is_async(instance) else _SyncMiddleware
        return proxy(instance, path)


def _is_async(instance: Any) -> bool:
    """Whether calling the middleware `instance` makes a coroutine: a coroutine function (or
    one marked so), or an instance of a class whose ``__call__`` is one — unmarked, Django
    calls it as a sync function and awaits what it returns, and its stage must last as long.
    Its proxy stays what Django sees as a sync function: Django's own wrapper is built for it.
    """
    if iscoroutinefunction(instance):
        return True
    if isinstance(instance, types.FunctionType) or not callable(instance):
        return False
    return iscoroutinefunction(type(instance).__call__)


def _link(proxy: _SyncMiddleware, exception_module: Any) -> Callable[[Any], Any]:
    """What ``convert_exception_to_response`` makes of a synchronous middleware: Django's
    link (exceptions turned into responses by ``response_for_exception``) that also records
    the middleware's stage and its caller's in/out split, in one recorder frame
    (`_recorder.run_link`) — where Django's link, our proxy's ``__call__``, the recorder's frame and
    the caller's handler made four. Not recording, it is Django's link around the middleware
    itself (one frame, where it was two); after a thread hop, Django's link around the proxy,
    as before. Its caller, the middleware whose factory it is given to, is named later
    (`_caller_cell`)."""
    path = proxy._self_path
    middleware = proxy.__wrapped__
    run_link = _recorder.run_link
    caller: list[str | None] = [None]

    def convert(request: Any, exc: Exception) -> Any:
        return exception_module.response_for_exception(request, exc)

    def link(request: Any) -> Any:
        if _hop() is None:
            if _current() is not None and patcher.applied:
                return run_link(path, middleware, request, _SITE, convert, caller[0])
            layer = middleware  # not recording: Django's link, straight to the middleware
        else:
            layer = proxy  # after a thread hop: the proxy records how long it waited
        try:
            response = layer(request)
        except Exception as exc:
            response = exception_module.response_for_exception(request, exc)
        return response

    functools.update_wrapper(link, proxy)
    _callers[link] = caller
    return link


#: The caller cell of each link `_link` made, by the link itself (not by an attribute: asgiref's
#: and ``functools.wraps``'s wrappers copy a function's attributes, and must not pass for it).
_callers: weakref.WeakKeyDictionary[Any, list[str | None]] = weakref.WeakKeyDictionary()


def _caller_cell(get_response: Any) -> list[str | None] | None:
    """The cell naming the caller of `get_response`, if it is one of our links as it is."""
    try:
        return _callers.get(get_response)
    except TypeError:  # not weakly referenceable, or unhashable: not a link
        return None


def install() -> None:
    from django.core.handlers import base
    from django.core.handlers import exception as exception_module

    def convert_exception_to_response(orig: Any) -> Any:
        def convert_exception_to_response(get_response: Any) -> Any:
            if patcher.applied and type(get_response) is _SyncMiddleware:
                try:
                    return _link(get_response, exception_module)
                except Exception as exc:
                    _recorder.internal_error(_SITE, exc)
            return orig(get_response)

        return convert_exception_to_response

    # ``load_middleware`` calls it by the name ``base`` imported; the name in its own module is
    # made the same object, so that both still name one function (code checking that Django's
    # handler was not patched behind its back compares them).
    same = base.convert_exception_to_response is exception_module.convert_exception_to_response
    patcher.wrap(base, "convert_exception_to_response", convert_exception_to_response)
    if same:
        patcher.replace(
            exception_module, "convert_exception_to_response", base.convert_exception_to_response
        )

    def import_string(orig: Any) -> Any:
        def import_string(dotted_path: str) -> Any:
            target = orig(dotted_path)
            if not patcher.applied:
                return target
            # Interned-by-identity: records compare names with `is` (see _recorder.calls_next).
            return _MiddlewareFactory(target, str(dotted_path))

        return import_string

    patcher.wrap(base, "import_string", import_string)
