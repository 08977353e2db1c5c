"""Database stages: ``db.query``, ``db.connect``, ``orm.compile``, ``orm.fetch``, ``transaction``.

SQL execution goes through Django's documented hook, ``connection.execute_wrapper``: ours is put
first in every connection's ``execute_wrappers`` (so it is outermost and never disturbs the
stack that ``execute_wrapper()`` blocks push and pop), which covers ORM queries, raw cursors,
``.raw()``, ``executemany`` and every backend. Parameter values are never recorded unless the
``record_sql_params`` option is on; the SQL text keeps its placeholders. Attributes follow
OpenTelemetry's database conventions (``db.system.name``, ``db.namespace``, ``db.query.text``,
``db.operation.name``, ``db.response.returned_rows``).
"""

from __future__ import annotations

from typing import Any

from .. import _recorder, _sql
from .._names import remember
from .._patching import leave, timed
from ._common import patcher

_SITE = "django.db"

_COMPILERS = {
    "SQLCompiler": "SELECT",
    "SQLInsertCompiler": "INSERT",
    "SQLDeleteCompiler": "DELETE",
    "SQLUpdateCompiler": "UPDATE",
    "SQLAggregateCompiler": "SELECT",
}

#: Django's vendor names as OpenTelemetry's ``db.system.name`` values.
_SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite", "mysql": "mysql", "oracle": "oracle.db"}

# Stage names by model class. A model of the project's registry lives as long as the process,
# and its name is cached plainly (a lookup per query); one made in a test (``isolate_apps``)
# is freed with its registry, so its name is cached without keeping it alive (`remember`).
_compile_names: dict[tuple[type, Any], str] = {}
_model_names: dict[Any, str] = {}
_made_names: dict[tuple[Any, int], tuple[Any, str]] = {}


def _for_good(model: Any) -> bool:
    """Whether `model` belongs to Django's registry (or is None): it is never freed."""
    if model is None:
        return True
    from django.apps import apps

    return getattr(getattr(model, "_meta", None), "apps", None) is apps


def _made_name(kind: Any, model: Any, name: Any) -> str:
    """The cached name of a model made outside the registry; `name(model)` makes it."""
    entry = _made_names.get((kind, id(model)))
    if entry is not None and entry[0]() is model:
        return entry[1]
    made: str = name(model)
    return remember(_made_names, (kind, id(model)), model, made)


def _compile_name(compiler: Any) -> str:
    model = getattr(compiler.query, "model", None)
    key = (type(compiler), model)
    name = _compile_names.get(key)
    if name is None:
        op = "SQL"
        for cls in type(compiler).__mro__:
            op = _COMPILERS.get(cls.__name__, "")
            if op:
                break
        if not _for_good(model):
            return _made_name(key[0], model, lambda m: f"{op} {m._meta.label}".strip())
        label = model._meta.label if model is not None else "query"
        name = f"{op} {label}".strip()
        if len(_compile_names) < 4096:
            _compile_names[key] = name
    return name


def _model_name(model: Any) -> str:
    """``app_label.Model`` (``Options.label`` formats it anew on every read), cached per model."""
    name = _model_names.get(model)
    if name is None:
        if not _for_good(model):
            return _made_name(None, model, lambda m: str(m._meta.label))
        name = str(model._meta.label) if model is not None else "query"
        if len(_model_names) < 4096:
            _model_names[model] = name
    return name


def _conn_attrs(conn: Any) -> dict[str, Any]:
    """The attributes of a query that come from its connection (read per query: test runners
    change a connection's database name)."""
    name = conn.settings_dict.get("NAME")
    return {
        "db.system.name": _SYSTEMS.get(conn.vendor, str(conn.vendor)),
        "db.namespace": name if type(name) is str else (str(name) if name is not None else None),
        "stagetrace.db.alias": conn.alias,
    }


