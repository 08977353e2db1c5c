"""Reversible patches, in one place per framework.

A `Patcher` replaces attributes and remembers how to put each one back, so `uninstall()`
restores every patched object exactly (an attribute a class only inherited is deleted again,
not pinned). Patch functions keep ``__wrapped__``, name and docstring of what they wrap.

Hot paths (template render, ORM compile and fetch, cache calls) are patched with plain wrapper
functions rather than ``wrapt.FunctionWrapper``: on the reference machine a FunctionWrapper on
a method costs about 560 ns per call (it builds a bound wrapper object on every attribute
access) against about 70 ns for a plain function, and that difference alone would exceed the
per-stage budget. `wrapt.ObjectProxy` is used where transparency of an *object* matters
(middleware classes and instances: ``isinstance``, attributes, sync/async markers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class Patcher:
    """Applies and undoes a set of attribute replacements."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._undo: list[tuple[Any, str, Any, bool, Any]] = []
        #: True while patches are applied: a plain attribute, cheap to test on hot paths.
        self.applied = False

    def replace(self, owner: Any, attr: str, new: Any) -> Any:
        """Set ``owner.attr = new``; return what ``owner.attr`` was."""
        own = vars(owner)
        had_own = attr in own
        original = own[attr] if had_own else getattr(owner, attr)
        setattr(owner, attr, new)
        self._undo.append((owner, attr, original, had_own, vars(owner).get(attr)))
        self.applied = True
        return original

    def wrap(
        self, owner: Any, attr: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> None:
        """Replace the function ``owner.attr`` by ``make(original)``, keeping its metadata.

        If ``owner.attr`` is a wrapper of ours left behind by an earlier instrumentation (one
        someone else saved and put back, as Django's test environment does with
        ``Template._render``), the new wrapper goes around what that one wrapped, so nothing
        is ever recorded twice."""
        original = getattr(owner, attr)
        while getattr(original, "__stagetrace_patch__", False):
            original = original.__wrapped__
        new = make(original)
        functools.update_wrapper(new, original)
        new.__stagetrace_patch__ = True  # type: ignore[attr-defined]
        self.replace(owner, attr, new)

    def wrap_property(
        self, owner: type, attr: str, make: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]
    ) -> None:
        """Replace a property's getter by ``make(getter)``; setter and deleter stay."""
        prop = getattr(owner, attr)
        if not isinstance(prop, property) or prop.fget is None:
            raise TypeError(f"{owner.__qualname__}.{attr} is not a readable property")
        getter = make(prop.fget)
        functools.update_wrapper(getter, prop.fget)
        self.replace(owner, attr, property(getter, prop.fset, prop.fdel, prop.__doc__))

    def undo(self) -> None:
        """Put back everything this patcher replaced, newest first.

        An attribute someone else replaced after us (another tool patching on top, Django's
        test environment swapping ``Template._render``) is left as they set it: restoring ours
        would undo their patch. Our wrapper stays underneath theirs, and goes quiet."""
        self.applied = False
        while self._undo:
            owner, attr, original, had_own, new = self._undo.pop()
            if vars(owner).get(attr) is not new:
                continue
            if had_own:
                setattr(owner, attr, original)
            else:
                try:
                    delattr(owner, attr)
                except AttributeError:
                    pass
