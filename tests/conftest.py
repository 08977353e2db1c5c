"""Shared fixtures: every test starts from stagetrace's defaults."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

import stagetrace

#: Set by .ci/run: a test that needs a service must fail, not skip, when it is unreachable.
REQUIRE_SERVICES = os.environ.get("STAGETRACE_TEST_REQUIRE_SERVICES") == "1"


@pytest.fixture(autouse=True)
def _reset_stagetrace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("STAGETRACE_") and key != "STAGETRACE_TEST_REQUIRE_SERVICES":
            monkeypatch.delenv(key)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    stagetrace.reset()
    yield
    stagetrace.reset()


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip (or, in CI, fail) when a real service the test needs is not listening."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (STAGETRACE_TEST_REQUIRE_SERVICES=1: services are required)")
    pytest.skip(message)


@pytest.fixture
def captured() -> Iterator[list[stagetrace.Timeline]]:
    with stagetrace.capture() as timelines:
        yield timelines


def begin(name: str, **kwargs: object):
    """Start a timeline with the current configuration (the recorder takes it explicitly)."""
    from stagetrace import _recorder

    return _recorder.begin(stagetrace.settings(), name, **kwargs)


def stage_names(timeline: stagetrace.Timeline, kind: str | None = None) -> list[str]:
    return [s.name for s in timeline.stages if kind is None or s.kind == kind]


__all__ = ["begin", "need_service", "stage_names"]
