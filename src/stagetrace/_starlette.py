"""Starlette and FastAPI: every app, every stage.

Where each stage comes from:

* gateway — ``Starlette.__call__`` (the generic ASGI gateway, `stagetrace._asgi`).
* middleware — the app's middleware stack is built by ``build_middleware_stack`` from
  ``Middleware`` entries (the user's, plus ``ServerErrorMiddleware``, ``ExceptionMiddleware`` and
  FastAPI's own). While an instrumented app builds it, each entry's class is replaced by a
  transparent factory proxy: it builds the real middleware around an inner app that marks the
  in/out split, and proxies the instance to record each call. ``BaseHTTPMiddleware`` runs the
  inner app in a task and returns from ``call_next`` when the response starts, so for it the
  split is taken at ``call_next`` instead.
* route — ``Router.app`` matches once; the stage ends when a route's ``handle`` starts (Mounts
  add their prefix and keep matching), so the template is ``/api`` + ``/items/{item_id}``.
* view — ``Route.handle``/``WebSocketRoute.handle``: the endpoint (function, ``HTTPEndpoint``,
  FastAPI path operation); exceptions the endpoint raises are recorded on it even when an
  exception handler turns them into a response. FastAPI's dependency resolution and request
  validation are stages inside it.
* serialize — ``JSONResponse.render`` (and FastAPI's JSON responses), FastAPI's
  ``serialize_response`` (response_model validation and encoding).
* template — Jinja2 (`stagetrace._jinja2`); task — each ``BackgroundTask``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from contextvars import ContextVar
from typing import Any

import wrapt

from . import _asgi, _jinja2, _outbound, _recorder
from ._patching import Patcher, timed, timed_async

patcher = Patcher("starlette")
_lock = threading.RLock()
_get = _recorder._get
enter, leave = _recorder.enter, _recorder.exit
KIND, NAME, END, AUX, TL = (
    _recorder.KIND,
    _recorder.NAME,
    _recorder.END,
    _recorder.AUX,
    _recorder.TL,
)

_everything = False  # instrument(): every app; instrument_app(): only these
_apps: weakref.WeakSet[Any] = weakref.WeakSet()
_built: weakref.WeakSet[Any] = weakref.WeakSet()  # stacks built while instrumented
# While an instrumented app builds its stack: the middleware built so far, id -> name.
_building: ContextVar[dict[int, str] | None] = ContextVar(
    "stagetrace.starlette.building", default=None
)


def _qualname(obj: Any) -> str:
    while isinstance(obj, functools.partial):
        obj = obj.func
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return name if module in (None, "builtins") else f"{module}.{name}"


def _instrumented(app: Any) -> bool:
    return patcher.applied and (_everything or app in _apps)


# --- middleware ------------------------------------------------------------------------------
#
# A stack is ServerErrorMiddleware(app=M1(app=M2(app=...(app=Router)))). While an instrumented
# app builds it, each layer is constructed around a `_Link` to the next one instead of the next
# one itself. A link records the *next* layer's middleware stage, and marks the in/out split of
# the layer that calls it: one small coroutine per layer, and the middleware instances in the
# stack are the real objects (identity, isinstance and attributes untouched).


class _Link:
    """Between two layers: ``outer`` (the middleware holding this link as its app, or None at
    the top) and ``app`` (the next middleware, named ``inner``, or the router when None).
    Forwards attributes, so middleware that inspects the app it wraps sees the real one.
    For ``BaseHTTPMiddleware`` as ``outer``, HTTP requests are split at ``call_next`` instead
    (`split_http` false), because it runs the next layer in a task of its own."""

    __slots__ = ("app", "inner", "outer", "split_http")

    def __init__(self, app: Any, outer: str | None, inner: str | None, split_http: bool) -> None:
        self.app = app
        self.outer = outer
        self.inner = inner
        self.split_http = split_http

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan" or _get() is None or not patcher.applied:
            await self.app(scope, receive, send)
            return
        outer = None
        if self.outer is not None and (self.split_http or kind != "http"):
            outer = _recorder.open_middleware(self.outer)
            _recorder.inner_begin(outer)
        rec = _recorder.enter_middleware(self.inner) if self.inner is not None else None
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            leave(rec, exc)
            _recorder.inner_end(outer)
            raise
        leave(rec)
        _recorder.inner_end(outer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


def _split_at_call_next(dispatch: Any, name: str) -> Any:
    async def dispatch_func(request: Any, call_next: Any) -> Any:
        rec = _recorder.open_middleware(name)

        async def marked_call_next(request: Any) -> Any:
            _recorder.inner_begin(rec)
            try:
                return await call_next(request)
            finally:
                _recorder.inner_end(rec)

        return await dispatch(request, marked_call_next)

    return dispatch_func


class _FactoryProxy(wrapt.ObjectProxy):
    """Stands in for a middleware class in a ``Middleware`` entry while a stack is built."""

    def __init__(self, wrapped: Any, name: str) -> None:
        super().__init__(wrapped)
        self._self_name = name

    def __call__(self, app: Any, *args: Any, **kwargs: Any) -> Any:
        from starlette.middleware.base import BaseHTTPMiddleware

        cls, name = self.__wrapped__, self._self_name
        names = _building.get()
        inner = names.get(id(app)) if names else None
        base_http = isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware)
        instance = cls(_Link(app, name, inner, not base_http), *args, **kwargs)
        if base_http:
            instance.dispatch_func = _split_at_call_next(instance.dispatch_func, name)
        if names is not None:
            names[id(instance)] = name
        return instance


# --- routing and endpoints -------------------------------------------------------------------


def _finish_route(rec: list[Any], exc: BaseException | None = None) -> None:
    if rec[END]:
        return
    if _get() is rec:
        leave(rec, exc)
    else:
        _recorder.close(rec, exc)


def _open_route() -> list[Any] | None:
    """The route stage still matching, if any: the current stage, or an ancestor when a
    mounted sub-app's middleware runs inside it."""
    rec = _get()
    for _ in range(32):
        if rec is None:
            return None
        if rec[KIND] == "route" and not rec[END]:
            return rec
        rec = rec[_recorder.PARENT]
    return None


