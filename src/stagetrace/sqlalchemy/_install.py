"""SQLAlchemy 2.x, sync and asyncio: where each stage comes from.

* ``db.query`` — ``Connection._exec_single_context`` (and ``_exec_insertmany_context``), where
  SQLAlchemy calls the driver's ``execute``/``executemany`` and fires its
  ``before_cursor_execute``/``after_cursor_execute`` events (listening to those would cost every
  query far more; see below). Every engine, those made before instrumentation too; an
  ``AsyncEngine`` runs its ``sync_engine``. One stage per execution (an "insertmanyvalues"
  INSERT is one, with its batch size); the statement is the one prepared for the driver, with
  its placeholders.
* ``orm.compile`` — ``ClauseElement._compile_w_cache`` (no event exists): the statement's cache
  key and, on a miss, its compilation (an ORM statement's compile state included), with the
  compiled cache's verdict as ``cache.hit`` and ``sqlalchemy.compiled_cache``.
* ``orm.fetch`` — ORM rows turned into objects: ``orm.loading.instances`` (with the asyncio
  session's pre-buffering it does the work itself; otherwise the returned result's chunks are
  wrapped, so the stage runs where the rows are read, ``.all()`` say), with ``selectinload``
  follow-up queries nested in the load that triggers them; lazy loads
  (``_LazyLoader._emit_lazyload``) and ``selectinload`` batches (``_SelectInLoader.
  _load_for_path``) are ``orm.fetch`` stages of their own around their queries.
* ``db.connect`` — ``Engine.raw_connection`` (every ``Connection`` checks out through it) is
  the pool checkout; the pool's ``_do_get`` tells how long it waited for a free connection
  (``stagetrace.db.pool.wait_ns``, excluding time spent opening a new one), and a new DB-API
  connection (``_ConnectionRecord.__connect``) is a nested ``db.connect`` named ``connect``.
  The pool events fire only after a checkout, so they cannot time it.
* ``transaction`` — ``Connection._begin_impl``, ``_commit_impl``, ``_rollback_impl``: the
  engine's begin/commit/rollback events fire before the work and have no "after" counterpart.
  What the driver sends in them is theirs: asyncpg's ``COMMIT;``/``ROLLBACK;`` is not a second
  stage when the drivers are instrumented too (`stagetrace.dbapi`). Savepoints are statements
  SQLAlchemy executes: ``db.query`` stages (``SAVEPOINT``, ``RELEASE``, ``ROLLBACK``).

All patches are reversible (`Patcher`). No event listener is added: an application's own
listeners keep SQLAlchemy's event dispatch to themselves.
"""

from __future__ import annotations

import itertools
from typing import Any

from .. import _recorder
from .._names import remember
from .._patching import Patcher, leave, timed
from ..dbapi import _query

patcher = Patcher("sqlalchemy")
_SITE = "sqlalchemy"
_now = _recorder.now

# --- connection attributes ---------------------------------------------------------------------

_engines: dict[int, tuple[Any, dict[str, Any]]] = {}


def engine_attrs(engine: Any) -> dict[str, Any]:
    """``db.system.name``, ``db.namespace``, ``server.address``, ``server.port`` of an engine
    (computed once per URL object; the dict is shared and never mutated)."""
    url = engine.url
    entry = _engines.get(id(url))
    if entry is not None and entry[0] is url:
        return entry[1]
    attrs: dict[str, Any] = {"db.system.name": _query.system_name(str(engine.dialect.name))}
    if url.database:
        attrs["db.namespace"] = str(url.database)
    if url.host:
        attrs["server.address"] = str(url.host)
        if url.port:
            attrs["server.port"] = int(url.port)
    if len(_engines) >= 256:
        _engines.clear()
    _engines[id(url)] = (url, attrs)
    return attrs


# --- db.query ------------------------------------------------------------------------------------
#
# SQLAlchemy's ``before_cursor_execute``/``after_cursor_execute`` events would give the same
# two points, but listening to them (on the Engine class, or on each engine) turns on its event
# dispatch for every execution: measured with empty listeners, +70,000 instructions per Core
# query on SQLite (+75 %), paid by every query, recorded or not. The method those events fire in
# costs one function call when not recording.


