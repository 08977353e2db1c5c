"""Jinja2 template stages, shared by the Django (Jinja2 backend) and Starlette adapters.

Jinja2 renders a template by iterating its compiled ``root_render_func`` generator; includes,
extends and imports iterate the other template's ``root_render_func`` from inside it. Wrapping
that generator when a template object is built (``Template._from_namespace``) therefore records
every template — top-level, included, parent, imported — nested exactly as rendered.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import wrapt

from .. import _recorder
from .._patching import Patcher, leave

_ATTRS = {"template.engine": "jinja2"}
_patcher = Patcher("jinja2")
_users = 0


def _timed(func: Callable[[Any], Iterator[str]], name: str) -> Callable[[Any], Iterator[str]]:
    def root_render_func(context: Any) -> Iterator[str]:
        if _recorder.current() is None or not _patcher.applied:
            yield from func(context)
            return
        try:
            rec = _recorder.enter("template", name, _ATTRS)
        except Exception as exc:
            _recorder.internal_error("jinja2.render", exc)
            rec = None
        try:
            yield from func(context)
        except GeneratorExit:
            leave("jinja2.render", rec)
            raise
        except BaseException as exc:
            leave("jinja2.render", rec, exc)
            raise
        leave("jinja2.render", rec)

    root_render_func.__wrapped__ = func  # type: ignore[attr-defined]
    return root_render_func


def install() -> None:
    """Patch jinja2 — now if it is imported, else when it is (reference-counted: the Django
    and Starlette adapters may both ask). An application without Jinja2 is left alone."""
    global _users
    _users += 1
    if _users == 1:
        _when_imported()


def _when_imported() -> None:
    def hook(module: Any) -> None:
        if _users and not _patcher.applied:
            try:
                _patch(module)
            except Exception as exc:
                _recorder.internal_error("jinja2.install", exc)

    if "jinja2" in sys.modules:
        hook(sys.modules["jinja2"])
    else:
        wrapt.register_post_import_hook(hook, "jinja2")


def _patch(jinja2: Any) -> None:
    original = jinja2.Template.__dict__["_from_namespace"].__func__

    def _from_namespace(cls: Any, environment: Any, namespace: Any, globals: Any) -> Any:
        t = original(cls, environment, namespace, globals)
        func = t.root_render_func
        if not inspect.isasyncgenfunction(func):
            t.root_render_func = _timed(func, t.name or "<string>")
        return t

    _from_namespace.__wrapped__ = original  # type: ignore[attr-defined]
    _patcher.replace(jinja2.Template, "_from_namespace", classmethod(_from_namespace))


def uninstall() -> None:
    """Undo `install` once no adapter needs it. Templates compiled meanwhile keep a wrapper
    that records nothing once uninstalled."""
    global _users
    _users = max(0, _users - 1)
    if _users == 0:
        _patcher.undo()
