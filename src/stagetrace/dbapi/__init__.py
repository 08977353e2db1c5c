"""SQL without an ORM: ``db.query`` and ``db.connect`` stages for the DB-API drivers an
application uses directly — sqlite3, psycopg 3 (sync and async) and asyncpg.

::

    import stagetrace.dbapi
    stagetrace.dbapi.instrument()

Each driver is patched when it is imported (now, if it already is). Statements that Django's
execute wrapper or SQLAlchemy already record are not recorded a second time: inside a
``db.query`` stage the drivers add nothing, a connection opened inside another
``db.connect`` stage is that stage, and so is the COMMIT or ROLLBACK asyncpg sends inside
SQLAlchemy's ``transaction`` stage. Beside OpenTelemetry's DB-API instrumentation a query is
stagetrace's stage and not a second span (`_otel`). The web adapters may `install` it for their
requests; `uninstrument()` undoes `instrument()`. What each driver covers, and what it does
not, is in its module (`_sqlite`, `_psycopg`, `_asyncpg`).
"""

from __future__ import annotations

import threading

from .. import _runtime
from . import _query

__all__ = ["install", "instrument", "is_instrumented", "uninstall", "uninstrument"]

_lock = threading.RLock()
_users = 0
_explicit = False


def _patch_sqlite3(module: object) -> None:
    from . import _sqlite

    _sqlite.patch(module)


def _patch_psycopg(module: object) -> None:
    from . import _psycopg

    _psycopg.patch(module)


def _patch_asyncpg(module: object) -> None:
    from . import _asyncpg

    _asyncpg.patch(module)


def _patch_opentelemetry_dbapi(module: object) -> None:
    from . import _otel

    _otel.patch(module)


def install() -> None:
    """Patch the drivers — now if imported, else when they are (reference-counted: each
    adapter that asks calls `uninstall` once)."""
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        try:
            _runtime.settings()  # a configuration error shows here, at start-up
            patcher = _query.patcher
            patcher.start()
            patcher.when_imported("sqlite3", _patch_sqlite3)
            patcher.when_imported("psycopg", _patch_psycopg)
            patcher.when_imported("asyncpg", _patch_asyncpg)
            # OpenTelemetry's DB-API cursor wrapper runs outside the drivers' methods (`_otel`).
            patcher.when_imported("opentelemetry.instrumentation.dbapi", _patch_opentelemetry_dbapi)
        except BaseException:
            _users -= 1
            raise


def uninstall() -> None:
    """Undo one `install`; the drivers are restored when nothing needs them any more."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            _query.patcher.undo()


def instrument() -> None:
    """Record the DB-API drivers' queries and connections (idempotent)."""
    global _explicit
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
    """Whether the drivers are being recorded (by `instrument()` or an adapter)."""
    return _query.patcher.applied