def _route_state(rec: list[Any]) -> dict[str, Any]:
    """Per-request routing state kept on the open route record: Mount prefixes passed, and
    the template FastAPI announced (``_route_selected``), if it does."""
    state = rec[AUX]
    if state is None:
        state = rec[AUX] = {"prefix": "", "template": None, "announced": False}
    return state  # type: ignore[no-any-return]


def _template(route: Any) -> str:
    return str(getattr(route, "path_format", None) or getattr(route, "path", ""))


def _matched(rec: list[Any], template: str, route: Any) -> None:
    rec[NAME] = template
    attrs: dict[str, Any] = {"http.route": template}
    name = getattr(route, "name", None)
    if name:
        attrs["starlette.route_name"] = name
    rec[_recorder.ATTRS] = attrs
    rec[TL].route = template
    _finish_route(rec)


def _endpoint_name(raw: tuple[Any, Any]) -> str:
    endpoint, method = raw
    if isinstance(endpoint, type):
        handler = method.lower() if isinstance(method, str) else None
        if handler == "head" and not hasattr(endpoint, "head"):
            handler = "get"
        if handler and hasattr(endpoint, handler):
            return f"{_qualname(endpoint)}.{handler}"
    return _qualname(endpoint)


def _record_raised(app: Any) -> Any:
    """Inside ``wrap_app_handling_exceptions``: note an exception on the current stage (the
    endpoint's) before an exception handler turns it into a response."""

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            cur = _get()
            if cur is not None and cur[_recorder.ERROR] is None:
                _recorder.set_error(cur, exc)
            raise

    return recording


# --- installation ----------------------------------------------------------------------------


