"""Flask: every app, every stage, by reversible class-level patches.

Where each stage comes from:

* gateway — ``Flask.__call__`` (and ``Flask.wsgi_app`` when a server is given that directly):
  the generic WSGI gateway, `stagetrace.wsgi._gateway`, so the timeline lasts until the
  server closes the response.
* route — ``RequestContext.match_request``, Flask's one URL match per request (called from
  ``RequestContext.push``): the stage is named after the rule that matched
  (``/books/<int:book_id>``, blueprint prefixes included), which is also the timeline's route;
  a failed match carries the ``NotFound``/``MethodNotAllowed``/``RequestRedirect``.
* middleware — each ``before_request``, ``after_request`` (and ``after_this_request``),
  ``teardown_request`` and ``teardown_appcontext`` function. Flask calls every one of them,
  the view and the error handlers as ``app.ensure_sync(func)(...)``; the phase methods that
  call them (``preprocess_request``, ``process_response``, ``do_teardown_request``, ...) mark
  which kind of function is being called, and ``ensure_sync`` times the call. A
  ``before_request`` function that returns a response short-circuits (``short_circuit``);
  after-request and teardown functions are all outbound phase.
* view — the view function (``module.function``; class-based views as
  ``module.Class.get``); an exception it raises is recorded on it, also when an error handler
  turns it into a response.
* view (``flask.error_handler``) — the error handler that produced the response, named after
  the handler, with the exception type it handled.
* serialize — ``jsonify`` and views returning a dict or list (the app's JSON provider's
  ``response``).
* template — Jinja2 rendering, includes and extends nested (`stagetrace.jinja2`).
* http.client — outbound httpx and requests calls (`stagetrace.httpclients`).
* SQL — SQLAlchemy (``orm.compile``, ``db.query``, ``orm.fetch``, ``db.connect``,
  ``transaction``) and the sqlite3/psycopg drivers used directly: `stagetrace.sqlalchemy` and
  `stagetrace.dbapi` are installed with the adapter (Flask-SQLAlchemy is SQLAlchemy).

Nothing replaces the user's functions: the dicts of registered functions, ``view_functions``
and ``app.wsgi_app`` keep the very objects the app registered.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from contextvars import ContextVar
from types import FunctionType
from typing import Any

from .. import _recorder, _runtime, dbapi, httpclients
from .. import jinja2 as _jinja2
from .. import sqlalchemy as _sqlalchemy
from .._names import qualname
from .._patching import Objects, Patcher, leave, timed
from ..wsgi import _gateway

patcher = Patcher("flask")

_lock = threading.RLock()
#: The apps `instrument(app)` named (by identity: an app class may not be hashable).
_apps = Objects()
_everything = False

# Which of the app's functions Flask is calling now (set by the phase methods, read by
# ensure_sync). The error phase holds the handler `_find_error_handler` returned.
_NONE, BEFORE, VIEW, AFTER, TEARDOWN, APPCONTEXT, ERROR = range(7)
_phase: ContextVar[Any] = ContextVar("stagetrace.flask.phase", default=_NONE)

_HOOK_ATTRS = {
    BEFORE: {"flask.hook": "before_request"},
    AFTER: {"flask.hook": "after_request"},
    TEARDOWN: {"flask.hook": "teardown_request"},
    APPCONTEXT: {"flask.hook": "teardown_appcontext"},
}

MAX_NAMES = 4096
_names: dict[Any, str] = {}


def _instrumented(app: Any) -> bool:
    if not patcher.applied:
        return False
    if _everything:
        return True
    return id(app) in _apps.ids


def _function_name(func: Any) -> str:
    """``module.qualname`` of a registered function, cached: views and hooks live as long as the
    app. Only plain functions defined at a module's or class's top level are cached: anything
    else may be made per request (``after_this_request`` with a closure, a ``partial`` or a
    bound method), and the cache would keep it, and everything it holds, alive."""
    if type(func) is not FunctionType:
        return qualname(func)
    name = _names.get(func)
    if name is None:
        name = qualname(func)
        if len(_names) < MAX_NAMES and "<locals>" not in name:
            _names[func] = name
    return name


def _view_name(func: Any) -> str:
    """A view's name: the function, or for ``View.as_view()`` the class and the method that
    handles this request (``module.BookAPI.get``)."""
    cls = getattr(func, "view_class", None)
    if not isinstance(cls, type):
        return _function_name(func)
    from flask import request

    method = str(request.method).lower()
    if method == "head" and getattr(cls, "head", None) is None:
        method = "get"
    if getattr(cls, "methods", None) and callable(getattr(cls, method, None)):
        return f"{_function_name(cls)}.{method}"
    return f"{_function_name(cls)}.dispatch_request"


def _exception_name(exc: Any) -> str:
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# --- the gateway --------------------------------------------------------------------------


def _wsgi_entry(orig: Callable[..., Any]) -> Callable[..., Any]:
    def entry(self: Any, environ: Any, start_response: Any) -> Any:
        if not _instrumented(self):
            return orig(self, environ, start_response)
        return _gateway.serve(
            functools.partial(orig, self), environ, start_response, framework="flask"
        )

    return entry


# --- routing -------------------------------------------------------------------------------


def _matched(rec: Any, request: Any) -> None:
    rule = request.url_rule
    if rule is not None:
        # The application root too (an app mounted under /shop, or served with SCRIPT_NAME),
        # as the path has it and OpenTelemetry's http.route asks.
        template = str(request.script_root) + str(rule.rule)
        _recorder.set_name(rec, template)
        _recorder.set_attrs(rec, {"http.route": template, "flask.endpoint": str(rule.endpoint)})
        _recorder.set_route(template)
    elif request.routing_exception is not None:
        _recorder.set_error(rec, request.routing_exception)


def _match_request(orig: Callable[..., Any]) -> Callable[..., Any]:
    def match_request(self: Any) -> None:
        if _recorder.current() is None or not _instrumented(self.app):
            orig(self)
            return
        try:
            rec = _recorder.enter("route", "<unmatched>")
        except Exception as exc:
            _recorder.internal_error("flask.route", exc)
            rec = None
        try:
            orig(self)
        except BaseException as exc:
            leave("flask.route", rec, exc)
            raise
        if rec is not None:
            try:
                _matched(rec, self.request)
            except Exception as exc:
                _recorder.internal_error("flask.route", exc)
        leave("flask.route", rec)

    return match_request


# --- phases and the functions called in them -----------------------------------------------


def _in_phase(phase: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A `Patcher.wrap` maker: while the method runs, the functions it calls through
    ``ensure_sync`` belong to `phase`."""

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None:
                return orig(self, *args, **kwargs)
            token = _phase.set(phase)
            try:
                return orig(self, *args, **kwargs)
            finally:
                _phase.reset(token)

        return method

    return make


