"""`instrument()` / `uninstrument()` for Django."""

from __future__ import annotations

import threading
from typing import Any

from django.core.signals import setting_changed

from .. import _runtime, httpclients
from .. import jinja2 as _jinja2
from . import _cache, _db, _drf, _gateway, _middleware, _templates, _views
from ._common import install_test_env, load_settings, on_setting_changed, patcher

__all__ = ["instrument", "is_instrumented", "load_settings", "uninstrument"]

_lock = threading.RLock()
_SETTING_CHANGED = "stagetrace.django.settings"
_jinja2_installed = False


def is_instrumented() -> bool:
    """Whether Django is currently instrumented."""
    return patcher.applied


def _install_jinja2(module: Any) -> None:
    global _jinja2_installed
    if not _jinja2_installed:
        _jinja2.install()
        _jinja2_installed = True


def _uninstall_jinja2() -> None:
    global _jinja2_installed
    if _jinja2_installed:
        _jinja2.uninstall()
        _jinja2_installed = False


def _check_configuration() -> None:
    """Resolve the configuration now, so that a bad option (``settings.STAGETRACE`` or a
    ``STAGETRACE_*`` variable) raises `ConfigurationError` at start-up — never inside a
    request."""
    from django.conf import settings

    if settings.configured:
        load_settings()
    else:
        _runtime.settings()


def instrument() -> None:
    """Instrument Django: every request served afterwards yields a full stage timeline.

    Idempotent, and safe before or after ``django.setup()``. Raises `ConfigurationError` when the
    configuration is bad. Middleware stages need the request handler to be built afterwards (as
    it is when the app is in ``INSTALLED_APPS`` or when this runs before
    ``get_wsgi_application()``/``get_asgi_application()``); every other stage works for handlers
    that already exist too.
    """
    with _lock:
        if patcher.applied:
            return
        _check_configuration()
        patcher.start()
        _gateway._tried_settings[0] = False
        try:
            _gateway.install()
            _middleware.install()
            _views.install()
            _db.install()
            _templates.install()
            _cache.install()
        except Exception:
            patcher.undo()
            _db.uninstall()
            raise
        setting_changed.connect(on_setting_changed, dispatch_uid=_SETTING_CHANGED)
        patcher.when_imported("django.test.client", lambda module: _gateway.install_test_client())
        patcher.when_imported("django.test.utils", _install_test_utils)
        patcher.when_imported("jinja2", _install_jinja2)
        patcher.when_imported("rest_framework.serializers", _drf.install)
        httpclients.install()


def _install_test_utils(module: Any) -> None:
    _templates.install_test_utils(module)
    install_test_env(module)


def uninstrument() -> None:
    """Undo `instrument()`: every patched object gets its original attribute back.

    Objects built while instrumented (a request handler's middleware chain, compiled Jinja2
    templates) keep thin wrappers that record nothing from now on.
    """
    with _lock:
        if not patcher.applied:
            return
        patcher.undo()
        setting_changed.disconnect(dispatch_uid=_SETTING_CHANGED)
        _db.uninstall()
        _uninstall_jinja2()
        httpclients.uninstall()
