"""Flask test setup: the instrumented app of tests/flask/app.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("flask")

import stagetrace.flask


@pytest.fixture
def instrumented() -> Iterator[None]:
    """stagetrace.flask.instrument() for the test, undone afterwards."""
    stagetrace.flask.instrument()
    yield
    stagetrace.flask.uninstrument()


@pytest.fixture
def app(instrumented):
    from tests.flask.app import create_app

    return create_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def _collect_dropped_responses() -> None:
    """A response an earlier test dropped without reading or closing it ends its timeline when
    it is garbage-collected (reference cycles in Werkzeug's test client delay that): collect
    now, so such a timeline cannot arrive during this test."""
    import gc

    gc.collect()
