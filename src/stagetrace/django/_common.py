"""What the Django adapter's modules share: the patcher and small helpers."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from .. import _recorder
from .._patching import Patcher

patcher = Patcher("django")

# When an asgiref sync_to_async hop is pending, the monotonic time it was requested. The first
# Django stage that starts on the worker thread consumes it (see `take_thread_wait`).
hop_started: ContextVar[int | None] = ContextVar("stagetrace.django.hop", default=None)


def active() -> bool:
    """Whether Django is instrumented (wrappers left behind after `uninstrument` go quiet)."""
    return patcher.applied


def qualname(obj: Any) -> str:
    """``module.Qualified.name`` of a class or function (builtins unqualified)."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return name if module in (None, "builtins") else f"{module}.{name}"


def take_thread_wait(rec: list[Any] | None) -> None:
    """If this code runs because of a sync_to_async hop, record on `rec` how long the hop
    waited for its thread (``asgi.thread_wait_ns``) — time nobody else measures."""
    t0 = hop_started.get()
    if t0 is None or rec is None:
        return
    hop_started.set(None)
    wait = rec[_recorder.START] - t0
    if wait >= 0:
        _recorder.annotate_record(rec, {"asgi.thread_wait_ns": wait})
