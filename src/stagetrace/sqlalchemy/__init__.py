"""SQLAlchemy 2.x (sync and asyncio): ORM compile, SQL, row loading, pool checkout and
transactions as stages.

::

    import stagetrace.sqlalchemy
    stagetrace.sqlalchemy.instrument()

Records, inside any timeline (a request recorded by a web adapter, or
``stagetrace.timeline("job")``):

* ``orm.compile`` per statement executed: its cache key and, on a miss, its compilation, with
  ``cache.hit`` and ``sqlalchemy.compiled_cache`` (``hit``, ``miss``, ``disabled``, ...);
* ``db.query`` per DB-API execution, with ``db.system.name``, ``db.namespace``,
  ``db.query.text`` (placeholders, never values), ``db.operation.name``,
  ``db.response.returned_rows`` where the driver knows it, and the N+1 / duplicate-query
  bookkeeping;
* ``orm.fetch`` where ORM rows become objects, lazy loads and ``selectinload`` batches as
  stages of their own around their queries;
* ``db.connect`` for each pool checkout (``stagetrace.db.pool.wait_ns``: time spent waiting
  for a free connection), with a nested ``connect`` when a new DB-API connection is opened;
* ``transaction`` for begin, commit and rollback.

Importing this module does not import SQLAlchemy: `instrument` patches it now if it is
imported, else when it is. The web adapters may `install` it for their requests (reference
counted); `uninstrument` undoes `instrument`.
"""

from __future__ import annotations

import importlib.util
import threading

from .. import _runtime
from . import _install

__all__ = ["install", "instrument", "is_instrumented", "uninstall", "uninstrument"]

_lock = threading.RLock()
_users = 0
_explicit = False


def install() -> None:
    """Patch SQLAlchemy — now if imported, else when it is (reference-counted: each adapter
    that asks calls `uninstall` once)."""
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        try:
            _runtime.settings()  # a configuration error shows here, at start-up
            patcher = _install.patcher
            patcher.start()
            patcher.when_imported("sqlalchemy", _install.patch_core)
            patcher.when_imported("sqlalchemy.orm", _install.patch_orm)
        except BaseException:
            _users -= 1
            raise


def uninstall() -> None:
    """Undo one `install`; SQLAlchemy is restored when nothing needs the patches any more."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            _install.unpatch()


def instrument() -> None:
    """Record SQLAlchemy's work in every timeline (idempotent)."""
    global _explicit
    if importlib.util.find_spec("sqlalchemy") is None:
        raise ImportError('stagetrace.sqlalchemy needs SQLAlchemy: pip install "sqlalchemy>=2"')
    with _lock:
        if not _explicit:
            install()
            _explicit = True


def uninstrument() -> None:
    """Undo `instrument()` (the adapters' own `install` calls stay in effect)."""
    global _explicit
    with _lock:
        if _explicit:
            _explicit = False
            uninstall()


def is_instrumented() -> bool:
    """Whether SQLAlchemy is being recorded (by `instrument()` or an adapter)."""
    return _install.patcher.applied
