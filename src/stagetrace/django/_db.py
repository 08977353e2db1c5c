"""Database stages: ``db.query``, ``db.connect``, ``orm.compile``, ``orm.fetch``, ``transaction``.

SQL execution goes through Django's documented hook, ``connection.execute_wrapper``: ours is put
first in every connection's ``execute_wrappers`` (so it is outermost and never disturbs the
stack that ``execute_wrapper()`` blocks push and pop), which covers ORM queries, raw cursors,
``.raw()``, ``executemany`` and every backend. Parameter values are never recorded unless the
``record_sql_params`` option is on; the SQL text keeps its placeholders.
"""

from __future__ import annotations

from typing import Any

from .. import _recorder, _sql
from .._patching import timed
from .._safety import report
from ._common import patcher

enter, leave = _recorder.enter, _recorder.exit
_get = _recorder._get
OWNER, TL, ATTRS, KIND = _recorder.OWNER, _recorder.TL, _recorder.ATTRS, _recorder.KIND

_COMPILERS = {
    "SQLCompiler": "SELECT",
    "SQLInsertCompiler": "INSERT",
    "SQLDeleteCompiler": "DELETE",
    "SQLUpdateCompiler": "UPDATE",
    "SQLAggregateCompiler": "SELECT",
}


def _compile_name(compiler: Any) -> str:
    op = "SQL"
    for cls in type(compiler).__mro__:
        op = _COMPILERS.get(cls.__name__, "")
        if op:
            break
    model = getattr(compiler.query, "model", None)
    label = model._meta.label if model is not None else "query"
    return f"{op} {label}".strip()


def _model_name(model: Any) -> str:
    return str(model._meta.label) if model is not None else "query"


