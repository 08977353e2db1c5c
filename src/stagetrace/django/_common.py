"""What the Django adapter's modules share: the patcher and small helpers."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from .. import _config, _recorder
from .._patching import Patcher
from .._safety import report

#: All of the Django adapter's patches. ``patcher.applied`` is the "instrumented" flag that
#: wrappers left behind after `uninstrument()` check before recording anything.
patcher = Patcher("django")

# When an asgiref sync_to_async hop is pending, the monotonic time it was requested. The first
# Django stage that starts on the worker thread consumes it (see `take_thread_wait`).
hop_started: ContextVar[int | None] = ContextVar("stagetrace.django.hop", default=None)


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


SOURCE = "settings.STAGETRACE"


class settings_state:
    tried = False


def load_settings() -> None:
    """Install ``settings.STAGETRACE`` as stagetrace's framework-settings layer. A bad value
    raises `stagetrace.ConfigurationError` at startup, naming the option."""
    from django.conf import settings

    options = getattr(settings, "STAGETRACE", None)
    if options is None:
        options = {}
    _config.configure_from_framework(options, SOURCE)


def ensure_settings() -> None:
    """Read ``settings.STAGETRACE`` once when `instrument()` was called without the app in
    ``INSTALLED_APPS`` (the app reads it at startup). A flag check after the first request;
    a broken setting is reported once and never breaks a request."""
    if settings_state.tried or _config.state().framework_source == SOURCE:
        return
    settings_state.tried = True
    try:
        load_settings()
    except Exception as exc:
        report("django.settings", exc)
