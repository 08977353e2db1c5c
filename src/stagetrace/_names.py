"""Names for the application's objects, as stages show them."""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Any, TypeVar

T = TypeVar("T")


def qualname(obj: Any) -> str:
    """``module.Qualified.name`` of a class or function (builtins unqualified; partials
    unwrapped)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(name, str):
        name = type(obj).__qualname__
    return (
        name if module in (None, "builtins") or not isinstance(module, str) else f"{module}.{name}"
    )


#: How many entries a `remember` cache holds before it is pruned.
MAX_REMEMBERED = 4096
#: The request methods a cache of names by view and method takes: any other token a client
#: sends is named without being cached (a client could otherwise fill the cache at will).
CACHED_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY", None)
)


def remember(cache: dict[Any, tuple[Any, T]], key: Any, obj: Any, value: T) -> T:
    """Keep `value`, a fact about the application's object `obj` (its stage name), in `cache`
    under `key` (made from ``id(obj)``) without keeping `obj` alive: the entry holds a weak
    reference, which a lookup checks::

        entry = cache.get(key)
        if entry is not None and entry[0]() is obj: ...  # entry[1] is the value

    An app built per test (a factory's closures, a class defined in a function) is then freed
    with its test. An object that takes no weak reference (a class with ``__slots__`` and no
    ``__weakref__``) is held, as any cache would, within the bound: past `MAX_REMEMBERED`
    entries, those of freed objects are dropped, and all of them if that is not enough — on a
    snapshot, so that requests filling the cache on other threads meanwhile are never in the
    way. Returns `value`."""
    try:
        ref: Any = weakref.ref(obj)
    except TypeError:
        ref = _Held(obj)
    if len(cache) >= MAX_REMEMBERED:
        for k, (r, _) in list(cache.items()):
            if r() is None:
                cache.pop(k, None)
        if len(cache) >= MAX_REMEMBERED // 2:
            cache.clear()
    cache[key] = (ref, value)
    return value


class _Held:
    """A strong reference that reads as a weak one: calling it gives the object."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


def module_level(obj: Any) -> bool:
    """Whether `obj` (a class or function) is what its module holds under its qualified name:
    it lives as long as the module does, so a cache may hold it. One made in a function —
    ``def`` or ``type()`` in an app factory — is not."""
    try:
        found: Any = sys.modules.get(obj.__module__)
        for part in obj.__qualname__.split("."):
            found = getattr(found, part, None)
        return found is obj
    except Exception:
        return False
