"""Real PostgreSQL (psycopg 3) and Redis behind the Django adapter."""

from __future__ import annotations

import pytest
from django.test import Client

from .conftest import by_kind, descendants, one


@pytest.mark.postgres
def test_postgresql_queries_are_recorded_with_their_database(pg_db, captured):
    """Queries on a PostgreSQL alias: db.system postgresql, rows, the N+1 pattern, UPDATE."""
    from django.db import connections

    connections[pg_db].close()  # so this request opens (and records) a connection
    response = Client().get("/pg/books.json")
    assert response.status_code == 200
    (tl,) = captured
    queries = [q for q in by_kind(tl, "db.query") if q.attrs["stagetrace.db.alias"] == "pg"]
    assert len(queries) == 8  # books, 6 authors, one UPDATE
    assert {q.attrs["db.system.name"] for q in queries} == {"postgresql"}
    assert queries[0].attrs["db.namespace"].startswith("test_stagetrace_")
    assert (
        queries[0].name == "SELECT djapp_book"
        and queries[0].attrs["db.response.returned_rows"] == 6
    )
    assert (
        queries[-1].name == "UPDATE djapp_book"
        and queries[-1].attrs["db.response.returned_rows"] == 0
    )
    connect = one(tl, "db.connect")
    assert connect.attrs == {"db.system.name": "postgresql", "stagetrace.db.alias": "pg"}
    view = one(tl, "view")
    assert connect.id in {s.id for s in descendants(tl, view)}
    compiles = by_kind(tl, "orm.compile")
    assert "UPDATE djapp.Book" in [c.name for c in compiles]


@pytest.mark.postgres
def test_postgresql_errors_reach_the_app_unchanged(pg_db, captured):
    """A failing statement raises the driver's error as usual; the stage records it."""
    from django.db import connections
    from django.db.utils import ProgrammingError

    import stagetrace

    with (
        stagetrace.timeline("job"),
        pytest.raises(ProgrammingError),
        connections[pg_db].cursor() as cursor,
    ):
        cursor.execute("SELECT * FROM no_such_table")
    (tl,) = captured
    (q,) = by_kind(tl, "db.query")
    assert q.error.type == "django.db.utils.ProgrammingError"
    assert "no_such_table" in q.error.message


@pytest.mark.redis
def test_redis_cache_calls_with_hit_and_miss(redis_cache, captured):
    """Django's Redis backend: each call is a cache stage with hit/miss."""
    from django.core.cache import caches

    caches[redis_cache].delete("answer")
    captured.clear()
    response = Client().get(f"/cache/{redis_cache}/")
    assert response.json() == {"before": None, "after": 42}
    (tl,) = captured
    calls = by_kind(tl, "cache")
    assert [c.name for c in calls] == ["redis.get", "redis.set", "redis.get", "redis.get_many"]
    assert [c.attrs.get("cache.hit") for c in calls[:3]] == [False, None, True]
    assert calls[3].attrs["cache.hits"] == 1 and calls[3].attrs["cache.keys"] == 2
    assert all(c.attrs["cache.backend"] == "RedisCache" for c in calls)
    assert all(c.duration_ns > 0 for c in calls)
