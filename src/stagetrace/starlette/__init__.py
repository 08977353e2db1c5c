"""Starlette and FastAPI adapter.

::

    import stagetrace.starlette
    stagetrace.starlette.instrument()          # every Starlette/FastAPI app
    # or: stagetrace.starlette.instrument_app(app)

Records, per request and websocket connection, the gateway, each middleware of the app's stack
with its inbound and outbound phases, routing with the route template, the endpoint, FastAPI's
dependency resolution (each dependency a ``dependency`` stage, teardowns included) and
validation, serialization, Jinja2 templates, background tasks, and — when the application uses
them — SQLAlchemy and the sqlite3/psycopg/asyncpg drivers (`stagetrace.sqlalchemy`,
`stagetrace.dbapi`). `uninstrument()` undoes it.
"""

from __future__ import annotations

try:
    import starlette as _starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without Starlette installed
    raise ImportError(
        'stagetrace.starlette needs Starlette: pip install "stagetrace[starlette]"'
    ) from exc

from ._install import instrument, instrument_app, patcher, uninstrument

__all__ = ["instrument", "instrument_app", "is_instrumented", "uninstrument"]


def is_instrumented() -> bool:
    """Whether `instrument()` or `instrument_app()` is in effect."""
    return patcher.applied
