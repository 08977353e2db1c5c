"""Names for the application's objects, as stages show them."""

from __future__ import annotations

import functools
from typing import Any


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