def _install_core() -> None:
    from starlette import applications, background, responses, routing
    from starlette.middleware import Middleware

    def call(orig: Any) -> Any:
        async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
            if not _instrumented(self):
                return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
            if self.middleware_stack is not None and self not in _built:
                self.middleware_stack = None  # built before instrumentation: build it again
            framework = "fastapi" if type(self).__module__.startswith("fastapi") else "starlette"
            await _asgi.serve(functools.partial(orig, self), scope, receive, send, framework)
            return None

        return __call__

    patcher.wrap(applications.Starlette, "__call__", call)
    patcher.wrap(applications.Starlette, "build_middleware_stack", _build)

    def middleware_iter(orig: Any) -> Any:
        def __iter__(self: Any) -> Any:
            if _building.get() is None:
                return orig(self)
            cls, args, kwargs = self.cls, self.args, self.kwargs
            return iter((_FactoryProxy(cls, _qualname(cls)), args, kwargs))

        return __iter__

    patcher.wrap(Middleware, "__iter__", middleware_iter)
    patcher.wrap(routing.Router, "app", _router_app)
    patcher.wrap(routing.Route, "handle", _leaf_handle)
    patcher.wrap(routing.WebSocketRoute, "handle", _leaf_handle)

    def mount_handle(orig: Any) -> Any:
        async def handle(self: Any, scope: Any, receive: Any, send: Any) -> None:
            rec = _open_route()
            if rec is not None:
                state = _route_state(rec)
                prefix = getattr(self, "path", "")
                router = getattr(self.app, "router", self.app)
                if not isinstance(router, routing.Router):
                    # a mounted ASGI app (static files, ...): the mount is the route
                    _matched(rec, state["template"] or state["prefix"] + prefix + "/{path}", self)
                elif not state["announced"]:
                    state["prefix"] += prefix  # keep matching inside
            await orig(self, scope, receive, send)

        return handle

    patcher.wrap(routing.Mount, "handle", mount_handle)
    patcher.wrap(routing.Host, "handle", mount_handle)
    patcher.wrap(routing, "wrap_app_handling_exceptions", _wrap_handling)

    patcher.wrap(responses.JSONResponse, "render", _render)

    patcher.wrap(
        background.BackgroundTask,
        "__call__",
        timed_async("task", lambda task: (_qualname, task.func)),
    )


def _build(orig: Any) -> Any:
    def build_middleware_stack(self: Any) -> Any:
        if not _instrumented(self):
            return orig(self)
        names: dict[int, str] = {}
        token = _building.set(names)
        try:
            stack = orig(self)
        finally:
            _building.reset(token)
        _built.add(self)
        top = names.get(id(stack))
        # The outermost middleware's stage is entered by a link above it.
        return _Link(stack, None, top, True) if top is not None else stack

    return build_middleware_stack


def _render_name(response: Any) -> str:
    return f"{type(response).__name__}.render"


_render = timed("serialize", lambda response, content: (_render_name, response))


