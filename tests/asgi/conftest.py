"""Helpers for the ASGI, Starlette and FastAPI tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")

import stagetrace.starlette

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"


@pytest.fixture
def instrumented() -> Iterator[None]:
    """stagetrace.starlette.instrument() for the test, undone afterwards."""
    stagetrace.starlette.instrument()
    yield
    stagetrace.starlette.uninstrument()


@pytest.fixture
def example_app(instrumented):
    """The FastAPI example (examples/fastapi_app/app.py), imported fresh."""
    pytest.importorskip("fastapi")
    sys.path.insert(0, str(EXAMPLE))
    sys.modules.pop("app", None)
    try:
        import app as example

        yield example
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("app", None)


def kinds(tl) -> list[str]:
    return [s.kind for s in tl.stages]


def named(tl, kind, name=None):
    return [s for s in tl.stages if s.kind == kind and (name is None or s.name == name)]


def descendants(tl, stage):
    ids = {stage.id}
    out = []
    for s in tl.stages:
        if s.parent in ids:
            ids.add(s.id)
            out.append(s)
    return out


def assert_nested(tl) -> None:
    """Every stage starts and ends within its parent, and the self times add up to at most
    the request's duration (for a request that runs one thing at a time: a
    ``BaseHTTPMiddleware`` sends the response while its inner task finishes)."""
    by_id = {s.id: s for s in tl.stages}
    for s in tl.stages:
        parent = by_id.get(s.parent)
        if parent is not None:
            assert parent.start_ns <= s.start_ns, (s.kind, s.name)
            end, parent_end = s.start_ns + s.duration_ns, parent.start_ns + parent.duration_ns
            assert end <= parent_end, (s.kind, s.name, "ends after", parent.kind, parent.name)
    assert sum(s.self_ns for s in tl.stages) <= tl.duration_ns
