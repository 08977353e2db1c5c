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