def _router_app(orig: Any) -> Any:
    async def app(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if _get() is None or scope["type"] == "lifespan" or _open_route() is not None:
            return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
        rec = enter("route", "<unmatched>")
        try:
            await orig(self, scope, receive, send)
        except BaseException as exc:
            if rec is not None:
                _finish_route(rec, exc)
            raise
        if rec is not None:
            _finish_route(rec)
        return None

    return app


def _leaf_handle(orig: Any) -> Any:
    """A route's ``handle``: routing is over (the route stage ends) and the endpoint runs (the
    view stage). A subclass handle calling its base's is recorded once."""

    async def handle(self: Any, scope: Any, receive: Any, send: Any) -> None:
        cur = _get()
        if cur is None or (cur[_recorder.OWNER] is self and cur[KIND] == "view"):
            return await orig(self, scope, receive, send)  # type: ignore[no-any-return]
        rec = _open_route()
        if rec is not None:
            state = _route_state(rec)
            template = state["template"] if state["announced"] else None
            _matched(rec, template or state["prefix"] + _template(self), self)
        view = _recorder.enter_owned(
            "view", (_endpoint_name, (self.endpoint, scope.get("method"))), self
        )
        try:
            await orig(self, scope, receive, send)
        except BaseException as exc:
            leave(view, exc)
            raise
        leave(view)
        return None

    return handle


def _route_selected(orig: Any) -> Any:
    """FastAPI announces each routing decision (its own telemetry hook): take the template from
    there, as FastAPI computes it for included routers and mounts."""

    def route_selected(*, scope: Any, path: str | None, mount: bool = False) -> None:
        rec = _open_route()
        if rec is not None and path is not None:
            state = _route_state(rec)
            state["announced"] = True
            if mount:
                state["prefix"] += path.removesuffix("/{path}")
                state["template"] = state["prefix"] + "/{path}"
            else:
                state["template"] = state["prefix"] + path
        orig(scope=scope, path=path, mount=mount)

    return route_selected


def _wrap_handling(orig: Any) -> Any:
    def wrap_app_handling_exceptions(app: Any, conn: Any) -> Any:
        return orig(_record_raised(app), conn)

    return wrap_app_handling_exceptions


def _install_fastapi_applications(module: Any) -> None:
    if "build_middleware_stack" in vars(module.FastAPI):
        patcher.wrap(module.FastAPI, "build_middleware_stack", _build)


def _install_fastapi_routing(module: Any) -> None:
    if "app" in vars(module.APIRouter):
        patcher.wrap(module.APIRouter, "app", _router_app)
    for name in ("APIRoute", "APIWebSocketRoute"):
        cls = getattr(module, name, None)
        if cls is not None and "handle" in vars(cls):
            patcher.wrap(cls, "handle", _leaf_handle)
    if hasattr(module, "_route_selected"):
        patcher.wrap(module, "_route_selected", _route_selected)
    patcher.wrap(module, "solve_dependencies", timed_async("view", "dependencies"))
    patcher.wrap(module, "serialize_response", timed_async("serialize", "response model"))
    if hasattr(module, "wrap_app_handling_exceptions"):
        patcher.wrap(module, "wrap_app_handling_exceptions", _wrap_handling)


def _install_fastapi_validation(utils: Any) -> None:
    def params(orig: Any) -> Any:
        def request_params_to_args(fields: Any, *args: Any, **kwargs: Any) -> Any:
            if not fields or _get() is None:
                return orig(fields, *args, **kwargs)
            rec = enter("serialize", "validate request params")
            try:
                result = orig(fields, *args, **kwargs)
            except BaseException as exc:
                leave(rec, exc)
                raise
            leave(rec)
            return result

        return request_params_to_args

    patcher.wrap(utils, "request_params_to_args", params)
    patcher.wrap(utils, "request_body_to_args", timed_async("serialize", "validate request body"))


def _install_fastapi_responses(module: Any) -> None:
    for name in ("ORJSONResponse", "UJSONResponse"):
        cls = getattr(module, name, None)
        if cls is not None and "render" in vars(cls):
            patcher.wrap(cls, "render", _render)


def _install() -> None:
    if patcher.applied:
        return
    patcher.start()
    _install_core()
    patcher.when_imported("fastapi.applications", _install_fastapi_applications)
    patcher.when_imported("fastapi.routing", _install_fastapi_routing)
    patcher.when_imported("fastapi.dependencies.utils", _install_fastapi_validation)
    patcher.when_imported("fastapi.responses", _install_fastapi_responses)
    _jinja2.install()
    _outbound.install()


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
    """Undo `instrument()` and `instrument_app()`: every patched attribute is restored.
    Middleware stacks built meanwhile keep thin proxies that record nothing."""
    global _everything
    with _lock:
        if not patcher.applied:
            return
        _everything = False
        _apps.clear()
        patcher.undo()
        _jinja2.uninstall()
        _outbound.uninstall()
