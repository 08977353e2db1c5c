"""Django test setup: the tests/djapp project, its databases, and helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")

import django

django.setup()

from django.db import connections  # noqa: E402
from django.test.utils import setup_test_environment, teardown_test_environment  # noqa: E402

from ..conftest import need_service  # noqa: E402


def seed(using: str = "default") -> None:
    from tests.djapp.models import Author, Book

    if Book.objects.using(using).exists():
        return
    authors = [Author.objects.using(using).create(name=f"Author {i}") for i in range(3)]
    for i in range(6):
        Book.objects.using(using).create(title=f"Book {i}", author=authors[i % 3])


@pytest.fixture(scope="session", autouse=True)
def django_db() -> Iterator[None]:
    """An in-memory SQLite test database, migrated and seeded once for the session."""
    setup_test_environment()
    conn = connections["default"]
    old = conn.creation.create_test_db(verbosity=0, autoclobber=True)
    seed()
    yield
    conn.creation.destroy_test_db(old, verbosity=0)
    teardown_test_environment()


@pytest.fixture(autouse=True)
def _django_settings_layer(_reset_stagetrace: None) -> None:
    """stagetrace.reset() forgets settings.STAGETRACE; read it again as the app does at startup."""
    from stagetrace.django._install import load_settings

    load_settings()


@pytest.fixture(scope="session")
def pg_db() -> Iterator[str]:
    """A throwaway PostgreSQL database (psycopg 3) for the session."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    pytest.importorskip("psycopg")
    conn = connections["pg"]
    old = conn.creation.create_test_db(verbosity=0, autoclobber=True)
    seed("pg")
    yield "pg"
    conn.close()
    conn.creation.destroy_test_db(old, verbosity=0)


@pytest.fixture
def redis_cache() -> str:
    need_service("Redis", "127.0.0.1", 6379)
    pytest.importorskip("redis")
    return "redis"


def by_kind(timeline, kind):
    return [s for s in timeline.stages if s.kind == kind]


def one(timeline, kind, name=None):
    found = [s for s in timeline.stages if s.kind == kind and (name is None or s.name == name)]
    assert len(found) == 1, (kind, name, [(s.kind, s.name) for s in timeline.stages])
    return found[0]


def descendants(timeline, stage):
    ids = {stage.id}
    out = []
    for s in timeline.stages:
        if s.parent in ids:
            ids.add(s.id)
            out.append(s)
    return out
