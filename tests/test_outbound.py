"""Outbound HTTP calls (httpx, httpx2, requests) as http.client stages, against a real local
HTTP server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import stagetrace
from stagetrace import httpclients as _outbound
from tests.servers import http_target

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with http_target() as url:
        yield url


@pytest.fixture
def patched() -> Iterator[None]:
    _outbound.install()
    yield
    _outbound.uninstall()


def calls(tl):
    return [s for s in tl.stages if s.kind == "http.client"]


async def test_each_library_call_is_a_stage(server, patched, captured):
    """httpx (sync, async), httpx2 and requests: method, host, port, path, status; query
    parameter names but never their values."""
    httpx2 = pytest.importorskip("httpx2")
    async with stagetrace.timeline("job"):
        httpx.get(f"{server}/rates?currency=EUR&token=secret")
        async with httpx.AsyncClient() as client:
            await client.get(f"{server}/async")
        httpx2.get(f"{server}/two")
        requests.get(f"{server}/missing?id=42", timeout=5)
    (tl,) = captured
    stages = calls(tl)
    assert [s.name for s in stages] == ["GET 127.0.0.1"] * 4
    first = stages[0].attrs
    assert (
        first["url.path"] == "/rates" and first["url.query"] == "currency=REDACTED&token=REDACTED"
    )
    assert first["server.address"] == "127.0.0.1" and first["server.port"] > 0
    assert first["http.response.status_code"] == 200
    assert stages[3].attrs["http.response.status_code"] == 404
    assert "secret" not in repr(tl.to_dict()) and "42" not in stages[3].attrs["url.query"]
    assert all(s.duration_ns > 0 for s in stages)


def test_connection_errors_are_recorded_and_raised(patched, captured):
    with pytest.raises(httpx.ConnectError), stagetrace.timeline("job"):
        httpx.get("http://127.0.0.1:9/", timeout=2)
    (call,) = calls(captured[0])
    assert call.error.type == "httpx.ConnectError"


def test_nothing_is_recorded_outside_a_timeline_or_after_the_last_uninstall(server, captured):
    """Install is reference-counted across adapters; the last uninstall restores the clients."""
    others = _outbound._users  # adapters instrumented by other tests (Django's app, say)
    for _ in range(others):
        _outbound.uninstall()
    try:
        _outbound.install()
        _outbound.install()
        httpx.get(f"{server}/x")  # outside a timeline
        _outbound.uninstall()
        with stagetrace.timeline("one user left"):
            httpx.get(f"{server}/y")
        _outbound.uninstall()
        with stagetrace.timeline("none left"):
            httpx.get(f"{server}/z")
        assert [len(calls(tl)) for tl in captured] == [1, 0]
        assert not hasattr(httpx.Client.send, "__stagetrace_patch__")
    finally:
        for _ in range(others):
            _outbound.install()


def test_a_call_without_a_host_is_named_by_its_path_only():
    """A stage's name is ``METHOD host``; a URL without a host (credentials with an empty host,
    a relative URL) names its path — never its query values or credentials."""
    from stagetrace.httpclients import _name

    assert _name(("GET", "https://api.example.com/v1?token=s3cr3t")) == "GET api.example.com"
    assert _name(("GET", "http://user:s3cr3t@/v1/items?token=s3cr3t")) == "GET /v1/items"
    assert _name(("POST", "/relative?token=s3cr3t")) == "POST /relative"