def _query_params(context: Any) -> tuple[Any, bool]:
    many = bool(context.executemany)
    params = context.parameters
    if not many:
        params = params[0] if params else None
    return params, many


def _exec_single(orig: Any) -> Any:
    def _exec_single_context(self: Any, dialect: Any, context: Any, *args: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return orig(self, dialect, context, *args)
        try:
            params, many = _query_params(context)
            rec, attrs = _query.enter_query(
                engine_attrs(self.engine), context.statement, params, many
            )
        except Exception as exc:
            _recorder.internal_error(_SITE, exc)
            rec = attrs = None
        try:
            result = orig(self, dialect, context, *args)
        except BaseException as exc:
            leave(_SITE, rec, exc)
            raise
        if attrs is not None:
            try:
                rows = _query.rows_of(context.cursor)
                if rows is not None:
                    attrs["db.response.returned_rows"] = rows
            except Exception as exc:
                _recorder.internal_error(_SITE, exc)
        leave(_SITE, rec)
        return result

    return _exec_single_context


# --- orm.compile ---------------------------------------------------------------------------------

_cache_attrs: dict[Any, dict[str, Any]] = {}


def _compile_attrs(stats: Any) -> dict[str, Any] | None:
    return _cache_attrs.get(stats)


def _compile_name(compiled: Any) -> str:
    """The statement's short name, from its text cut as the ``db.query`` stage cuts it (the
    names are cached by text: an uncut text could be any size)."""
    text = getattr(compiled, "string", None)
    if not isinstance(text, str) or not text:
        return "compile"
    tl = _recorder.live()
    limit = tl.settings.max_sql_length if tl is not None else 4096
    return _query.text_of(text, limit)[1]


def _compile(orig: Any) -> Any:
    def _compile_w_cache(self: Any, dialect: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return orig(self, dialect, *args, **kwargs)
        try:
            rec = _recorder.enter("orm.compile", "compile")
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.compile", exc)
            rec = None
        try:
            result = orig(self, dialect, *args, **kwargs)
        except BaseException as exc:
            leave("sqlalchemy.compile", rec, exc)
            raise
        if rec is not None:
            try:
                _recorder.set_name(rec, _compile_name(result[0]))
                attrs = _compile_attrs(result[-1])
                if attrs:
                    _recorder.set_attrs(rec, attrs)
            except Exception as exc:
                _recorder.internal_error("sqlalchemy.compile", exc)
        leave("sqlalchemy.compile", rec)
        return result

    return _compile_w_cache


# --- db.connect: pool checkout ----------------------------------------------------------------

_CHECKOUT = _query.POOL_CHECKOUT


def _raw_connection(orig: Any) -> Any:
    def raw_connection(self: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return orig(self)
        try:
            rec = _recorder.enter_owned(
                "db.connect", "pool checkout", _CHECKOUT, engine_attrs(self)
            )
            # [ns spent opening new connections, inside the pool's _do_get]
            _recorder.set_aux(rec, [0, False])
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.connect", exc)
            rec = None
        try:
            result = orig(self)
        except BaseException as exc:
            leave("sqlalchemy.connect", rec, exc)
            raise
        leave("sqlalchemy.connect", rec)
        return result

    return raw_connection


def _checkout_box() -> Any:
    """The current pool checkout's record and scratch list, or (None, None)."""
    if not _recorder.is_open_for(_CHECKOUT, "db.connect"):
        return None, None
    rec = _recorder.current()
    box = _recorder.aux(rec)
    return (rec, box) if type(box) is list else (None, None)


def _do_get(orig: Any) -> Any:
    def _do_get(self: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return orig(self)
        try:
            rec, box = _checkout_box()
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.pool", exc)
            rec = box = None
        if box is None or box[1]:  # not a checkout we time, or QueuePool retrying itself
            return orig(self)
        box[1] = True
        opened = box[0]
        t0 = _now()
        try:
            return orig(self)
        finally:
            try:
                box[1] = False
                waited = _now() - t0 - (box[0] - opened)
                _recorder.set_attrs(rec, {"stagetrace.db.pool.wait_ns": max(0, waited)})
            except Exception as exc:
                _recorder.internal_error("sqlalchemy.pool", exc)

    return _do_get


def _pool_attrs(record: Any) -> dict[str, Any]:
    pool = getattr(record, "_ConnectionRecord__pool", None)
    dialect = getattr(pool, "_dialect", None)
    name = getattr(dialect, "name", None)
    return {"db.system.name": _query.system_name(name)} if isinstance(name, str) else {}


def _new_connection(orig: Any) -> Any:
    def __connect(self: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return orig(self)
        t0 = _now()
        try:
            rec = _recorder.enter("db.connect", "connect", _pool_attrs(self))
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.connect", exc)
            rec = None
        try:
            result = orig(self)
        except BaseException as exc:
            leave("sqlalchemy.connect", rec, exc)
            _opened(t0)
            raise
        leave("sqlalchemy.connect", rec)
        _opened(t0)
        return result

    return __connect


def _opened(t0: int) -> None:
    """A new connection took from `t0` until now: not waiting, for the enclosing checkout."""
    try:
        _, box = _checkout_box()
        if box is not None:
            box[0] += _now() - t0
    except Exception as exc:
        _recorder.internal_error("sqlalchemy.pool", exc)


# --- orm.fetch ---------------------------------------------------------------------------------


def _fetch_name(context: Any) -> str:
    """The mapped classes a query loads (``User``, ``User, Address``), or ``rows``."""
    names: list[str] = []
    for entity in context.compile_state._entities:
        mapper = getattr(entity, "mapper", None)
        cls = getattr(mapper, "class_", None)
        if cls is not None:
            name = cls.__name__
            if name not in names:
                names.append(name)
    return ", ".join(names) or "rows"


def _fetching(chunks: Any, size: Any, name: str) -> Any:
    """Iterate ``chunks(size)`` of an ORM result, each chunk (rows fetched and turned into
    objects, post-loads such as ``selectinload`` run) an ``orm.fetch`` stage."""
    it = chunks(size)
    first = True
    while True:
        if (not first and not size) or _recorder.current() is None:
            # the rest of an unbuffered result is empty: no stage for finding that out
            yield from it
            return
        first = False
        try:
            rec = _recorder.enter("orm.fetch", name)
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.fetch", exc)
            rec = None
        try:
            rows = next(it)
        except StopIteration:
            leave("sqlalchemy.fetch", rec)
            return
        except BaseException as exc:
            leave("sqlalchemy.fetch", rec, exc)
            raise
        try:
            _recorder.set_attrs(rec, {"rows": len(rows)})
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.fetch", exc)
        leave("sqlalchemy.fetch", rec)
        yield rows


def _traced_chunks(chunks: Any, name: str) -> Any:
    def traced(size: Any) -> Any:
        return _fetching(chunks, size, name)

    return traced


def _instances(orig: Any) -> Any:
    def instances(cursor: Any, context: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return orig(cursor, context)
        try:
            name = _fetch_name(context)
            prebuffer = bool(context.execution_options.get("prebuffer_rows", False))
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.fetch", exc)
            name = None
        if name is None:
            # Unrecorded, and not in the except: an error raised loading the rows (pre-buffered,
            # they load in here) must not get ours as its __context__.
            return orig(cursor, context)
        if not prebuffer:
            result = orig(cursor, context)
            try:
                chunks = _traced_chunks(result.chunks, name)
                result.chunks = chunks
                # as ChunkedIteratorResult builds it (``yield_per`` was applied already)
                size = getattr(result, "_yield_per", None) or None
                result.iterator = itertools.chain.from_iterable(chunks(size))
            except Exception as exc:
                _recorder.internal_error("sqlalchemy.fetch", exc)
            return result
        # The asyncio session pre-buffers: every row is loaded in here.
        try:
            rec = _recorder.enter("orm.fetch", name)
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.fetch", exc)
            rec = None
        try:
            result = orig(cursor, context)
        except BaseException as exc:
            leave("sqlalchemy.fetch", rec, exc)
            raise
        try:
            # chunks(None) iterates the pre-buffered list of chunks again, from the start
            _recorder.set_attrs(rec, {"rows": sum(len(chunk) for chunk in result.chunks(None))})
        except Exception as exc:
            _recorder.internal_error("sqlalchemy.fetch", exc)
        leave("sqlalchemy.fetch", rec)
        return result

    return instances


_relationship_names: dict[tuple[int, str], tuple[Any, str]] = {}


def _relationship_name(strategy: Any, how: str) -> str:
    """``how Model.relationship``, cached by relationship property (the loader strategies take
    no weak references; the property does, and the name depends on it alone)."""
    prop = strategy.parent_property
    entry = _relationship_names.get((id(prop), how))
    if entry is not None and entry[0]() is prop:
        return entry[1]
    return remember(_relationship_names, (id(prop), how), prop, f"{how} {prop}")


def _loader(how: str) -> Any:
    attrs = {"sqlalchemy.loader": how}

    def make(orig: Any) -> Any:
        def load(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None or not patcher.applied:
                return orig(self, *args, **kwargs)
            try:
                rec = _recorder.enter("orm.fetch", _relationship_name(self, f"{how} load"), attrs)
            except Exception as exc:
                _recorder.internal_error("sqlalchemy.loader", exc)
                rec = None
            try:
                result = orig(self, *args, **kwargs)
            except BaseException as exc:
                leave("sqlalchemy.loader", rec, exc)
                raise
            leave("sqlalchemy.loader", rec)
            return result

        return load

    return make


# --- transaction ---------------------------------------------------------------------------------


def _transaction_attrs(conn: Any, *rest: Any) -> dict[str, Any]:
    return engine_attrs(conn.engine)


# --- installation --------------------------------------------------------------------------------


def patch_core(module: Any) -> None:
    """Patch execution, compilation, checkout and transactions."""
    from sqlalchemy.engine import Connection, Engine, interfaces
    from sqlalchemy.pool import base as pool_base
    from sqlalchemy.pool import impl as pool_impl
    from sqlalchemy.sql import elements

    stats = interfaces.CacheStats
    _cache_attrs.update(
        {
            stats.CACHE_HIT: {"cache.hit": True, "sqlalchemy.compiled_cache": "hit"},
            stats.CACHE_MISS: {"cache.hit": False, "sqlalchemy.compiled_cache": "miss"},
            stats.CACHING_DISABLED: {"sqlalchemy.compiled_cache": "disabled"},
            stats.NO_CACHE_KEY: {"sqlalchemy.compiled_cache": "no key"},
            stats.NO_DIALECT_SUPPORT: {"sqlalchemy.compiled_cache": "unsupported"},
        }
    )
    for name in ("_exec_single_context", "_exec_insertmany_context"):
        if name in vars(Connection):
            patcher.wrap(Connection, name, _exec_single)
    patcher.wrap(elements.ClauseElement, "_compile_w_cache", _compile)
    patcher.wrap(Engine, "raw_connection", _raw_connection)
    for name in dir(pool_impl):
        cls = getattr(pool_impl, name)
        if isinstance(cls, type) and issubclass(cls, pool_base.Pool) and "_do_get" in vars(cls):
            patcher.wrap(cls, "_do_get", _do_get)
    patcher.wrap(pool_base._ConnectionRecord, "_ConnectionRecord__connect", _new_connection)
    for op in ("begin", "commit", "rollback"):
        # Owned by `_query.TRANSACTION`: what the driver sends in it (asyncpg's COMMIT or
        # ROLLBACK statement) is its work, not a db.query (`_query.recorded_elsewhere`).
        patcher.wrap(
            Connection,
            f"_{op}_impl",
            timed(
                "transaction",
                op,
                _transaction_attrs,
                site="sqlalchemy.transaction",
                owner=_query.TRANSACTION,
                patcher=patcher,
            ),
        )


def patch_orm(module: Any) -> None:
    """Patch ORM loading: result rows to objects, lazy loads, selectinload batches."""
    from sqlalchemy.orm import loading, strategies

    patcher.wrap(loading, "instances", _instances)
    lazy = getattr(strategies, "_LazyLoader", None) or getattr(strategies, "LazyLoader", None)
    if lazy is not None and "_emit_lazyload" in vars(lazy):
        patcher.wrap(lazy, "_emit_lazyload", _loader("lazy"))
    selectin = getattr(strategies, "_SelectInLoader", None) or getattr(
        strategies, "SelectInLoader", None
    )
    if selectin is not None and "_load_for_path" in vars(selectin):
        patcher.wrap(selectin, "_load_for_path", _loader("selectin"))


def unpatch() -> None:
    """Restore every patched attribute."""
    patcher.undo()
