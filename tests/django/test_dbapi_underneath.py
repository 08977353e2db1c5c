"""Django over instrumented DB-API drivers (``stagetrace.dbapi``): Django's execute wrapper
records every query and connection once; the drivers underneath add nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client

import stagetrace
import stagetrace.dbapi

from .conftest import by_kind


@pytest.fixture
def drivers() -> Iterator[None]:
    stagetrace.dbapi.instrument()
    yield
    stagetrace.dbapi.uninstrument()


def test_sqlite3_under_django_is_recorded_once(drivers):
    """A new Django connection to SQLite (made by the instrumented sqlite3.connect, with
    Django's own cursor class kept) and a query: one db.connect and one db.query, Django's."""
    from django.db import connections
    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    wrapper = connections.create_connection("default")
    try:
        with stagetrace.capture() as got, stagetrace.timeline("job"), wrapper.cursor() as cursor:
            cursor.execute("SELECT %s", [1])
            assert isinstance(cursor.cursor, SQLiteCursorWrapper)
    finally:
        wrapper.close()
    (tl,) = got
    (connect,) = by_kind(tl, "db.connect")
    assert connect.attrs["stagetrace.db.alias"] == "default"
    (query,) = by_kind(tl, "db.query")
    assert query.attrs["stagetrace.db.alias"] == "default"
    assert query.attrs["db.query.text"] == "SELECT %s"


@pytest.mark.postgres
def test_psycopg_under_django_is_recorded_once(drivers, pg_db, captured):
    """The PostgreSQL view with a fresh connection: the same queries as without the drivers
    instrumented (8), none nested in another, and one db.connect, Django's."""
    from django.db import connections

    connections[pg_db].close()
    assert Client().get("/pg/books.json").status_code == 200
    (tl,) = captured
    queries = [q for q in by_kind(tl, "db.query") if q.attrs.get("stagetrace.db.alias") == "pg"]
    assert len(queries) == 8
    assert len(by_kind(tl, "db.query")) == 8
    assert all(tl.stages[q.parent].kind != "db.query" for q in queries)
    (connect,) = by_kind(tl, "db.connect")
    assert connect.attrs == {"db.system.name": "postgresql", "stagetrace.db.alias": "pg"}
