"""Fixtures for the SQL integrations' tests: a PostgreSQL database of their own (created in
the server's ``test`` database, dropped afterwards), SQLite files, and seeded ORM models."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..conftest import need_service

PG_HOST, PG_PORT = "127.0.0.1", 5432


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The name of a fresh PostgreSQL database for this test session (dropped at the end)."""
    need_service("PostgreSQL", PG_HOST, PG_PORT)
    psycopg = pytest.importorskip("psycopg")
    name = f"stagetrace_sql_{os.getpid()}"
    admin = psycopg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname="test", autocommit=True
    )
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_url(driver: str, database: str) -> str:
    return f"postgresql+{driver}://postgres@{PG_HOST}:{PG_PORT}/{database}"


@pytest.fixture
def sql_integrations_start_unpatched() -> Iterator[None]:
    """The test starts with SQLAlchemy and the DB-API drivers unpatched, and the earlier state
    comes back afterwards (for the tests of patching itself). The generic ASGI/WSGI middleware (and the Flask example) install the
    SQL integrations for the life of the process, so test modules that ran before these would
    otherwise leave them patched."""
    import stagetrace.dbapi
    import stagetrace.sqlalchemy

    modules = (stagetrace.sqlalchemy, stagetrace.dbapi)
    saved = [(m._users, m._explicit) for m in modules]
    for m, (users, _explicit) in zip(modules, saved, strict=True):
        if users:
            m._users = 1
            m.uninstall()  # the last user: unpatch
        m._explicit = False
    yield
    for m, (users, explicit) in zip(modules, saved, strict=True):
        if m._explicit:
            m.uninstrument()
        for _ in range(users - m._users):
            m.install()
        m._explicit = explicit