def execute_wrapper(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
    """Django execute wrapper: one ``db.query`` stage per statement."""
    if _recorder.current() is None or not patcher.applied:
        return execute(sql, params, many, context)
    try:
        tl = _recorder.live()
        if tl is not None:  # None: this context's timeline ended (work a request left running)
            conn = context["connection"]
            cfg = tl.settings
            if type(sql) is str:
                limit = cfg.max_sql_length
                text = sql if len(sql) <= limit else sql[:limit] + "…"
                name, op = _sql.describe(text)
                key = sql  # the statement is its whole text, not the text recorded
            else:  # a composed SQL object: its str() may hold literal values
                text, name, op = f"<{type(sql).__name__}>", "SQL", None
                key = text
            attrs = _conn_attrs(conn)
            attrs["db.query.text"] = text
            if op:
                attrs["db.operation.name"] = op
            if many:
                attrs["db.operation.batch.size"] = (
                    len(params) if isinstance(params, (list, tuple)) else None
                )
            if cfg.record_sql_params and params is not None:
                attrs["db.query.parameters"] = _sql.params_text(params, cfg.max_sql_length)
            rec = _recorder.enter("db.query", name, attrs)
            if rec is not None:
                if key is not text:
                    _recorder.note_cut(rec, attrs, key)
                if not many:
                    _recorder.note_repeat(rec, attrs, text, key, params)
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        tl = None
    if tl is None:
        # Unrecorded. Not in the try: an error of the statement's would be taken for ours, and
        # the statement run again; nor in the except: it would get ours as its __context__.
        return execute(sql, params, many, context)
    try:
        result = execute(sql, params, many, context)
    except BaseException as exc:
        leave(_SITE, rec, exc)
        raise
    try:
        # The DB-API cursor itself: Django's CursorWrapper would go through its __getattr__.
        cursor = context["cursor"]
        rowcount = getattr(cursor, "cursor", cursor).rowcount
        if type(rowcount) is int and rowcount >= 0:
            attrs["db.response.returned_rows"] = rowcount
    except Exception:
        pass
    leave(_SITE, rec)
    return result


def _add_wrapper(connection: Any) -> None:
    wrappers = connection.execute_wrappers
    if execute_wrapper not in wrappers:
        wrappers.insert(0, execute_wrapper)


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    if patcher.applied:
        _add_wrapper(connection)


def _connect_attrs(conn: Any) -> dict[str, Any]:
    return {
        "db.system.name": _SYSTEMS.get(conn.vendor, str(conn.vendor)),
        "stagetrace.db.alias": str(conn.alias),
    }


def install() -> None:
    from django.core.exceptions import EmptyResultSet, FullResultSet
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
        timed("db.connect", lambda conn: str(conn.alias), _connect_attrs, site="django.connect"),
    )
    for op in ("commit", "rollback"):
        patcher.wrap(
            BaseDatabaseWrapper,
            op,
            timed(
                "transaction",
                op,
                lambda conn: {"stagetrace.db.alias": str(conn.alias)},
                site="django.transaction",
            ),
        )

    # --- atomic blocks: one Atomic object may be entered by many threads at once, so the open
    # stage is found again by owner, never stored on the object.
    def atomic_enter(orig: Any) -> Any:
        def __enter__(self: Any) -> Any:
            rec = None
            if _recorder.current() is not None:
                try:
                    rec = _recorder.enter_owned(
                        "transaction",
                        "atomic",
                        self,
                        {
                            "stagetrace.db.alias": str(self.using or "default"),
                            "savepoint": bool(self.savepoint),
                        },
                    )
                except Exception as exc:
                    _recorder.internal_error("django.atomic", exc)
            try:
                return orig(self)
            except BaseException as exc:
                leave("django.atomic", rec, exc)
                raise

        return __enter__

    def atomic_exit(orig: Any) -> Any:
        def __exit__(self: Any, exc_type: Any, exc_value: Any, traceback: Any) -> Any:
            rec = None
            if _recorder.current() is not None:
                try:
                    rec = _recorder.find_open(self)
                except Exception as exc:
                    _recorder.internal_error("django.atomic", exc)
            try:
                result = orig(self, exc_type, exc_value, traceback)
            except BaseException as exc:
                _exit_owned(rec, exc, "error")
                raise
            _exit_owned(rec, exc_value, "rollback" if exc_type else "commit")
            return result

        return __exit__

    patcher.wrap(Atomic, "__enter__", atomic_enter)
    patcher.wrap(Atomic, "__exit__", atomic_exit)

    # --- ORM compile: every compiler class that defines as_sql -----------------------------
    # What a compiler raises to tell its caller the query needs no running: not a failure.
    no_query = (EmptyResultSet, FullResultSet)

    def as_sql(orig: Any) -> Any:
        def as_sql(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None:
                return orig(self, *args, **kwargs)
            try:
                # A connection opened while stagetrace was not installed, in a thread other than
                # the one that installed it (asgiref's executor keeps its own), has no execute
                # wrapper yet: it gets it here, before its query runs.
                wrappers = self.connection.execute_wrappers
                if execute_wrapper not in wrappers:
                    wrappers.insert(0, execute_wrapper)
                # once: a compiler calling its own super().as_sql() makes one stage only
                rec = _recorder.enter_owned("orm.compile", _compile_name(self), self, once=True)
            except Exception as exc:
                _recorder.internal_error("django.compile", exc)
                rec = None
            try:
                result = orig(self, *args, **kwargs)
            except no_query:
                # Django's own signal, caught by its caller: a query that matches nothing (or
                # everything) is not run, or becomes a condition. Nothing failed.
                leave("django.compile", rec)
                raise
            except BaseException as exc:
                leave("django.compile", rec, exc)
                raise
            leave("django.compile", rec)
            return result

        return as_sql

    for name in _COMPILERS:
        cls = getattr(compiler, name)
        if "as_sql" in vars(cls):
            patcher.wrap(cls, "as_sql", as_sql)

    # --- ORM fetch: a queryset evaluated (rows fetched, instances built) -------------------
    def fetch_all(orig: Any) -> Any:
        def _fetch_all(self: Any) -> None:
            if self._result_cache is not None or _recorder.current() is None:
                return orig(self)  # type: ignore[no-any-return]
            try:
                rec = _recorder.enter("orm.fetch", _model_name(self.model))
            except Exception as exc:
                _recorder.internal_error("django.fetch", exc)
                rec = None
            try:
                orig(self)
            except BaseException as exc:
                leave("django.fetch", rec, exc)
                raise
            try:
                if rec is not None and self._result_cache is not None:
                    _recorder.set_attrs(rec, {"rows": len(self._result_cache)})
            except Exception as exc:
                _recorder.internal_error("django.fetch", exc)
            leave("django.fetch", rec)
            return None

        return _fetch_all

    patcher.wrap(query.QuerySet, "_fetch_all", fetch_all)
    patcher.wrap(query.RawQuerySet, "_fetch_all", fetch_all)


def _exit_owned(rec: Any, exc: BaseException | None, outcome: str) -> None:
    if rec is None:
        return
    try:
        _recorder.set_attrs(rec, {"outcome": outcome})
        _recorder.finish(rec, exc)
    except Exception as e:
        _recorder.internal_error("django.atomic", e)


def uninstall() -> None:
    from django.conf import settings
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.disconnect(dispatch_uid="stagetrace.django")
    if settings.configured:
        for conn in connections.all(initialized_only=True):
            while execute_wrapper in conn.execute_wrappers:
                conn.execute_wrappers.remove(execute_wrapper)
