"""Starlette and FastAPI: every app, every stage, by reversible class-level patches.

Where each stage comes from:

* gateway — ``Starlette.__call__`` (the generic ASGI gateway, `stagetrace.asgi._gateway`).
* middleware — each layer's class ``__call__`` is wrapped (once per class, on the class that
  defines it; `uninstrument()` puts it back). The layer objects in the app's stack are the
  app's own, untouched: ``self.app`` of a middleware is the real next layer. A layer's wrapper
  records its stage and marks the in/out split of the layer that called it (the innermost
  open middleware). ``BaseHTTPMiddleware`` gets its response before the inner layer is done
  (``call_next`` returns when the response starts), so for it the outbound phase starts when
  ``call_next`` builds that response. Classes are found while a stack is built, by whichever
  ``build_middleware_stack`` the app's class has (Starlette's; FastAPI's own or an app
  class's is wrapped on the app's first call, which builds the stack): its ``Middleware``
  entries, then the layers of the stack built, by their ``app`` attributes. A stack built
  before instrumentation is walked the same way on the app's next call.
* route — ``Router.__call__`` opens the stage, which ends when a route's ``handle`` starts
  (FastAPI announces its template through its own ``_route_selected`` hook). A Mount of a
  bare router adds its prefix and matching goes on; a Mount of anything else — a Starlette or
  FastAPI app, static files, a router behind the mount's own layers — is the route
  (``/api/{path}``): the stage ends there, the mounted app's layers follow it under the same
  parent, and routing inside that app is a route stage of its own whose template continues
  the mount's. Routers built before instrumentation are covered too.
* view — ``Route.handle``/``WebSocketRoute.handle`` (and FastAPI's): the endpoint; exceptions it
  raises are recorded on it even when an exception handler turns them into a response.
  FastAPI's dependency resolution (a ``dependencies`` stage, with one ``dependency`` stage per
  dependency function, see below) and request validation are stages inside it.
* serialize — ``JSONResponse.render`` (and FastAPI's JSON responses), FastAPI's
  ``serialize_response`` (response_model validation and encoding).
* template — Jinja2 (`stagetrace.jinja2`); task — each ``BackgroundTask``, after the response:
  the stages the request left open end when the response was sent, and tasks are stages of
  the root.
* streaming — a sync iterator given to ``StreamingResponse`` is resumed where it left off, so
  stages it holds open across ``yield`` close correctly.
* SQL — `stagetrace.sqlalchemy` and `stagetrace.dbapi` are installed with the adapter: SQLAlchemy
  and the DB-API drivers are patched if and when they are imported.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import weakref
from collections.abc import AsyncIterable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

from .. import _recorder, _runtime, dbapi, httpclients
from .. import jinja2 as _jinja2
from .. import sqlalchemy as _sqlalchemy
from .._names import CACHED_METHODS, MAX_REMEMBERED, module_level, qualname, remember
from .._patching import Objects, Patcher, leave, timed, timed_async
from ..asgi import _gateway

patcher = Patcher("starlette")
_lock = threading.RLock()

_everything = False  # instrument(): every app; instrument_app(): only these
#: The apps `instrument_app` named (by identity: an app class may not be hashable).
_apps = Objects()
#: Apps whose built stack was looked at: asked on every request (``id(app) in
#: _walked.ids``, a C lookup).
_walked = Objects()
_mark_walked = _walked.add


_SITE = "starlette"


def _instrumented(app: Any) -> bool:
    return patcher.applied and (_everything or id(app) in _apps.ids)


# --- middleware -------------------------------------------------------------------------------

# Names of the application's objects, kept without keeping the objects alive (`remember`).
_class_names: dict[int, tuple[Any, str]] = {}
_func_names: dict[int, tuple[Any, str]] = {}
_base_http: type | None = None


def _layer_name(layer: Any) -> str:
    """The stage name of a middleware layer: its class; for a ``BaseHTTPMiddleware`` built
    around a ``dispatch`` function (FastAPI's ``@app.middleware("http")``), that function."""
    cls = type(layer)
    if _base_http is not None and isinstance(layer, _base_http):
        dispatch = getattr(layer, "dispatch_func", None)
        if dispatch is not None and getattr(dispatch, "__self__", None) is not layer:
            func = getattr(dispatch, "__func__", dispatch)
            entry = _func_names.get(id(func))
            if entry is not None and entry[0]() is func:
                return entry[1]
            return remember(_func_names, id(func), func, qualname(func))
    entry = _class_names.get(id(cls))
    if entry is not None and entry[0]() is cls:
        return entry[1]
    name = remember(_class_names, id(cls), cls, qualname(cls))
    if (
        (_base_http is None or not issubclass(cls, _base_http))
        and len(_plain_names) < MAX_REMEMBERED
        and module_level(cls)
    ):
        # a class its module holds lives as long as the module: the fast lookup may hold it
        # (one made in a function, per app, would be kept alive by it)
        _plain_names[cls] = name
    return name


#: Names of the layer classes that are not ``BaseHTTPMiddleware``s: their stages are named
#: after the class alone, found in one lookup on every request.
_plain_names: dict[type, str] = {}


#: Guarded in its own frame (as `leave` is): a layer's return never needs a guard of its own.
_leave_layer = _recorder.leave_layer

_current = _recorder.current

if sys.version_info >= (3, 12):

    def _unless_recording(orig: Any, recording: Any) -> Any:
        """An ASGI method's wrapper that stays out of the way of unrecorded requests: when the
        context records nothing it returns the original's own coroutine, so no coroutine of
        ours is created, awaited and resumed at every step of the request (nine layers of a
        FastAPI app resume each wrapper about five times a request); else the `recording`
        coroutine. It is a plain function marked as a coroutine function
        (`inspect.markcoroutinefunction`), which `inspect.iscoroutinefunction`,
        `asyncio.iscoroutinefunction` and asgiref honour from Python 3.12 on."""

        def call(self: Any, scope: Any, receive: Any, send: Any) -> Any:
            if _current() is None:
                return orig(self, scope, receive, send)
            return recording(self, scope, receive, send)

        return inspect.markcoroutinefunction(call)

else:

    def _unless_recording(orig: Any, recording: Any) -> Any:
        """Before Python 3.12 a plain function cannot pass for a coroutine function with
        `inspect`: the `recording` coroutine itself, which checks the context first."""
        return recording


def _layer_call(orig: Any) -> Any:
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if _current() is None or not patcher.applied or scope["type"] == "lifespan":
            return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
        try:
            name = _plain_names.get(type(self))
            if name is not None:
                rec, outer = _recorder.enter_layer(name)
            else:
                split = (
                    _base_http is not None
                    and scope["type"] == "http"
                    and isinstance(self, _base_http)
                )
                rec, outer = _recorder.enter_layer(_layer_name(self), split)
        except Exception as exc:
            _recorder.internal_error("starlette.middleware", exc)
            outer = rec = None
        try:
            await orig(self, scope, receive, send)
        except BaseException as exc:
            _leave_layer("starlette.middleware", rec, outer, exc)
            raise
        _leave_layer("starlette.middleware", rec, outer)
        return None

    return _unless_recording(orig, __call__)


#: Layer classes seen, and those whose ``__call__`` is wrapped: weakly, as an app built per
#: test may define its own (the patcher, too, keeps them only weakly).
_patched_classes: weakref.WeakSet[type] = weakref.WeakSet()


def _watch_layer(layer: Any) -> None:
    """Make sure calls of `layer` (a middleware object) are recorded: wrap ``__call__`` on the
    class that defines it, once."""
    cls = type(layer)
    if cls in _patched_classes:
        return
    _patched_classes.add(cls)
    owner = next((k for k in cls.__mro__ if "__call__" in vars(k)), None)
    if owner is None or owner is object or owner in _patched_owners:
        return
    func = vars(owner)["__call__"]
    if getattr(func, "__stagetrace_patch__", False) or not inspect.iscoroutinefunction(func):
        return  # a sync __call__ returning an awaitable: left alone (not recorded)
    _patched_owners.add(owner)
    patcher.wrap(owner, "__call__", _layer_call, weak=True)


_patched_owners: weakref.WeakSet[type] = weakref.WeakSet()


def _walk_stack(stack: Any) -> None:
    """Find the layers of a stack built before instrumentation, by their ``app`` attributes."""
    from starlette.routing import Router

    layer = stack
    for _ in range(64):
        if layer is None or isinstance(layer, Router) or inspect.isfunction(layer):
            return
        if not callable(layer):
            return
        _watch_layer(layer)
        layer = getattr(layer, "app", None)


def _factory(cls: Any) -> Any:
    """Stands in for a middleware class in a ``Middleware`` entry while a stack is built: builds
    the real middleware, untouched, and watches its class."""

    def build(app: Any, *args: Any, **kwargs: Any) -> Any:
        instance = cls(app, *args, **kwargs)
        try:
            if not inspect.isfunction(instance) and not inspect.ismethod(instance):
                _watch_layer(instance)
        except Exception as exc:
            _recorder.internal_error("starlette.build", exc)
        return instance

    return build


def _response_started(orig: Any) -> Any:
    """``BaseHTTPMiddleware``'s ``call_next`` builds a ``_StreamingResponse`` the moment the
    inner layer starts its response: the outbound phase of the middleware starts there."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        if _recorder.current() is not None:
            try:
                _recorder.inner_end(_recorder.nearest_middleware(), True)
            except Exception as exc:
                _recorder.internal_error("starlette.call_next", exc)

    return __init__


# --- routing and endpoints -------------------------------------------------------------------


#: The route stage still matching, if any: the current stage, or a near ancestor. (A partial,
#: not a function: a Python frame fewer, and routing asks on every request.)
_open_route: Callable[[], Any] = functools.partial(_recorder.nearest_open, "route")

#: The template prefix of the Mounts that handed the request over to the app being run now
#: (see `_mount_handle`): where the templates of that app's own routing start.
_handed_over: ContextVar[str] = ContextVar("stagetrace.starlette.mounted", default="")


def _route_state(rec: Any) -> dict[str, Any]:
    """Per-request routing state kept on the open route record: Mount prefixes passed, and
    the template FastAPI announced (``_route_selected``), if it does."""
    state = _recorder.aux(rec)
    if state is None:
        state = {"prefix": _handed_over.get(), "template": None, "announced": False}
        _recorder.set_aux(rec, state)
    return state  # type: ignore[no-any-return]


def _template(route: Any) -> str:
    return str(getattr(route, "path_format", None) or getattr(route, "path", ""))


def _matched(rec: Any, template: str, route: Any) -> None:
    _recorder.set_name(rec, template)
    attrs: dict[str, Any] = {"http.route": template}
    name = getattr(route, "name", None)
    if isinstance(name, str) and name:
        attrs["starlette.route_name"] = name
    _recorder.set_attrs(rec, attrs)
    tl = _recorder.timeline_of(rec)
    if tl is not None and not _called_in_process():
        tl.route = template
    _recorder.finish(rec)


_APP_CODE = frozenset(("view", "task", "http.client"))


def _called_in_process() -> bool:
    """Whether routing runs inside an endpoint, a background task or an outbound HTTP call:
    another app's, called in process (``httpx.ASGITransport``), whose stages join the
    caller's timeline — but the request's route is still the one that led there (none, for a
    bare ASGI app)."""
    return _recorder.open_of(_APP_CODE)


def _endpoint_name(raw: tuple[Any, Any]) -> str:
    endpoint, method = raw
    if isinstance(endpoint, type):
        handler = method.lower() if isinstance(method, str) else None
        if handler == "head" and not hasattr(endpoint, "head"):
            handler = "get"
        if handler and hasattr(endpoint, handler):
            return f"{qualname(endpoint)}.{handler}"
    return qualname(endpoint)


_endpoint_names: dict[tuple[int, Any], tuple[Any, str]] = {}


def _view_name(endpoint: Any, method: Any) -> str:
    key = (id(endpoint), method)
    entry = _endpoint_names.get(key)
    if entry is not None and entry[0]() is endpoint:
        return entry[1]
    name = _endpoint_name((endpoint, method))
    return remember(_endpoint_names, key, endpoint, name) if method in CACHED_METHODS else name


def _record_raised(app: Any) -> Any:
    """Inside ``wrap_app_handling_exceptions``: note an exception on the current stage (the
    endpoint's) before an exception handler turns it into a response."""

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            try:
                _recorder.set_error_here(exc)
            except Exception as e:
                _recorder.internal_error("starlette.exception", e)
            raise

    return recording


def _reentered(owner: Any, kind: str) -> bool:
    """Whether this call runs inside a stage of the same object (a subclass calling its base's
    method): record the outer call only. On an internal error, record nothing."""
    try:
        return _recorder.is_open_for(owner, kind)
    except Exception as exc:
        _recorder.internal_error("starlette.reentry", exc)
        return True


def _routing_underway() -> bool:
    try:
        return _open_route() is not None
    except Exception as exc:
        _recorder.internal_error("starlette.route", exc)
        return True


def _router_call(orig: Any) -> Any:
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if (
            _current() is None
            or not patcher.applied
            or scope["type"] == "lifespan"
            or _routing_underway()
        ):
            return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
        try:
            outer = _recorder.calls_inner()
            rec = _recorder.enter("route", "<unmatched>")
        except Exception as exc:
            _recorder.internal_error("starlette.route", exc)
            outer = rec = None
        try:
            await orig(self, scope, receive, send)
        except BaseException as exc:
            _after_route(rec, outer, exc)
            raise
        _after_route(rec, outer, None)
        return None

    return _unless_recording(orig, __call__)


def _after_route(rec: Any, outer: Any, exc: BaseException | None) -> None:
    try:
        if rec is not None and not _recorder.is_closed(rec):
            _recorder.finish(rec, exc)
        _recorder.inner_end(outer)
    except Exception as e:
        _recorder.internal_error("starlette.route", e)


def _leaf_handle(orig: Any) -> Any:
    """A route's ``handle``: routing is over (the route stage ends) and the endpoint runs (the
    view stage). A subclass handle calling its base's is recorded once."""

    async def handle(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if _current() is None or _reentered(self, "view"):
            return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
        try:
            rec = _open_route()
            if rec is not None:
                state = _route_state(rec)
                template = state["template"] if state["announced"] else None
                _matched(rec, template or state["prefix"] + _template(self), self)
            view = _recorder.enter_owned(
                "view", _view_name(self.endpoint, scope.get("method")), self
            )
        except Exception as exc:
            _recorder.internal_error("starlette.view", exc)
            view = None
        try:
            await orig(self, scope, receive, send)
        except BaseException as exc:
            leave("starlette.view", view, exc)
            raise
        leave("starlette.view", view)
        return None

    return _unless_recording(orig, handle)


def _mount_handle(orig: Any) -> Any:
    """A ``Mount`` (or ``Host``) of a bare ``Router`` (``routes=[...]``): matching goes on
    inside, its prefix added to the template. Of anything else — a Starlette or FastAPI app,
    static files, a router behind the mount's own ``middleware=`` — routing hands the request
    over: the mount is the route (``/api/{path}``), whose stage ends here, before that app's
    layers run. As stages of the route they would outlive it, and their time would count
    twice (as theirs, and as the self time of the layer around the route). A router inside
    that app routes in a route stage of its own, under the app's innermost layer, its
    templates starting with the mount's (``/api/users/{id}``)."""

    async def handle(self: Any, scope: Any, receive: Any, send: Any) -> None:
        token = None
        if _current() is not None:
            try:
                token = _enter_mount(self)
            except Exception as exc:
                _recorder.internal_error("starlette.mount", exc)
        if token is None:
            await orig(self, scope, receive, send)
            return
        try:
            await orig(self, scope, receive, send)
        finally:
            _leave_mount(token)

    return _unless_recording(orig, handle)


def _enter_mount(mount: Any) -> Any:
    """The routing of `mount` (see `_mount_handle`); a token for `_leave_mount` when it hands
    the request over."""
    from starlette import routing

    rec = _open_route()
    if rec is None:
        return None
    state = _route_state(rec)
    prefix = state["prefix"] if state["announced"] else state["prefix"] + getattr(mount, "path", "")
    if isinstance(mount.app, routing.Router):
        state["prefix"] = prefix  # keep matching inside
        return None
    _matched(rec, state["template"] or prefix + "/{path}", mount)
    return _handed_over.set(prefix)


def _leave_mount(token: Any) -> None:
    try:
        _handed_over.reset(token)
    except Exception as exc:
        _recorder.internal_error("starlette.mount", exc)


def _route_selected(orig: Any) -> Any:
    """FastAPI announces each routing decision (its own telemetry hook): take the template from
    there, as FastAPI computes it for included routers and mounts."""

    def route_selected(*, scope: Any, path: str | None, mount: bool = False) -> None:
        try:
            rec = _open_route() if _recorder.current() is not None else None
            if rec is not None and isinstance(path, str):
                state = _route_state(rec)
                state["announced"] = True
                if mount:
                    state["prefix"] += path.removesuffix("/{path}")
                    state["template"] = state["prefix"] + "/{path}"
                else:
                    state["template"] = state["prefix"] + path
        except Exception as exc:
            _recorder.internal_error("fastapi.route_selected", exc)
        orig(scope=scope, path=path, mount=mount)

    return route_selected


def _wrap_handling(orig: Any) -> Any:
    def wrap_app_handling_exceptions(app: Any, conn: Any) -> Any:
        if _recorder.current() is None:
            return orig(app, conn)
        return orig(_record_raised(app), conn)

    return wrap_app_handling_exceptions


def _task_name(task: Any) -> str:
    return qualname(getattr(task, "func", task))


def _background_task(orig: Any) -> Any:
    """A background task runs after the response was sent: the request's stages end at that
    moment, and the task is a stage of the root."""

    async def __call__(self: Any) -> None:
        if _recorder.current() is None:
            return await orig(self)  # type: ignore[no-any-return]
        try:
            if _recorder.response_sent():
                _recorder.detach_to_root()
            rec = _recorder.enter("task", _task_name(self))
        except Exception as exc:
            _recorder.internal_error("starlette.task", exc)
            rec = None
        try:
            await orig(self)
        except BaseException as exc:
            leave("starlette.task", rec, exc)
            raise
        leave("starlette.task", rec)
        return None

    return __call__


def _streaming_init(orig: Any) -> Any:
    """``StreamingResponse`` runs a sync iterator's ``next()`` in a thread, in a fresh copy of
    the context each time: resume each chunk where the previous one left the recorder — the
    first in the ``response.write`` stage the response start opened, as an async iterator's."""

    def __init__(self: Any, content: Any, *args: Any, **kwargs: Any) -> None:
        if _recorder.current() is not None:
            try:
                # By the class, as Starlette tells them apart: asking the object itself
                # (hasattr) runs its __getattr__, which may raise.
                if not isinstance(content, AsyncIterable) and isinstance(content, Iterable):
                    content = _recorder.carry(content, _recorder.current(), here=True)
            except Exception as exc:
                _recorder.internal_error("starlette.streaming", exc)
        orig(self, content, *args, **kwargs)

    return __init__


# --- installation ----------------------------------------------------------------------------


def _walk_once(app: Any) -> None:
    """An app whose stack was built before instrumentation (its stack is there, but was never
    looked at): watch its layers where they are."""
    try:
        _mark_walked(app)
        _walk_stack(app.middleware_stack)
    except Exception as exc:
        _recorder.internal_error("starlette.build", exc)


def _watch_build(app: Any) -> None:
    """An app whose stack is not built yet: the call about to run builds it, with whichever
    ``build_middleware_stack`` its class has — FastAPI's own, or an app class's — so that one
    is wrapped too (once, on the class that defines it), and the stack it builds is looked at
    before its first request goes through it."""
    try:
        owner = next(k for k in type(app).__mro__ if "build_middleware_stack" in vars(k))
        with _lock:
            if not getattr(vars(owner)["build_middleware_stack"], "__stagetrace_patch__", False):
                patcher.wrap(owner, "build_middleware_stack", _build)
    except Exception as exc:
        _recorder.internal_error("starlette.build", exc)


#: Starlette's app class (FastAPI's derives from it), set when the adapter is installed.
_starlette_app: Any = ()


def _mounted_in(app: Any, scope: Any) -> bool:
    """Whether `app` runs inside another instrumented app's request (mounted in it: the
    scope's ``app`` is still the outer one, which set it): that app's gateway decided whether
    the request is recorded — a second sampling draw here would record part of a request
    the outer app left out."""
    try:
        outer = scope.get("app")
        return (
            outer is not None
            and outer is not app
            and isinstance(outer, _starlette_app)
            and _instrumented(outer)
        )
    except Exception as exc:
        _recorder.internal_error("starlette.mounted", exc)
        return False


def _decided_by_app(scope: Any) -> bool:
    """For `_gateway.app_decided`: the scope's ``app`` is an app this adapter covers, whose
    gateway decided whether the request is recorded."""
    return _mounted_in(None, scope)


_frameworks: dict[type, str] = {}


def _framework(cls: type) -> str:
    """``fastapi`` for FastAPI's app class and the application's own classes derived from it,
    else ``starlette``."""
    name = _frameworks.get(cls)
    if name is None:
        fastapi = any(k.__module__.split(".")[0] == "fastapi" for k in cls.__mro__)
        name = "fastapi" if fastapi else "starlette"
        if len(_frameworks) < 64:
            _frameworks[cls] = name
    return name


def _app_call(orig: Any) -> Any:
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if not _instrumented(self):
            return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
        if self.middleware_stack is None:
            _watch_build(self)
        elif id(self) not in _walked.ids:
            _walk_once(self)
        if "app" in scope and _mounted_in(self, scope):  # (a server sets no "app")
            return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
        framework = _framework(type(self))
        await _gateway.serve(functools.partial(orig, self), scope, receive, send, framework)
        return None

    if sys.version_info < (3, 12):
        return __call__

    def call(self: Any, scope: Any, receive: Any, send: Any) -> Any:
        # As `_unless_recording`, with the gateway's decision made before any coroutine: a
        # request that will not be recorded gets the app's own coroutine.
        if not _instrumented(self):
            return orig(self, scope, receive, send)
        if self.middleware_stack is None:
            _watch_build(self)
        elif id(self) not in _walked.ids:
            _walk_once(self)
        if "app" in scope and _mounted_in(self, scope):  # (a server sets no "app")
            return orig(self, scope, receive, send)
        decided = _gateway.decide(scope)
        if decided is _gateway.PASS:
            return orig(self, scope, receive, send)
        framework = _framework(type(self))
        return _gateway.serve(
            functools.partial(orig, self), scope, receive, send, framework, decided
        )

    return inspect.markcoroutinefunction(call)


#: Set while a stack is being built: only then does a ``Middleware`` entry unpack to the
#: factory that watches the class it builds; anyone else unpacking one gets the class itself.
_building = threading.local()


def _build(orig: Any) -> Any:
    """``build_middleware_stack``: the layers built from ``Middleware`` entries are watched as
    they are built (`_factory`); the stack built is then walked too, for layers an app class
    adds around or inside it by itself."""

    def build_middleware_stack(self: Any) -> Any:
        _building.depth = getattr(_building, "depth", 0) + 1
        try:
            stack = orig(self)
        finally:
            _building.depth -= 1
        if _instrumented(self):
            try:
                _mark_walked(self)
                _walk_stack(stack)
            except Exception as exc:
                _recorder.internal_error("starlette.build", exc)
        return stack

    return build_middleware_stack


def _install_core() -> None:
    global _base_http, _starlette_app
    from starlette import applications, background, responses, routing
    from starlette.middleware import Middleware
    from starlette.middleware import base as base_module

    _base_http = base_module.BaseHTTPMiddleware
    _starlette_app = applications.Starlette
    patcher.wrap(applications.Starlette, "__call__", _app_call)
    patcher.wrap(applications.Starlette, "build_middleware_stack", _build)
    patcher.replace(_gateway, "app_decided", _decided_by_app)

    def middleware_iter(orig: Any) -> Any:
        def __iter__(self: Any) -> Any:
            if not patcher.applied or not getattr(_building, "depth", 0):
                return orig(self)
            cls, args, kwargs = orig(self)
            return iter((_factory(cls), args, kwargs))

        return __iter__

    patcher.wrap(Middleware, "__iter__", middleware_iter)
    streaming = getattr(base_module, "_StreamingResponse", None)
    if streaming is not None and "__init__" in vars(streaming):
        patcher.wrap(streaming, "__init__", _response_started)
    patcher.wrap(routing.Router, "__call__", _router_call)
    patcher.wrap(routing.Route, "handle", _leaf_handle)
    patcher.wrap(routing.WebSocketRoute, "handle", _leaf_handle)
    patcher.wrap(routing.Mount, "handle", _mount_handle)
    patcher.wrap(routing.Host, "handle", _mount_handle)
    patcher.wrap(routing, "wrap_app_handling_exceptions", _wrap_handling)
    patcher.wrap(responses.JSONResponse, "render", _render)
    patcher.wrap(responses.StreamingResponse, "__init__", _streaming_init)
    patcher.wrap(background.BackgroundTask, "__call__", _background_task)


def _render_name(response: Any) -> str:
    return f"{type(response).__name__}.render"


_render = timed(
    "serialize", lambda response, *rest: _render_name(response), site="starlette.render"
)


def _install_fastapi_routing(module: Any) -> None:
    for name in ("APIRoute", "APIWebSocketRoute"):
        cls = getattr(module, name, None)
        if cls is not None and "handle" in vars(cls):
            patcher.wrap(cls, "handle", _leaf_handle)
    if hasattr(module, "_route_selected"):
        patcher.wrap(module, "_route_selected", _route_selected)
    patcher.wrap(module, "solve_dependencies", _solve_all)
    patcher.wrap(module, "serialize_response", timed_async("serialize", "response model"))
    if hasattr(module, "wrap_app_handling_exceptions"):
        patcher.wrap(module, "wrap_app_handling_exceptions", _wrap_handling)


def _install_fastapi_validation(utils: Any) -> None:
    def params(orig: Any) -> Any:
        def request_params_to_args(fields: Any, *args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None:
                return orig(fields, *args, **kwargs)
            _close_called()  # the last sub-dependency was called: FastAPI is back in the parent
            if not fields:
                return orig(fields, *args, **kwargs)
            try:
                rec = _recorder.enter("serialize", "validate request params")
            except Exception as exc:
                _recorder.internal_error("fastapi.validate", exc)
                rec = None
            try:
                result = orig(fields, *args, **kwargs)
            except BaseException as exc:
                leave("fastapi.validate", rec, exc)
                raise
            leave("fastapi.validate", rec)
            return result

        return request_params_to_args

    patcher.wrap(utils, "request_params_to_args", params)
    patcher.wrap(utils, "request_body_to_args", timed_async("serialize", "validate request body"))
    # --- FastAPI dependencies: one `dependency` stage each ---
    global _cache_key_of
    models = sys.modules.get("fastapi.dependencies.models")
    _cache_key_of = getattr(models, "_get_cache_key", None)
    patcher.wrap(utils, "solve_dependencies", _solve_one)
    if hasattr(utils, "_solve_generator"):
        patcher.wrap(utils, "_solve_generator", _solve_generator)


# --- FastAPI dependencies --------------------------------------------------------------------
#
# FastAPI resolves dependencies in ``fastapi.dependencies.utils.solve_dependencies``, which calls
# itself (through the module's global name) for each sub-dependency, then calls the dependency
# function in the *parent's* loop (or enters a ``yield`` dependency on an exit stack, in
# ``_solve_generator``). So the stage of a dependency opens when FastAPI starts solving it
# (its own sub-dependencies nest inside) and stays the current stage, marked "called", while
# the parent calls the function; the next thing FastAPI does in the parent — solve the next
# dependency, validate the parent's parameters, return — ends it. The call of the whole
# resolution from ``fastapi.routing`` is the ``dependencies`` stage (kind ``view``) around them.
# A ``yield`` dependency's teardown is a ``dependency`` stage with ``teardown: true`` where the
# exit stack runs it (after the response for request-scoped ones: the request's stages end when
# the response was sent, as for background tasks).

_RESOLUTION = object()  # owner of the "dependencies" stage
_DEPENDENCY = object()  # owner of each dependency's stage
_CALLED = "called"  # aux of a dependency stage whose function FastAPI calls now
_CACHED = {"cached": True}
_TEARDOWN = {"teardown": True}
_dependency_names: dict[int, tuple[Any, str]] = {}
_cache_key_of: Any = None


def _dependency_name(call: Any) -> str:
    entry = _dependency_names.get(id(call))
    if entry is not None and entry[0]() is call:
        return entry[1]
    return remember(_dependency_names, id(call), call, qualname(call))


def _close_called(exc: BaseException | None = None) -> None:
    """End the current stage if it is a dependency FastAPI was calling."""
    try:
        if _recorder.is_open_for(_DEPENDENCY, "dependency"):
            rec = _recorder.current()
            if _recorder.aux(rec) == _CALLED:
                leave("fastapi.dependency", rec, exc)
    except Exception as e:
        _recorder.internal_error("fastapi.dependency", e)


def _resolving() -> bool:
    """Whether FastAPI is solving dependencies in the current stage: the resolution, or a
    dependency whose own sub-dependencies are being solved."""
    if _recorder.is_open_for(_RESOLUTION, "view"):
        return True
    return _recorder.is_open_for(_DEPENDENCY, "dependency") and (
        _recorder.aux(_recorder.current()) != _CALLED
    )


def _is_cached(dependant: Any, kwargs: dict[str, Any]) -> bool:
    """Whether FastAPI will take this dependency's value from the request's cache (as FastAPI
    decides it; with ``dependency_overrides`` the override's key is looked up)."""
    cache = kwargs.get("dependency_cache")
    if not cache or not getattr(dependant, "use_cache", False):
        return False
    if _cache_key_of is not None:
        key = _cache_key_of(dependant=dependant, uses_scopes_cache=kwargs.get("_uses_scopes_cache"))
    else:
        key = dependant.cache_key
    return key in cache


def _enter_dependency(kwargs: dict[str, Any]) -> tuple[Any, bool]:
    _close_called()
    if not _resolving():
        return None, False
    dependant = kwargs["dependant"]
    cached = _is_cached(dependant, kwargs)
    rec = _recorder.enter_owned(
        "dependency", _dependency_name(dependant.call), _DEPENDENCY, _CACHED if cached else None
    )
    return rec, cached


def _solve_one(orig: Any) -> Any:
    async def solve_dependencies(**kwargs: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return await orig(**kwargs)
        try:
            rec, cached = _enter_dependency(kwargs)
        except Exception as exc:
            _recorder.internal_error("fastapi.dependency", exc)
            rec, cached = None, False
        if rec is None:
            return await orig(**kwargs)
        try:
            solved = await orig(**kwargs)
        except BaseException as exc:
            _close_called(exc)
            leave("fastapi.dependency", rec, exc)
            raise
        _close_called()
        try:
            if cached or getattr(solved, "errors", None):
                leave("fastapi.dependency", rec)  # not called: invalid, or cached
            elif _recorder.current() is rec:
                _recorder.set_aux(rec, _CALLED)
            else:  # pragma: no cover - something left a stage open inside: end it here
                _recorder.finish(rec)
        except Exception as exc:
            _recorder.internal_error("fastapi.dependency", exc)
            leave("fastapi.dependency", rec)
        return solved

    return solve_dependencies


def _solve_all(orig: Any) -> Any:
    async def solve_dependencies(**kwargs: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return await orig(**kwargs)
        try:
            rec = _recorder.enter_owned("view", "dependencies", _RESOLUTION)
        except Exception as exc:
            _recorder.internal_error("fastapi.dependency", exc)
            rec = None
        try:
            solved = await orig(**kwargs)
        except BaseException as exc:
            _close_called(exc)
            leave("fastapi.dependency", rec, exc)
            raise
        _close_called()
        leave("fastapi.dependency", rec)
        return solved

    return solve_dependencies


def _teardown_begin(box: list[Any], name: str) -> Any:
    async def begin(exc_type: Any, exc: Any, tb: Any) -> bool:
        if _recorder.current() is None:
            return False
        try:
            if _recorder.response_sent():
                _recorder.detach_to_root()
            box[0] = _recorder.enter("dependency", name, _TEARDOWN)
            box[1] = exc
        except Exception as e:
            _recorder.internal_error("fastapi.teardown", e)
        return False

    return begin


def _teardown_end(box: list[Any]) -> Any:
    async def end(exc_type: Any, exc: Any, tb: Any) -> bool:
        rec, incoming = box[0], box[1]
        box[0] = box[1] = None
        if rec is not None:
            try:  # an exception that was passing through already is not the teardown's
                _recorder.finish(rec, exc if exc is not incoming else None)
            except Exception as e:
                _recorder.internal_error("fastapi.teardown", e)
        return False

    return end


def _solve_generator(orig: Any) -> Any:
    """A ``yield`` dependency: its setup runs in its own stage (opened by `_solve_one`); its
    teardown, when the exit stack unwinds, is timed between two exit callbacks pushed around
    the one FastAPI pushes."""

    async def _solve_generator(**kwargs: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return await orig(**kwargs)
        box: list[Any] = [None, None]
        try:
            stack = kwargs["stack"]
            name = _dependency_name(kwargs["dependant"].call)
            stack.push_async_exit(_teardown_end(box))
        except Exception as exc:
            _recorder.internal_error("fastapi.teardown", exc)
            name = None
        if name is None:
            # Untimed, and not in the except: an error the dependency's setup raises must not
            # get ours as its __context__.
            return await orig(**kwargs)
        solved = await orig(**kwargs)
        try:
            stack.push_async_exit(_teardown_begin(box, name))
        except Exception as exc:
            _recorder.internal_error("fastapi.teardown", exc)
        return solved

    return _solve_generator


def _install_fastapi_responses(module: Any) -> None:
    for name in ("ORJSONResponse", "UJSONResponse"):
        cls = getattr(module, name, None)
        if cls is not None and "render" in vars(cls):
            patcher.wrap(cls, "render", _render)


def _install() -> None:
    if patcher.applied:
        return
    _runtime.settings()  # a configuration error shows here, at start-up, not in a request
    patcher.start()
    _patched_classes.clear()
    _patched_owners.clear()
    _install_core()
    patcher.when_imported("fastapi.routing", _install_fastapi_routing)
    patcher.when_imported("fastapi.dependencies.utils", _install_fastapi_validation)
    patcher.when_imported("fastapi.responses", _install_fastapi_responses)
    _jinja2.install()
    httpclients.install()
    # --- SQL: SQLAlchemy and the DB-API drivers, patched if and when they are imported ---
    _sqlalchemy.install()
    dbapi.install()


def instrument() -> None:
    """Instrument every Starlette and FastAPI app, those built already and those built later."""
    global _everything
    with _lock:
        _install()
        _everything = True


def instrument_app(app: Any) -> Any:
    """Instrument one Starlette or FastAPI app; returns it (the same object)."""
    with _lock:
        _install()
        _apps.add(app)
    return app


def uninstrument() -> None:
    """Undo `instrument()` and `instrument_app()`: every patched attribute is restored."""
    global _everything
    with _lock:
        if not patcher.applied:
            return
        _everything = False
        _apps.clear()
        _walked.clear()
        patcher.undo()
        _patched_classes.clear()
        _patched_owners.clear()
        _jinja2.uninstall()
        httpclients.uninstall()
        # --- SQL ---
        _sqlalchemy.uninstall()
        dbapi.uninstall()
