"""sqlite3: ``db.connect`` for ``sqlite3.connect``, ``db.query`` for every statement.

sqlite3's ``Connection`` and ``Cursor`` are C types whose methods cannot be patched on the
class, and ``Connection.execute`` does not go through ``cursor()``. So ``sqlite3.connect`` is
wrapped to build the connection from a subclass of the factory it would have used (by default
``sqlite3.Connection``; a factory the application passes gets a subclass of its own), whose
``execute``/``executemany``/``executescript`` and ``cursor()`` record the statements; cursors
it makes are subclasses of the cursor factory asked for in the same way. ``isinstance`` checks
against ``sqlite3.Connection``/``sqlite3.Cursor`` (and the application's factories) still hold;
``type(conn) is sqlite3.Connection`` does not. Connections opened before instrumentation, or
through a ``connect`` imported by name beforehand (``from sqlite3 import connect``), are not
recorded.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

from .. import _recorder
from .._patching import leave
from . import _query

_SITE = "dbapi.sqlite3"
_BASE = {"db.system.name": "sqlite"}


def _database(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    db = args[0] if args else kwargs.get("database")
    try:
        return os.fsdecode(db) if db is not None else None
    except TypeError:
        return None


class _ConnectionMixin:
    """Mixed into a ``sqlite3.Connection`` (sub)class: records its statements."""

    _stagetrace_attrs: dict[str, Any] = _BASE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            db = _database(args, kwargs)
            self._stagetrace_attrs = {**_BASE, "db.namespace": db} if db else _BASE
        except Exception as exc:  # pragma: no cover - _database does not raise
            _recorder.internal_error(_SITE, exc)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        try:
            own = _own_cursor(type(self))
            if own is None:  # sqlite3's cursor(factory=Cursor), or an override passing through
                factory = args[0] if args else kwargs.get("factory")
                traced = _traced_class(factory or sys.modules["sqlite3"].Cursor, _CursorMixin)
                if args:
                    args = (traced, *args[1:])
                else:
                    kwargs = {**kwargs, "factory": traced}
            else:
                args, kwargs = _with_traced_factory(own, self, args, kwargs)
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
        return super().cursor(*args, **kwargs)  # type: ignore[misc]

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return super().execute(*args, **kwargs)  # type: ignore[misc]
        return _run(self, super().execute, args, kwargs, False)  # type: ignore[misc]

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return super().executemany(*args, **kwargs)  # type: ignore[misc]
        return _run(self, super().executemany, args, kwargs, True)  # type: ignore[misc]

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return super().executescript(*args, **kwargs)  # type: ignore[misc]
        return _run(self, super().executescript, args, kwargs, None)  # type: ignore[misc]


class _CursorMixin:
    """Mixed into a ``sqlite3.Cursor`` (sub)class: records its statements."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return super().execute(*args, **kwargs)  # type: ignore[misc]
        return _run(self, super().execute, args, kwargs, False)  # type: ignore[misc]

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return super().executemany(*args, **kwargs)  # type: ignore[misc]
        return _run(self, super().executemany, args, kwargs, True)  # type: ignore[misc]

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not _query.patcher.applied:
            return super().executescript(*args, **kwargs)  # type: ignore[misc]
        return _run(self, super().executescript, args, kwargs, None)  # type: ignore[misc]


def base_attrs(obj: Any) -> dict[str, Any]:
    """The attributes of the connection of `obj` (a connection or a cursor)."""
    attrs = getattr(obj, "_stagetrace_attrs", None)
    if attrs is None:
        attrs = getattr(getattr(obj, "connection", None), "_stagetrace_attrs", _BASE)
    return attrs


def _run(
    obj: Any,
    method: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    many: bool | None,
) -> Any:
    """Call `method` (execute, executemany; executescript for ``many=None``) as a ``db.query``
    stage, unless the statement is recorded already (Django's execute wrapper, SQLAlchemy)."""
    if _query.recorded_elsewhere():
        return method(*args, **kwargs)
    try:
        sql = args[0] if args else kwargs.get("sql", kwargs.get("sql_script"))
        params = args[1] if len(args) > 1 else kwargs.get("parameters")
        rec, attrs = _query.enter_query(base_attrs(obj), sql, params, bool(many))
    except Exception as exc:
        _recorder.internal_error(_SITE, exc)
        # Unrecorded. The call runs below, not in this except: an error it raises must not get
        # ours as its __context__.
        rec = attrs = None
    try:
        result = method(*args, **kwargs)
    except BaseException as exc:
        leave(_SITE, rec, exc)
        raise
    if attrs is not None and many is not None:
        try:
            rows = _query.rows_of(result)
            if rows is not None:
                attrs["db.response.returned_rows"] = rows
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
    leave(_SITE, rec)
    return result


