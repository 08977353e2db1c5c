"""asyncpg: ``db.query`` for ``Connection.execute``/``executemany``/``fetch``/``fetchval``/
``fetchrow``/``fetchmany`` and the same methods of prepared statements (pools hand out
proxies of these connections, so ``pool.fetch(...)`` is covered too), ``db.connect`` for
``asyncpg.connect``.

Not recorded: cursors (``Connection.cursor``), ``copy_*``, ``prepare`` itself, waiting for a
connection from an ``asyncpg`` pool (connections it opens are recorded when that happens during
a request), and ``Connection.reset``, with which a pool cleans up each connection it gets back
(its statements are the pool's housekeeping, the same after every query: not the
application's queries, nor an N+1 or duplicate query).
"""

from __future__ import annotations

import inspect
import weakref
from contextvars import ContextVar
from typing import Any

from .. import _recorder
from .._patching import leave
from . import _query

_SITE = "dbapi.asyncpg"
_BASE = {"db.system.name": "postgresql"}
_attrs_by_conn: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

_METHODS = ("execute", "executemany", "fetch", "fetchval", "fetchrow", "fetchmany")
#: True while ``Connection.reset`` runs in this context: its statements are not recorded.
_resetting: ContextVar[bool] = ContextVar("stagetrace.asyncpg.resetting", default=False)
_STATEMENT_METHODS = ("executemany", "fetch", "fetchval", "fetchrow", "fetchmany")


def conn_attrs(conn: Any) -> dict[str, Any]:
    """``db.system.name``, ``db.namespace``, ``server.address``, ``server.port`` of a
    connection (read once per connection)."""
    try:
        found = _attrs_by_conn.get(conn)
    except TypeError:
        found = None
    if found is not None:
        return found
    attrs: dict[str, Any] = dict(_BASE)
    params = getattr(conn, "_params", None)
    database = getattr(params, "database", None)
    if isinstance(database, str) and database:
        attrs["db.namespace"] = database
    addr = getattr(conn, "_addr", None)
    if isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str):
        attrs["server.address"] = addr[0]
        if isinstance(addr[1], int):
            attrs["server.port"] = addr[1]
    try:
        _attrs_by_conn[conn] = attrs
    except TypeError:
        pass
    return attrs


def _statement_call(args: tuple[Any, ...], kwargs: dict[str, Any], many: bool) -> Any:
    """The parameters of a connection method call ``(query, *args)`` or
    ``executemany(command, args)``."""
    rest = args[1:]
    if many:
        return rest[0] if rest else kwargs.get("args")
    return tuple(rest)


def _method(name: str, on_statement: bool) -> Any:
    many = name in ("executemany", "fetchmany")

    def make(orig: Any) -> Any:
        if not inspect.iscoroutinefunction(orig):
            return _plain_method(orig, many)

        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if (
                _recorder.current() is None
                or not _query.patcher.applied
                or _resetting.get()
                or _query.recorded_elsewhere()
            ):
                return await orig(self, *args, **kwargs)
            try:
                if on_statement:
                    conn = getattr(self, "_connection", None)
                    query = self.get_query()
                    params = (args[0] if args else kwargs.get("args")) if many else args
                else:
                    conn = self
                    query = args[0] if args else kwargs.get("query", kwargs.get("command"))
                    params = _statement_call(args, kwargs, many)
            except Exception as exc:
                _recorder.internal_error(_SITE, exc)
            else:
                return await _recorded(orig(self, *args, **kwargs), conn, query, params, many)
            # Not in the except: an error of the original's must not get ours as its context.
            return await orig(self, *args, **kwargs)

        return method

    return make


def _plain_method(orig: Any, many: bool) -> Any:
    """A prepared statement's method: asyncpg's is a plain function (``connresource.guarded``)
    that checks the statement's connection and raises right there, returning the coroutine
    only when the statement is usable. So is this one: the original runs first (its errors
    raised at the call, untouched), the query is read only once it accepted the call (reading
    it checks the connection too), and the coroutine it returned is recorded when awaited."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        awaitable = orig(self, *args, **kwargs)
        if (
            _recorder.current() is None
            or not _query.patcher.applied
            or _resetting.get()
            or _query.recorded_elsewhere()
        ):
            return awaitable
        try:
            conn = getattr(self, "_connection", None)
            query = self.get_query()
            params = (args[0] if args else kwargs.get("args")) if many else args
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
            return awaitable
        return _recorded(awaitable, conn, query, params, many)

    return method


async def _recorded(awaitable: Any, conn: Any, query: Any, params: Any, many: bool) -> Any:
    """Await a query's coroutine as a ``db.query`` stage (unrecorded if the stage cannot be
    opened: the coroutine is awaited outside the ``except``, so an error it raises is not
    chained to ours)."""
    try:
        rec, attrs = _query.enter_query(conn_attrs(conn), query, params, many)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        rec = attrs = None
    try:
        result = await awaitable
    except BaseException as exc:
        leave(_SITE, rec, exc)
        raise
    if attrs is not None and type(result) is list:
        attrs["db.response.returned_rows"] = len(result)
    leave(_SITE, rec)
    return result


def _reset(orig: Any) -> Any:
    async def reset(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return await orig(self, *args, **kwargs)
        token = _resetting.set(True)
        try:
            return await orig(self, *args, **kwargs)
        finally:
            _resetting.reset(token)

    return reset


def _connect(orig: Any) -> Any:
    async def connect(*args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied or _query.recorded_elsewhere():
            return await orig(*args, **kwargs)
        try:
            rec = _recorder.enter("db.connect", "connect", _BASE)
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
            rec = None
        try:
            conn = await orig(*args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        try:
            _recorder.set_attrs(rec, conn_attrs(conn))
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
        leave(_SITE, rec)
        return conn

    return connect


def patch(module: Any) -> None:
    """Patch asyncpg's connection and prepared statement methods, ``Connection.reset`` and
    ``connect``."""
    from asyncpg import connection, prepared_stmt

    patcher = _query.patcher
    for name in _METHODS:
        if name in vars(connection.Connection):
            patcher.wrap(connection.Connection, name, _method(name, False))
    if "reset" in vars(connection.Connection):
        patcher.wrap(connection.Connection, "reset", _reset)
    for name in _STATEMENT_METHODS:
        if name in vars(prepared_stmt.PreparedStatement):
            patcher.wrap(prepared_stmt.PreparedStatement, name, _method(name, True))
    original = connection.connect
    patcher.wrap(connection, "connect", _connect)
    if getattr(module, "connect", None) is original:
        patcher.replace(module, "connect", connection.connect)
