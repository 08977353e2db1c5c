"""What the Django adapter's modules share: the patcher, settings, and small helpers."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from .. import _recorder, _runtime
from .._names import qualname
from .._options import ConfigurationError
from .._patching import Patcher

__all__ = [
    "hop_started",
    "load_settings",
    "patcher",
    "qualname",
    "take_thread_wait",
    "thread_wait",
]

#: All of the Django adapter's patches. ``patcher.applied`` is the "instrumented" flag that
#: wrappers left behind after `uninstrument()` check before recording anything.
patcher = Patcher("django")

# When an asgiref sync_to_async hop is pending, the monotonic time it was requested. The first
# Django stage that starts on the worker thread consumes it (see `take_thread_wait`).
hop_started: ContextVar[int | None] = ContextVar("stagetrace.django.hop", default=None)


def take_thread_wait(rec: list[Any] | None) -> None:
    """If this code runs because of a sync_to_async hop, record on `rec` how long the hop
    waited for its thread (``asgi.thread_wait_ns``) — time nobody else measures."""
    t0 = hop_started.get()
    if t0 is None or rec is None:
        return
    try:
        hop_started.set(None)
        wait = _recorder.start_of(rec) - t0
        if wait >= 0:
            _recorder.set_attrs(rec, {"asgi.thread_wait_ns": wait})
    except Exception as exc:
        _recorder.internal_error("django.thread_wait", exc)


def thread_wait(rec: list[Any] | None) -> None:
    """`take_thread_wait`, guarded (call sites in a request use this)."""
    if rec is None:
        return
    try:
        take_thread_wait(rec)
    except Exception as exc:
        _recorder.internal_error("django.thread_wait", exc)


SOURCE = "settings.STAGETRACE"


def load_settings() -> None:
    """Install ``settings.STAGETRACE`` as stagetrace's framework-settings layer (and, under
    ``DEBUG``, propose the console sink and the Server-Timing header, for what no layer
    chose). A bad value raises
    `stagetrace.ConfigurationError` at start-up, naming the option."""
    from django.conf import settings

    options = getattr(settings, "STAGETRACE", None)
    if options is None:
        options = {}
    _runtime.configure_from_framework(options, SOURCE)
    propose_debug_defaults()


def propose_debug_defaults() -> None:
    """Under ``DEBUG``, propose the console sink and the Server-Timing header; without it,
    nothing. Again whenever Django's test environment switches ``DEBUG`` (`install_test_env`)."""
    from django.conf import settings

    proposed = (
        {"sinks": ["console"], "server_timing": True} if getattr(settings, "DEBUG", False) else {}
    )
    _runtime.propose_defaults(proposed)


def on_setting_changed(setting: str, **kwargs: Any) -> None:
    """Django's ``setting_changed`` signal (``override_settings``, ``self.settings()`` in a
    test): ``STAGETRACE`` read again — a bad value raises `ConfigurationError` into the test
    that set it, as it would at start-up — and ``DEBUG``'s proposals made again."""
    if setting not in ("STAGETRACE", "DEBUG") or not patcher.applied or not settings_loaded():
        return
    try:
        if setting == "STAGETRACE":
            load_settings()
        else:
            propose_debug_defaults()
    except ConfigurationError:
        raise
    except Exception as exc:
        _recorder.internal_error("django.setting_changed", exc)


def install_test_env(module: Any) -> None:
    """Django's test environment (``manage.py test``, pytest-django) sets ``DEBUG`` to False
    after the apps are ready, as tests run as in production: what ``DEBUG`` proposed at
    start-up — a waterfall printed for every request of the test suite, the Server-Timing
    header on every test response — follows it off, and back on at its teardown."""

    def following_debug(orig: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = orig(*args, **kwargs)
            if patcher.applied and settings_loaded():
                try:
                    propose_debug_defaults()
                except Exception as exc:
                    _recorder.internal_error("django.test_environment", exc)
            return result

        return wrapper

    for name in ("setup_test_environment", "teardown_test_environment"):
        if callable(getattr(module, name, None)):
            patcher.wrap(module, name, following_debug)


def settings_loaded() -> bool:
    """Whether ``settings.STAGETRACE`` is the framework layer in force."""
    return _runtime.framework_source() == SOURCE
