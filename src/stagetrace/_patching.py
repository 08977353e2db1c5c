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
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import wrapt

from . import _recorder
from ._guard import report

Naming = Any  # a constant, or a function of the call's arguments returning it


#: The base class of every wrapt proxy and function wrapper (wrapt 2's ``ObjectProxy`` is a
#: subclass of ``BaseObjectProxy``, and its function wrappers derive from the base only).
PROXY: Any = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


class Patcher:
    """Applies and undoes a set of attribute replacements."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._undo: list[tuple[Any, str, Any, bool | None, Any, bool]] = []
        self._lock = threading.Lock()
        self._prune_at = 256
        #: True while instrumented: a plain attribute, cheap to test on hot paths; wrappers
        #: left behind after `undo()` check it and record nothing.
        self.applied = False
        #: Counts instrumentations, so import hooks of an earlier one stay quiet.
        self.generation = 0

    def start(self) -> None:
        """Begin an instrumentation: patches and import hooks from here on belong to it."""
        self.generation += 1
        self.applied = True

    def when_imported(self, module_name: str, patch: Callable[[Any], None]) -> None:
        """Run `patch(module)` now if `module_name` is imported, else when it gets imported —
        but only while this instrumentation lasts (import hooks cannot be unregistered, so a
        hook from an earlier, undone one must do nothing). A failing patch is reported, not
        raised: the application's import goes on."""
        generation = self.generation

        def hook(module: Any) -> None:
            if generation == self.generation and self.applied:
                try:
                    patch(module)
                except Exception as exc:
                    report(f"{self.name}.patch.{module_name}", exc)

        if module_name in sys.modules:
            hook(sys.modules[module_name])
        else:
            wrapt.register_post_import_hook(hook, module_name)

    def replace(self, owner: Any, attr: str, new: Any, weak: bool = False) -> Any:
        """Set ``owner.attr = new``; return what ``owner.attr`` was. With `weak` (an
        application's class, which may be made per app: a middleware class defined in an app
        factory), what is kept to undo it does not keep the class alive: a class that is gone
        needs no undoing."""
        own = vars(owner)
        had_own = attr in own
        original = own[attr] if had_own else getattr(owner, attr)
        setattr(owner, attr, new)
        ours = vars(owner).get(attr)
        if weak:
            try:
                owner, original, ours = (weakref.ref(o) for o in (owner, original, ours))
            except TypeError:  # takes no weak references: kept as it is
                weak = False
        with self._lock:
            if weak and len(self._undo) >= self._prune_at:
                # forget the classes that are gone (an app built per test, each time)
                self._undo[:] = [u for u in self._undo if not u[5] or u[0]() is not None]
                self._prune_at = 2 * len(self._undo) + 64
            self._undo.append((owner, attr, original, had_own, ours, weak))
        self.applied = True
        return original

    def replace_wrapped(self, proxy: Any, new: Any) -> None:
        """Make another tool's wrapt wrapper wrap `new` instead of what it wraps now (to go
        beneath it rather than around or instead of it); undone like `replace`."""
        original = proxy.__wrapped__
        proxy.__wrapped__ = new
        with self._lock:
            self._undo.append((proxy, "__wrapped__", original, None, new, False))  # None: this kind
        self.applied = True

    def wrap(
        self,
        owner: Any,
        attr: str,
        make: Callable[[Callable[..., Any]], Callable[..., Any]],
        weak: bool = False,
    ) -> None:
        """Replace the function ``owner.attr`` by ``make(original)``, keeping its metadata.

        If ``owner.attr`` is a wrapper of ours left behind by an earlier instrumentation (one
        someone else saved and put back, as Django's test environment does with
        ``Template._render``), the new wrapper goes around what that one wrapped, so nothing
        is ever recorded twice. `weak` as for `replace`."""
        original = getattr(owner, attr)
        while getattr(original, "__stagetrace_patch__", False):
            original = original.__wrapped__
        new = make(original)
        functools.update_wrapper(new, original)
        new.__stagetrace_patch__ = True  # type: ignore[attr-defined]
        self.replace(owner, attr, new, weak)

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

    def patches(self) -> list[tuple[Any, str, Any, bool | None, Any]]:
        """What this patcher replaced, oldest first: ``(owner, attribute, original, whether the
        owner had its own, ours)`` (None for `replace_wrapped`); an owner kept weakly that is
        gone is left out."""
        return [e for e in map(_resolved, list(self._undo)) if e[0] is not None]

    def undo(self) -> None:
        """Put back everything this patcher replaced, newest first.

        An attribute someone else replaced after us (another tool patching on top, Django's
        test environment swapping ``Template._render``) is left as they set it: restoring ours
        would undo their patch. Our wrapper stays underneath theirs, and goes quiet."""
        self.applied = False
        self.generation += 1
        while self._undo:
            owner, attr, original, had_own, new = _resolved(self._undo.pop())
            if owner is None:  # gone, or ours gone from it: nothing to undo
                continue
            if had_own is None:  # `replace_wrapped`
                if owner.__wrapped__ is new:
                    owner.__wrapped__ = original
                continue
            if vars(owner).get(attr) is not new:
                continue
            if had_own:
                setattr(owner, attr, original)
            else:
                try:
                    delattr(owner, attr)
                except AttributeError:
                    pass