def _find_error_handler(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Remember the handler Flask found, so that ``ensure_sync`` records that one call."""

    def find(self: Any, *args: Any, **kwargs: Any) -> Any:
        handler = orig(self, *args, **kwargs)
        if handler is not None and _phase.get() == ERROR:
            _phase.set(handler)  # the handle_* method's reset puts the phase back
        return handler

    return find


def _ensure_sync(orig: Callable[..., Any]) -> Callable[..., Any]:
    def ensure_sync(self: Any, func: Any) -> Any:
        result = orig(self, func)
        phase = _phase.get()
        if phase is _NONE or _recorder.current() is None:
            return result
        try:
            if type(phase) is not int:  # the error handler found for this exception
                if func is not phase:
                    return result
                _phase.set(ERROR)
                return _error_handler(result, func)
            if phase == VIEW:
                _phase.set(_NONE)  # a class-based view's own ensure_sync(method) is this stage
                return _view(result, func)
            if phase == BEFORE:
                return _before(result, func)
            if phase in _HOOK_ATTRS:
                return _after(result, func, _HOOK_ATTRS[phase])
        except Exception as exc:
            _recorder.internal_error("flask.ensure_sync", exc)
        return result

    return ensure_sync


def _view(call: Callable[..., Any], func: Any) -> Callable[..., Any]:
    def view(*args: Any, **kwargs: Any) -> Any:
        try:
            rec = _recorder.enter("view", _view_name(func))
        except Exception as exc:
            _recorder.internal_error("flask.view", exc)
            rec = None
        try:
            result = call(*args, **kwargs)
        except BaseException as exc:
            leave("flask.view", rec, exc)
            raise
        leave("flask.view", rec)
        return result

    return view


def _error_handler(call: Callable[..., Any], func: Any) -> Callable[..., Any]:
    def handler(exc: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            rec = _recorder.enter(
                "view", _function_name(func), {"flask.error_handler": _exception_name(exc)}
            )
        except Exception as e:
            _recorder.internal_error("flask.error_handler", e)
            rec = None
        try:
            result = call(exc, *args, **kwargs)
        except BaseException as e:
            leave("flask.error_handler", rec, e)
            raise
        leave("flask.error_handler", rec)
        return result

    return handler


def _before(call: Callable[..., Any], func: Any) -> Callable[..., Any]:
    def before(*args: Any, **kwargs: Any) -> Any:
        try:
            rec = _recorder.enter_middleware(_function_name(func), _HOOK_ATTRS[BEFORE])
        except Exception as exc:
            _recorder.internal_error("flask.hook", exc)
            rec = None
        try:
            result = call(*args, **kwargs)
        except BaseException as exc:
            leave("flask.hook", rec, exc)
            raise
        try:
            _recorder.set_short_circuit(rec, result is not None)
        except Exception as exc:
            _recorder.internal_error("flask.hook", exc)
        leave("flask.hook", rec)
        return result

    return before


def _after(call: Callable[..., Any], func: Any, attrs: dict[str, str]) -> Callable[..., Any]:
    def after(*args: Any, **kwargs: Any) -> Any:
        try:
            rec = _recorder.enter_middleware(_function_name(func), attrs)
        except Exception as exc:
            _recorder.internal_error("flask.hook", exc)
            rec = None
        try:  # all of it is outbound work: the inbound phase is empty
            _recorder.inner_begin(rec)
            _recorder.inner_end(rec)
        except Exception as exc:
            _recorder.internal_error("flask.hook", exc)
        try:
            result = call(*args, **kwargs)
        except BaseException as exc:
            leave("flask.hook", rec, exc)
            raise
        leave("flask.hook", rec)
        return result

    return after


# --- installation ----------------------------------------------------------------------------


def _install() -> None:
    if patcher.applied:
        return
    _runtime.settings()  # a configuration error shows here, at start-up, not in a request
    from flask.json import provider

    import flask
    from flask import ctx

    patcher.start()
    app = flask.Flask
    patcher.wrap(app, "__call__", _wsgi_entry)
    patcher.wrap(app, "wsgi_app", _wsgi_entry)
    patcher.wrap(ctx.RequestContext, "match_request", _match_request)
    patcher.wrap(app, "ensure_sync", _ensure_sync)
    patcher.wrap(app, "preprocess_request", _in_phase(BEFORE))
    patcher.wrap(app, "dispatch_request", _in_phase(VIEW))
    patcher.wrap(app, "process_response", _in_phase(AFTER))
    patcher.wrap(app, "finalize_request", _in_phase(_NONE))
    patcher.wrap(app, "do_teardown_request", _in_phase(TEARDOWN))
    patcher.wrap(app, "do_teardown_appcontext", _in_phase(APPCONTEXT))
    for name in ("handle_user_exception", "handle_http_exception", "handle_exception"):
        patcher.wrap(app, name, _in_phase(ERROR))
    if hasattr(app, "_find_error_handler"):
        patcher.wrap(app, "_find_error_handler", _find_error_handler)
    serialize = timed("serialize", "jsonify", site="flask.json")
    for cls in (provider.JSONProvider, provider.DefaultJSONProvider):
        if "response" in vars(cls):
            patcher.wrap(cls, "response", serialize)
    _jinja2.install()
    httpclients.install()
    _sqlalchemy.install()
    dbapi.install()


def instrument(app: Any = None) -> Any:
    """Instrument one Flask app (returned, the same object), or with no argument every Flask
    app, those built already and those built later. Idempotent; raises
    `stagetrace.ConfigurationError` when the configuration is bad, and `TypeError` when `app`
    is not a Flask app (an app factory, ``app.wsgi_app``, a blueprint)."""
    global _everything
    if app is not None:
        import flask

        if not isinstance(app, flask.Flask):
            # An app factory, `app.wsgi_app` or a blueprint would be taken silently and no
            # request ever recorded.
            raise TypeError(
                "stagetrace.flask.instrument() takes a Flask app (or nothing, for every app), "
                f"got {type(app).__name__} {_given(app)}"
            )
    with _lock:
        try:
            _install()
        except Exception:
            if patcher.applied:
                patcher.undo()
            raise
        if app is None:
            _everything = True
        else:
            _apps.add(app)
    return app


def _given(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "name", None)
    return repr(name) if isinstance(name, str) else f"{obj!r:.60}"


def uninstrument() -> None:
    """Undo `instrument()`: every patched attribute is restored, for every app."""
    global _everything
    with _lock:
        if not patcher.applied:
            return
        _everything = False
        _apps.clear()
        patcher.undo()
        _jinja2.uninstall()
        httpclients.uninstall()
        _sqlalchemy.uninstall()
        dbapi.uninstall()


def is_instrumented(app: Any = None) -> bool:
    """Whether `app` (or, without one, any app) is instrumented."""
    if app is None:
        return patcher.applied
    return _instrumented(app)