#: Per traced connection class: the signature of the ``cursor()`` the application's class
#: defines (None: it has none, sqlite3's own runs; False: not introspectable).
_cursor_signatures: dict[type, Any] = {}


def _own_cursor(cls: type) -> Any:
    found = _cursor_signatures.get(cls, _UNSEEN)
    if found is not _UNSEEN:
        return found
    found = None
    connection = sys.modules["sqlite3"].Connection
    for k in cls.__mro__[1:]:
        if k is connection:
            break
        if k is not _ConnectionMixin and "cursor" in vars(k):
            try:
                found = inspect.signature(vars(k)["cursor"])
            except (TypeError, ValueError):
                found = False
            else:
                kinds = {p.kind for p in found.parameters.values()}
                if "factory" not in found.parameters and (
                    inspect.Parameter.VAR_POSITIONAL in kinds
                    or inspect.Parameter.VAR_KEYWORD in kinds
                ):
                    found = None  # ``cursor(self, *args, **kwargs)`` hands them on: as sqlite3's
            break
    if len(_cursor_signatures) < 256:
        _cursor_signatures[cls] = found
    return found


_UNSEEN = object()


def _with_traced_factory(
    signature: Any, conn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments for an application's own ``cursor()``: its ``factory`` argument, given or
    defaulted, replaced by the traced subclass of that class. Left as they are when it has no
    such parameter, its default is not a class (it picks one itself), or the call does not fit
    its signature (the application gets its own error)."""
    if signature is False:
        return args, kwargs
    param = signature.parameters.get("factory")
    if param is None:
        return args, kwargs
    try:
        bound = signature.bind_partial(conn, *args, **kwargs)
    except TypeError:
        return args, kwargs
    factory = bound.arguments.get("factory", param.default)
    if not isinstance(factory, type):
        return args, kwargs
    bound.arguments["factory"] = _traced_class(factory, _CursorMixin)
    return bound.args[1:], bound.kwargs


_classes: dict[tuple[type, type], type] = {}


def _traced_class(base: Any, mixin: type) -> Any:
    """`base` with `mixin` in front (cached), or `base` itself when it is not a class, or
    already traced."""
    if not isinstance(base, type) or issubclass(base, mixin):
        return base
    key = (base, mixin)
    cls = _classes.get(key)
    if cls is None:
        cls = type(base.__name__, (mixin, base), {"__module__": base.__module__})
        cls.__qualname__ = base.__qualname__
        if len(_classes) < 256:
            _classes[key] = cls
    return cls


_FACTORY_POSITION = 5  # sqlite3.connect(database, timeout, detect_types, isolation_level,
# check_same_thread, factory, ...)


def _connect(orig: Any) -> Any:
    def connect(*args: Any, **kwargs: Any) -> Any:
        if not _query.patcher.applied:
            return orig(*args, **kwargs)
        try:
            sqlite3 = sys.modules["sqlite3"]
            if len(args) > _FACTORY_POSITION:
                args = (
                    *args[:_FACTORY_POSITION],
                    _traced_class(args[_FACTORY_POSITION], _ConnectionMixin),
                    *args[_FACTORY_POSITION + 1 :],
                )
                call_args, call_kwargs = args, kwargs
            else:
                factory = kwargs.get("factory") or sqlite3.Connection
                call_args = args
                call_kwargs = {**kwargs, "factory": _traced_class(factory, _ConnectionMixin)}
        except Exception as exc:
            # A factory that cannot be subclassed (say): the connection's statements go
            # untraced. It is made below, not in this except, so that an error of sqlite3's
            # does not get ours as its __context__.
            _recorder.internal_error(_SITE, exc)
            call_args, call_kwargs = args, kwargs
        rec = None
        if _recorder.current() is not None and not _query.recorded_elsewhere():
            try:
                db = _database(args, kwargs)
                rec = _recorder.enter(
                    "db.connect", "connect", {**_BASE, "db.namespace": db} if db else _BASE
                )
            except Exception as exc:
                _recorder.internal_error(_SITE, exc)
        try:
            conn = orig(*call_args, **call_kwargs)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        leave(_SITE, rec)
        return conn

    return connect


def patch(module: Any) -> None:
    """Wrap ``sqlite3.connect`` (and ``sqlite3.dbapi2.connect``, the same function)."""
    patcher = _query.patcher
    original = module.connect
    patcher.wrap(module, "connect", _connect)
    dbapi2 = sys.modules.get("sqlite3.dbapi2")
    if dbapi2 is not None and vars(dbapi2).get("connect") is original:
        patcher.replace(dbapi2, "connect", module.connect)
