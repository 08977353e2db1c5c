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
