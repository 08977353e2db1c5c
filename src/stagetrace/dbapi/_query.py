"""The ``db.query`` and ``db.connect`` stages, shared by the SQL integrations (DB-API drivers
and SQLAlchemy): the same attributes, and the same bookkeeping for the N+1 and duplicate-query
analyzers as the Django adapter's execute wrapper (`_recorder.note_query`, `_recorder.note_cut`,
`_sql.call_site`).

Parameter values are never recorded unless the ``record_sql_params`` option is on; the SQL
text keeps its placeholders. Attributes follow OpenTelemetry's database conventions.
"""

from __future__ import annotations

from typing import Any

from .. import _recorder, _sql
from .._patching import Patcher, leave

#: The DB-API drivers' patches (`stagetrace.dbapi`); wrappers left behind after `undo()` check
#: ``patcher.applied`` and record nothing.
patcher = Patcher("dbapi")

#: Driver and dialect names as OpenTelemetry's ``db.system.name`` values.
SYSTEMS = {
    "postgresql": "postgresql",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "oracle": "oracle.db",
    "mssql": "microsoft.sql_server",
}

#: Owner of a pool checkout's ``db.connect`` stage (SQLAlchemy's), by which the pool finds it
#: again to time its wait.
POOL_CHECKOUT = object()

#: Owner of SQLAlchemy's ``transaction`` stages (begin, commit, rollback): what the driver
#: executes in them is their work, not a query of its own (asyncpg sends ``COMMIT;`` and
#: ``ROLLBACK;`` as statements, where psycopg and sqlite3 call their connection's ``commit()``
#: and ``rollback()``, which are no queries).
TRANSACTION = object()

#: The stages whose driver work is theirs (`recorded_elsewhere`).
_RECORDED = frozenset({"db.query", "db.connect"})


def system_name(name: str) -> str:
    """``db.system.name`` for a driver's or dialect's name."""
    return SYSTEMS.get(name, name)


def params_kwarg(kwargs: dict[str, Any]) -> Any:
    """The parameters of an ``execute``/``executemany`` call passed by keyword (``params``,
    psycopg's ``params_seq``, sqlite3's ``parameters``)."""
    for name in ("params", "params_seq", "parameters", "seq_of_parameters"):
        if name in kwargs:
            return kwargs[name]
    return None


def recorded_elsewhere() -> bool:
    """Whether the database work starting now is recorded already: the current stage is a
    ``db.query`` (the ORM's or Django's, around the driver's call), a ``db.connect`` (Django's
    or SQLAlchemy's connect, whose initialization queries and driver-level connect belong to
    it; SQLAlchemy's pool checkout, whose ``pool_pre_ping`` belongs to it — a new connection it
    opens is SQLAlchemy's own nested ``connect``), or one of SQLAlchemy's ``transaction``
    stages (whose COMMIT or ROLLBACK the driver is sending: one stage, as over a driver that
    sends it without a statement), kept or past `max_stages`. On an internal error: True
    (record nothing)."""
    try:
        return _recorder.here_is(_RECORDED, TRANSACTION)
    except Exception as exc:
        _recorder.internal_error("dbapi.nesting", exc)
        return True


def text_of(sql: Any, limit: int) -> tuple[str, str, str | None]:
    """(SQL text as recorded, stage name, operation) of a statement: a string as it is (cut to
    `limit`), bytes decoded; a composed object (psycopg's ``sql.Composed``, a template string)
    only by its type, as its rendering may hold literal values."""
    if type(sql) is bytes:
        sql = sql.decode("utf-8", "replace")
    if type(sql) is str:
        text = sql if len(sql) <= limit else sql[:limit] + "…"
        name, op = _sql.describe(text)
        return text, name, op
    return f"<{type(sql).__name__}>", "SQL", None


def enter_query(
    base: dict[str, Any],
    sql: Any,
    params: Any,
    many: bool,
    owner: object = None,
) -> tuple[_recorder.Record | None, dict[str, Any] | None]:
    """Open a ``db.query`` stage for `sql` with the connection's attributes `base`; returns the
    record and its (own, mutable) attribute dict, (None, None) when not recording. With
    `owner`, the stage can be found again with `_recorder.find_open(owner)`."""
    tl = _recorder.live()
    if tl is None:
        return None, None
    cfg = tl.settings
    if type(sql) is bytes:
        sql = sql.decode("utf-8", "replace")
    text, name, op = text_of(sql, cfg.max_sql_length)
    attrs = dict(base)
    attrs["db.query.text"] = text
    if op:
        attrs["db.operation.name"] = op
    if many:
        attrs["db.operation.batch.size"] = (
            len(params) if isinstance(params, (list, tuple)) else None
        )
    if cfg.record_sql_params and params is not None:
        attrs["db.query.parameters"] = _sql.params_text(params, cfg.max_sql_length)
    if owner is None:
        rec = _recorder.enter("db.query", name, attrs)
    else:
        rec = _recorder.enter_owned("db.query", name, owner, attrs)
    if rec is not None and type(sql) is str:
        # The statement is its whole text, not the text recorded (cut at max_sql_length).
        if sql is not text:
            _recorder.note_cut(rec, attrs, sql)
        if not many and not text.startswith("<"):
            _recorder.note_repeat(rec, attrs, text, sql, params)
    return rec, attrs


def rows_of(cursor: Any) -> int | None:
    """A DB-API cursor's ``rowcount`` when the driver knows it (rows returned by a query, or
    affected by a change), else None."""
    try:
        count = cursor.rowcount
    except Exception:
        return None
    return count if type(count) is int and count >= 0 else None


def leave_query(site: str, cursor: Any, rec: _recorder.Record | None, attrs: Any) -> None:
    """Close a ``db.query`` stage opened by `enter_query` after the driver call returned, with
    the cursor's row count (``db.response.returned_rows``) when the driver knows it."""
    if attrs is not None:
        try:
            rows = rows_of(cursor)
            if rows is not None:
                attrs["db.response.returned_rows"] = rows
        except Exception as exc:
            _recorder.internal_error(site, exc)
    leave(site, rec)
