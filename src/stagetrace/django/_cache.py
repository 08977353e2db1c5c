"""``cache`` and ``session`` stages.

Cache backends are created lazily by ``caches`` (``CacheHandler.create_connection``); the first
time a backend class is created its operations are patched, on the class that defines each one,
so every backend — LocMem, database, file, memcached, Redis, third-party — is covered. A call
that an operation makes to another on the same backend (``get_or_set`` calling ``get``) is part
of the outer stage, not a second one.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from .. import _recorder
from .._patching import leave
from ._common import patcher

_SITE = "django.cache"

CACHE_OPS = (
    "get",
    "set",
    "add",
    "delete",
    "touch",
    "incr",
    "decr",
    "has_key",
    "clear",
    "get_many",
    "set_many",
    "delete_many",
    "get_or_set",
)
_aliases: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_patched_classes: set[type] = set()
_MISSING = object()


def _cache_name(backend: Any, op: str) -> str:
    alias = _aliases.get(backend)
    return f"{alias}.{op}" if alias else op


def _size(value: Any) -> int | None:
    try:
        n = len(value)
    except Exception:
        return None
    return n if type(n) is int else None


def _cache_attrs(self: Any, op: str, args: Any, kwargs: Any, result: Any) -> dict[str, Any]:
    """What a cache call tells, computed defensively: a backend may return anything."""
    attrs: dict[str, Any] = {"cache.backend": type(self).__name__, "cache.operation": op}
    if op == "get":
        default = args[1] if len(args) > 1 else kwargs.get("default")
        attrs["cache.hit"] = result is not default
    elif op == "get_many":
        keys = _size(args[0] if args else kwargs.get("keys", ()))
        if keys is not None:
            attrs["cache.keys"] = keys
        hits = _size(result)
        if hits is not None:
            attrs["cache.hits"] = hits
    elif op in ("set_many", "delete_many"):
        keys = _size(args[0] if args else kwargs.get("data", kwargs.get("keys", ())))
        if keys is not None:
            attrs["cache.keys"] = keys
    elif op == "has_key":
        attrs["cache.hit"] = result is True or (type(result) is int and result > 0)
    return attrs


def _cache_method(op: str, orig: Any) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None:
            return orig(self, *args, **kwargs)
        try:
            # once: a backend method calling another of its own (get_or_set -> get) is one stage
            rec = _recorder.enter_owned("cache", _cache_name(self, op), self, once=True)
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
            rec = None
        try:
            result = orig(self, *args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        if rec is not None:
            try:
                _recorder.set_attrs(rec, _cache_attrs(self, op, args, kwargs, result))
            except Exception as exc:
                _recorder.internal_error(_SITE, exc)
        leave(_SITE, rec)
        return result

    return method


def _patch_ops(cls: type, ops: tuple[str, ...], make: Any, stop: type = object) -> None:
    """Patch each operation on the class of `cls`'s MRO that defines it (once per class)."""
    if cls in _patched_classes:
        return
    _patched_classes.add(cls)
    for op in ops:
        owner = next((k for k in cls.__mro__ if op in vars(k)), None)
        if owner is None or owner is object or owner is stop or (owner, op) in _patched_methods:
            continue
        _patched_methods.add((owner, op))
        patcher.wrap(owner, op, functools.partial(make, op))


_patched_methods: set[tuple[type, str]] = set()


def _session_method(op: str, orig: Any) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None:
            return orig(self, *args, **kwargs)
        try:
            rec = _recorder.enter_owned(
                "session", op, self, {"session.engine": type(self).__module__}, once=True
            )
        except Exception as exc:
            _recorder.internal_error("django.session", exc)
            rec = None
        try:
            result = orig(self, *args, **kwargs)
        except BaseException as exc:
            leave("django.session", rec, exc)
            raise
        leave("django.session", rec)
        return result

    return method


def install() -> None:
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.core.cache import CacheHandler, caches

    _patched_classes.clear()
    _patched_methods.clear()

    def create_connection(orig: Any) -> Any:
        def create_connection(self: Any, alias: str) -> Any:
            backend = orig(self, alias)
            try:
                _aliases[backend] = alias
                _patch_ops(type(backend), CACHE_OPS, _cache_method)
            except Exception as exc:
                _recorder.internal_error(_SITE, exc)
            return backend

        return create_connection

    patcher.wrap(CacheHandler, "create_connection", create_connection)
    from django.conf import settings

    if settings.configured:  # else no backend exists yet: each is patched when created
        for alias in caches:
            if hasattr(caches._connections, alias):  # what all(initialized_only=True) checks
                backend = caches[alias]
                _aliases[backend] = alias
                _patch_ops(type(backend), CACHE_OPS, _cache_method)

    def session_init(orig: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            orig(self, *args, **kwargs)
            store = getattr(self, "SessionStore", None)
            if isinstance(store, type):
                from django.contrib.sessions.backends.base import SessionBase

                _patch_ops(store, ("load", "save", "delete"), _session_method, SessionBase)

        return __init__

    patcher.wrap(SessionMiddleware, "__init__", session_init)