def execute_wrapper(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
    """Django execute wrapper: one ``db.query`` stage per statement."""
    cur = _get()
    if cur is None or not patcher.applied:
        return execute(sql, params, many, context)
    try:
        conn = context["connection"]
        cfg = cur[TL].settings
        if type(sql) is str:
            text = sql if len(sql) <= cfg.max_sql_length else sql[: cfg.max_sql_length] + "…"
            name: Any = (_sql.statement_name, text)
        else:  # a composed SQL object: its str() may hold literal values
            text = f"<{type(sql).__name__}>"
            name = "SQL"
        attrs: dict[str, Any] = {
            "db.system": conn.vendor,
            "db.name": conn.settings_dict.get("NAME"),
            "db.alias": conn.alias,
            "db.statement": text,
        }
        if many:
            attrs["db.executemany"] = True
            if isinstance(params, (list, tuple)):
                attrs["db.batch_size"] = len(params)
        if cfg.record_sql_params and params is not None:
            attrs["db.params"] = repr(params)[: cfg.max_sql_length]
    except Exception as exc:
        report("django.db.attrs", exc)
        return execute(sql, params, many, context)
    rec = enter("db.query", name, attrs)
    try:
        result = execute(sql, params, many, context)
    except BaseException as exc:
        leave(rec, exc)
        raise
    try:
        # The DB-API cursor itself: Django's CursorWrapper would go through its __getattr__.
        cursor = context["cursor"]
        rowcount = getattr(cursor, "cursor", cursor).rowcount
        if type(rowcount) is int and rowcount >= 0:
            attrs["db.rows"] = rowcount
    except Exception:
        pass
    leave(rec)
    return result


def _add_wrapper(connection: Any) -> None:
    wrappers = connection.execute_wrappers
    if execute_wrapper not in wrappers:
        wrappers.insert(0, execute_wrapper)


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    if patcher.applied:
        _add_wrapper(connection)


def install() -> None:
    from django.db import connections
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.signals import connection_created
    from django.db.models import query
    from django.db.models.sql import compiler
    from django.db.transaction import Atomic

    # --- execute wrapper on every connection ------------------------------------------------
    def init(orig: Any) -> Any:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            orig(self, *args, **kwargs)
            if patcher.applied:
                _add_wrapper(self)

        return __init__

    patcher.wrap(BaseDatabaseWrapper, "__init__", init)
    connection_created.connect(_on_connection_created, dispatch_uid="stagetrace.django")
    from django.conf import settings

    if settings.configured:  # else no connection exists yet: each gets it when created
        for conn in connections.all(initialized_only=True):
            _add_wrapper(conn)

    patcher.wrap(
        BaseDatabaseWrapper,
        "connect",
        timed(
            "db.connect",
            lambda conn: conn.alias,
            lambda conn: {"db.system": conn.vendor, "db.alias": conn.alias},
        ),
    )
    for op in ("commit", "rollback"):
        patcher.wrap(
            BaseDatabaseWrapper, op, timed("transaction", op, lambda conn: {"db.alias": conn.alias})
        )

    # --- atomic blocks: one Atomic object may be entered by many threads at once, so the open
    # stage is found again by owner, never stored on the object.
    def atomic_enter(orig: Any) -> Any:
        def __enter__(self: Any) -> Any:
            rec = None
            if _get() is not None:
                rec = _recorder.enter_owned(
                    "transaction",
                    "atomic",
                    self,
                    {"db.alias": self.using or "default", "savepoint": bool(self.savepoint)},
                )
            try:
                return orig(self)
            except BaseException as exc:
                leave(rec, exc)
                raise

        return __enter__

    def atomic_exit(orig: Any) -> Any:
        def __exit__(self: Any, exc_type: Any, exc_value: Any, traceback: Any) -> Any:
            rec = _recorder.find_open(self) if _get() is not None else None
            try:
                result = orig(self, exc_type, exc_value, traceback)
            except BaseException as exc:
                _recorder.annotate_record(rec, {"outcome": "error"})
                _exit_owned(rec, exc)
                raise
            _recorder.annotate_record(rec, {"outcome": "rollback" if exc_type else "commit"})
            _exit_owned(rec, exc_value)
            return result

        return __exit__

    patcher.wrap(Atomic, "__enter__", atomic_enter)
    patcher.wrap(Atomic, "__exit__", atomic_exit)

    # --- ORM compile: every compiler class that defines as_sql -----------------------------
    def as_sql(orig: Any) -> Any:
        def as_sql(self: Any, *args: Any, **kwargs: Any) -> Any:
            cur = _get()
            # Not recording, or a compiler calling its own super().as_sql(): one stage only.
            if cur is None or (cur[OWNER] is self and cur[KIND] == "orm.compile"):
                return orig(self, *args, **kwargs)
            rec = enter("orm.compile", (_compile_name, self))
            if rec is not None:
                rec[OWNER] = self
            try:
                result = orig(self, *args, **kwargs)
            except BaseException as exc:
                leave(rec, exc)
                raise
            leave(rec)
            return result

        return as_sql

    for name in _COMPILERS:
        cls = getattr(compiler, name)
        if "as_sql" in vars(cls):
            patcher.wrap(cls, "as_sql", as_sql)

    # --- ORM fetch: a queryset evaluated (rows fetched, instances built) -------------------
    def fetch_all(orig: Any) -> Any:
        def _fetch_all(self: Any) -> None:
            if self._result_cache is not None or _get() is None:
                return orig(self)  # type: ignore[no-any-return]
            rec = enter("orm.fetch", (_model_name, self.model))
            try:
                orig(self)
            except BaseException as exc:
                leave(rec, exc)
                raise
            if rec is not None and self._result_cache is not None:
                rec[ATTRS] = {"rows": len(self._result_cache)}
            leave(rec)
            return None

        return _fetch_all

    patcher.wrap(query.QuerySet, "_fetch_all", fetch_all)
    patcher.wrap(query.RawQuerySet, "_fetch_all", fetch_all)


def _exit_owned(rec: Any, exc: BaseException | None) -> None:
    if rec is None:
        return
    if _get() is rec:
        leave(rec, exc)
    else:  # inner stages left open: close ours without disturbing the current one
        _recorder.close(rec, exc)


def uninstall() -> None:
    from django.conf import settings
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.disconnect(dispatch_uid="stagetrace.django")
    if settings.configured:
        for conn in connections.all(initialized_only=True):
            while execute_wrapper in conn.execute_wrappers:
                conn.execute_wrappers.remove(execute_wrapper)