def _resolved(entry: tuple[Any, str, Any, bool | None, Any, bool]) -> tuple[Any, ...]:
    """An undo record as ``(owner, attribute, original, had_own, ours)``, its weak references
    followed; the owner None when nothing is left to undo (the class is gone, or our wrapper
    is gone from it)."""
    owner, attr, original, had_own, ours, weak = entry
    if weak:
        owner, original, ours = owner(), original(), ours()
        if ours is None:
            owner = None
    return owner, attr, original, had_own, ours


class Objects:
    """Application objects (apps) an adapter keeps apart, by identity: an app class may define
    ``__eq__``, which makes its instances unhashable for a set, and compare unlike identity.
    Each entry is a weak reference whose callback drops the id before it can be reused (a
    strong one for an object that takes no weak references). ``id(obj) in objects.ids`` is a
    C-level test for hot paths."""

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: dict[int, Any] = {}

    def add(self, obj: Any) -> None:
        key = id(obj)
        if key in self.ids:
            return
        ids = self.ids

        def forget(_: Any) -> None:
            ids.pop(key, None)

        try:
            ids[key] = weakref.ref(obj, forget)
        except TypeError:
            ids[key] = obj

    def __contains__(self, obj: object) -> bool:
        return id(obj) in self.ids

    def clear(self) -> None:
        self.ids.clear()


def _resolve(value: Naming, args: tuple[Any, ...]) -> Any:
    return value(*args) if callable(value) else value


# --- guarded recorder calls, for adapters -----------------------------------------------------
#
# Adapters call the recorder through these (or inline the same try/except on their hottest
# paths): if stagetrace's own code fails, the failure is reported and the request goes on; a
# stage that could not be left still gives the context back to its parent.


def enter(site: str, kind: str, name: Any, attrs: Any = None) -> _recorder.Record | None:
    """`_recorder.enter`, guarded: None (nothing recorded) if it fails."""
    try:
        return _recorder.enter(kind, name, attrs)
    except Exception as exc:
        _recorder.internal_error(site, exc)
        return None


#: Close a stage, guarded (`_recorder.leave`): what every adapter calls when a stage ends.
leave = _recorder.leave


def timed(
    kind: str,
    name: Naming,
    attrs: Naming = None,
    site: str = "",
    owner: object = None,
    patcher: Patcher | None = None,
) -> Callable[[Any], Any]:
    """A `Patcher.wrap` maker recording each call of a sync function as a `kind` stage.

    `name` and `attrs` are constants or functions of the call's positional arguments (``self``
    first for methods). With `owner`, the stage is entered owned by it (`enter_owned`), so that
    code running inside can tell whose stage it is in. Outside a timeline — or once `patcher`
    is undone, where someone else's wrapper on top kept this one in place — the original is
    called straight away."""
    where = site or f"timed.{kind}"

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None or (patcher is not None and not patcher.applied):
                return orig(*args, **kwargs)
            try:
                if owner is None:
                    rec = _recorder.enter(kind, _resolve(name, args), _resolve(attrs, args))
                else:
                    rec = _recorder.enter_owned(
                        kind, _resolve(name, args), owner, _resolve(attrs, args)
                    )
            except Exception as e:
                _recorder.internal_error(where, e)
                rec = None
            try:
                result = orig(*args, **kwargs)
            except BaseException as exc:
                leave(where, rec, exc)
                raise
            leave(where, rec)
            return result

        return wrapper

    return make


def timed_async(
    kind: str, name: Naming, attrs: Naming = None, site: str = ""
) -> Callable[[Any], Any]:
    """`timed` for coroutine functions: the stage lasts until the coroutine finishes."""
    where = site or f"timed.{kind}"

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None:
                return await orig(*args, **kwargs)
            try:
                rec = _recorder.enter(kind, _resolve(name, args), _resolve(attrs, args))
            except Exception as e:
                _recorder.internal_error(where, e)
                rec = None
            try:
                result = await orig(*args, **kwargs)
            except BaseException as exc:
                leave(where, rec, exc)
                raise
            leave(where, rec)
            return result

        return wrapper

    return make
