"""Names for the application's objects, as stages show them."""

from __future__ import annotations

import functools
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


def remember(cache: dict[Any, tuple[Any, T]], key: Any, obj: Any, value: T) -> T:
    """Keep `value`, a fact about the application's object `obj` (its stage name), in `cache`
    under `key` (made from ``id(obj)``) without keeping `obj` alive: the entry holds a weak
    reference, which a lookup checks::

        entry = cache.get(key)
        if entry is not None and entry[0]() is obj: ...  # entry[1] is the value

    An app built per test (a factory's closures, a class defined in a function) is then freed
    with its test; an object that cannot be referenced weakly is not kept. Past
    `MAX_REMEMBERED` entries, those of freed objects are dropped (all of them, if that is not
    enough). Returns `value`."""
    try:
        ref = weakref.ref(obj)
    except TypeError:
        return value
    if len(cache) >= MAX_REMEMBERED:
        for k in [k for k, (r, _) in cache.items() if r() is None]:
            del cache[k]
        if len(cache) >= MAX_REMEMBERED // 2:
            cache.clear()
    cache[key] = (ref, value)
    return value
