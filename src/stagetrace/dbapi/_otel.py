"""Beside OpenTelemetry's DB-API instrumentation (``opentelemetry-instrumentation-dbapi`` and the
psycopg and sqlite3 instrumentations built on it): one record per query, not two.

OpenTelemetry's cursor wrapper sits outside the driver methods stagetrace patches (a subclass
of psycopg's cursor calling ``super().execute``, a proxy around sqlite3's), so it would ask
whether instrumentation is suppressed *before* stagetrace's ``db.query`` stage opens, and make
a CLIENT span for a query the stage records too. Every one of those wrappers decides in
``CursorTracer.traced_execution`` (``traced_execution_async``): for the queries stagetrace
records (psycopg cursors, and sqlite3 cursors of connections opened through its ``connect``)
the stage opens there, first. Inside it OpenTelemetry's check sees the suppression that
stagetrace's OpenTelemetry context holds in ``db.query`` stages (`stagetrace.otel`) and makes
no span, and the driver method beneath sees the stage open and records nothing more. Queries
stagetrace does not record (other drivers, ``callproc``) keep OpenTelemetry's span.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import _recorder
from .._patching import leave
from . import _query

_SITE = "dbapi.opentelemetry"
_METHODS = {"execute": False, "executemany": True}


def _connection_attrs(cursor: Any, is_async: bool) -> dict[str, Any] | None:
    """The connection attributes of a cursor whose queries stagetrace records, else None. Only
    cursors of the wrapper's own kind: OpenTelemetry's generic proxy may hand an async cursor
    to the sync ``traced_execution``, which then only creates the coroutine (the query runs
    when it is awaited, under stagetrace's own cursor patch)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(
        cursor, psycopg.AsyncCursor if is_async else psycopg.Cursor
    ):
        from ._psycopg import conn_attrs

        return conn_attrs(cursor.connection)
    sqlite3 = sys.modules.get("sqlite3")
    if not is_async and sqlite3 is not None and isinstance(cursor, sqlite3.Cursor):
        from ._sqlite import _ConnectionMixin, base_attrs

        if isinstance(cursor.connection, _ConnectionMixin):
            return base_attrs(cursor)
    return None


def _begin(
    cursor: Any, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], is_async: bool
) -> Any:
    """Open the ``db.query`` stage for this call, or (None, None) when stagetrace does not
    record it (or it is recorded already: Django's execute wrapper, SQLAlchemy)."""
    many = _METHODS.get(getattr(method, "__name__", ""))
    if many is None or _query.recorded_elsewhere():
        return None, None
    try:
        base = _connection_attrs(cursor, is_async)
        if base is None:
            return None, None
        sql = args[0] if args else kwargs.get("query", kwargs.get("sql"))
        params = args[1] if len(args) > 1 else _query.params_kwarg(kwargs)
        return _query.enter_query(base, sql, params, many)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        return None, None


def _sync(orig: Any) -> Any:
    def traced_execution(self: Any, cursor: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return orig(self, cursor, method, *args, **kwargs)
        rec, attrs = _begin(cursor, method, args, kwargs, False)
        if rec is None:
            return orig(self, cursor, method, *args, **kwargs)
        try:
            result = orig(self, cursor, method, *args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        _query.leave_query(_SITE, cursor, rec, attrs)
        return result

    return traced_execution


def _async(orig: Any) -> Any:
    async def traced_execution_async(
        self: Any, cursor: Any, method: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return await orig(self, cursor, method, *args, **kwargs)
        rec, attrs = _begin(cursor, method, args, kwargs, True)
        if rec is None:
            return await orig(self, cursor, method, *args, **kwargs)
        try:
            result = await orig(self, cursor, method, *args, **kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        _query.leave_query(_SITE, cursor, rec, attrs)
        return result

    return traced_execution_async


def patch(module: Any) -> None:
    """Wrap ``CursorTracer.traced_execution`` (and its async twin, where the installed release
    has it)."""
    tracer = getattr(module, "CursorTracer", None)
    if tracer is None:
        return
    patcher = _query.patcher
    if callable(vars(tracer).get("traced_execution")):
        patcher.wrap(tracer, "traced_execution", _sync)
    if callable(vars(tracer).get("traced_execution_async")):
        patcher.wrap(tracer, "traced_execution_async", _async)
