"""psycopg 3: ``db.query`` for ``execute``/``executemany`` of every cursor class (sync and
async, client- and server-side; ``Connection.execute`` goes through them), ``db.connect`` for
``Connection.connect``/``AsyncConnection.connect`` (and ``psycopg.connect``).

Not recorded: ``Cursor.stream``, ``copy``, and pipelines' individual statements beyond the
``execute`` calls that queue them. A query given as a ``psycopg.sql`` composition or a
template string is recorded by its type only (its rendering may hold literal values).
"""

from __future__ import annotations

import functools
import types
import weakref
from typing import Any

from .. import _recorder
from .._patching import PROXY, leave
from . import _query

_SITE = "dbapi.psycopg"
_BASE = {"db.system.name": "postgresql"}
_attrs_by_conn: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def conn_attrs(conn: Any) -> dict[str, Any]:
    """``db.system.name``, ``db.namespace``, ``server.address`` and ``server.port`` of a
    connection (read once per connection)."""
    try:
        found = _attrs_by_conn.get(conn)
    except TypeError:
        found = None
    if found is not None:
        return found
    attrs: dict[str, Any] = dict(_BASE)
    try:
        info = conn.info
        if info.dbname:
            attrs["db.namespace"] = info.dbname
        host = info.host
        if host and not host.startswith("/"):
            attrs["server.address"] = host
            port = info.port
            if port:
                attrs["server.port"] = int(port)
    except Exception:
        pass  # a closed connection: what we have
    try:
        _attrs_by_conn[conn] = attrs
    except TypeError:
        pass
    return attrs


def _begin(cursor: Any, query: Any, params: Any, many: bool) -> Any:
    try:
        return _query.enter_query(conn_attrs(cursor.connection), query, params, many)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        return None, None


def _sync(many: bool) -> Any:
    def make(orig: Any) -> Any:
        def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if (
                _recorder.current() is None
                or not _query.patcher.applied
                or _query.recorded_elsewhere()
            ):
                return orig(self, query, *args, **kwargs)
            rec, attrs = _begin(self, query, args[0] if args else _query.params_kwarg(kwargs), many)
            try:
                result = orig(self, query, *args, **kwargs)
            except BaseException as exc:
                leave(_SITE, rec, exc)
                raise
            _query.leave_query(_SITE, self, rec, attrs)
            return result

        return execute

    return make


def _async(many: bool) -> Any:
    def make(orig: Any) -> Any:
        async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if (
                _recorder.current() is None
                or not _query.patcher.applied
                or _query.recorded_elsewhere()
            ):
                return await orig(self, query, *args, **kwargs)
            rec, attrs = _begin(self, query, args[0] if args else _query.params_kwarg(kwargs), many)
            try:
                result = await orig(self, query, *args, **kwargs)
            except BaseException as exc:
                leave(_SITE, rec, exc)
                raise
            _query.leave_query(_SITE, self, rec, attrs)
            return result

        return execute

    return make


def _enter_connect() -> Any:
    if _query.recorded_elsewhere():
        return None
    try:
        return _recorder.enter("db.connect", "connect", _BASE)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        return None


def _connected(rec: Any, conn: Any) -> None:
    try:
        _recorder.set_attrs(rec, conn_attrs(conn))
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
    leave(_SITE, rec)


def _connect_sync(orig: Any) -> Any:
    def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return orig(cls, *args, **kwargs)
        rec = _enter_connect()
        try:
            conn = orig(cls, *args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        _connected(rec, conn)
        return conn

    return connect


def _connect_async(orig: Any) -> Any:
    async def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return await orig(cls, *args, **kwargs)
        rec = _enter_connect()
        try:
            conn = await orig(cls, *args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        _connected(rec, conn)
        return conn

    return connect


def _wrap_classmethod(owner: type, attr: str, make: Any) -> None:
    found = vars(owner)[attr]
    func: Any
    if type(found) is classmethod or type(found) is types.MethodType:
        # A classmethod, or the bound method OpenTelemetry's uninstrument() leaves in its place.
        func = _beneath(found)
    else:
        # Someone else's wrapper around the classmethod (OpenTelemetry's psycopg
        # instrumentation wraps ``connect`` with wrapt, whose proxy hands out the *original*
        # ``__func__``): call through it, so it keeps working beneath ours.
        def call_through(cls: Any, *args: Any, **kwargs: Any) -> Any:
            return found.__get__(None, cls)(*args, **kwargs)

        func = functools.update_wrapper(call_through, found.__func__)
    new = make(func)
    functools.update_wrapper(new, func)
    new.__stagetrace_patch__ = True
    _query.patcher.replace(owner, attr, classmethod(new))


def patch(module: Any) -> None:
    """Patch psycopg's cursor classes and connection factories."""
    import psycopg

    patcher = _query.patcher
    for cls, many_too, make in (
        (psycopg.Cursor, True, _sync),
        (psycopg.AsyncCursor, True, _async),
        (psycopg.ServerCursor, False, _sync),
        (psycopg.AsyncServerCursor, False, _async),
    ):
        if "execute" in vars(cls):
            patcher.wrap(cls, "execute", make(False))
        if many_too and "executemany" in vars(cls):
            patcher.wrap(cls, "executemany", make(True))
    original = _beneath(psycopg.Connection.connect)
    _wrap_classmethod(psycopg.Connection, "connect", _connect_sync)
    _wrap_classmethod(psycopg.AsyncConnection, "connect", _connect_async)
    # ``psycopg.connect`` is ``Connection.connect``: make it ours too. If someone else wrapped
    # it (OpenTelemetry's psycopg instrumentation wraps it with wrapt, around the original
    # ``Connection.connect``), replacing their wrapper would turn their tracing off: ours goes
    # beneath theirs instead, around the original — only right above the original bound
    # method, so no wrapper in between is ever cut out (a deeper chain is left as it is:
    # connections opened through it get no db.connect stage).
    connect = getattr(module, "connect", None)
    if type(connect) is types.MethodType and _beneath(connect) is original:
        patcher.replace(module, "connect", psycopg.Connection.connect)
    elif (
        isinstance(connect, PROXY)
        and type(connect.__wrapped__) is types.MethodType
        and _beneath(connect.__wrapped__) is original
    ):
        func = _connect_sync(original)
        functools.update_wrapper(func, original)
        func.__stagetrace_patch__ = True
        patcher.replace_wrapped(connect, types.MethodType(func, psycopg.Connection))


def _beneath(connect: Any) -> Any:
    """The function beneath a ``connect``: through bound methods, wrapt proxies and wrappers of
    ours (``psycopg.connect`` is ``Connection.connect``, however many hands wrapped either)."""
    func = getattr(connect, "__func__", connect)
    while getattr(func, "__stagetrace_patch__", False):
        func = func.__wrapped__
    return func
