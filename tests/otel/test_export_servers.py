"""End to end: the Django and FastAPI examples served for real (gunicorn, uvicorn) with
``STAGETRACE_SINKS=otel`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a real rotel collector;
what is asserted is what the collector decoded and forwarded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ..servers import ROOT, free_port, serve, wait_for_port
from .conftest import Collector

requests = pytest.importorskip("requests")

SITE = ROOT / "examples" / "django_site"
FASTAPI = ROOT / "examples" / "fastapi_app"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{REMOTE}-01"


@pytest.fixture(scope="module")
def site_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Django example's SQLite database, migrated and seeded."""
    db = tmp_path_factory.mktemp("site") / "bookshop.sqlite3"
    env = {**os.environ, "BOOKSHOP_SQLITE": str(db), "DJANGO_SETTINGS_MODULE": "bookshop.settings"}
    for cmd in (["migrate", "-v0"], ["seed"]):
        subprocess.run(
            [sys.executable, "manage.py", *cmd], cwd=SITE, env=env, check=True,
            capture_output=True, timeout=120,
        )  # fmt: skip
    return str(db)


def gunicorn_args(port: int) -> list[str]:
    return [
        "gunicorn", "--workers", "1", "--bind", f"127.0.0.1:{port}", "--chdir", str(SITE),
        "--graceful-timeout", "20", "bookshop.wsgi:application",
    ]  # fmt: skip


def traces(collector: Collector, trace_id: str) -> list[dict[str, Any]]:
    return [s for s in collector.span_dicts() if s["trace_id"] == trace_id]


def wait_trace(
    collector: Collector, trace_id: str, count: int, timeout: float = 15.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        spans = traces(collector, trace_id)
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def check_tree(spans: list[dict[str, Any]], remote_parent: str) -> dict[str, Any]:
    """One server root under the remote parent, every other span's parent present: no orphans."""
    ids = {s["span_id"] for s in spans}
    (root,) = [s for s in spans if s["parent_span_id"] == remote_parent]
    assert root["kind"] == 2 and (root["flags"] is None or root["flags"] & 0x300 == 0x300)
    for s in spans:
        if s is not root:
            assert s["parent_span_id"] in ids, s["name"]
    return root


def test_django_example_under_gunicorn_exports_every_stage(
    collector: Collector, site_db: str, tmp_path: Path
) -> None:
    """gunicorn serving the Django example, spans over OTLP/HTTP: one server span named after
    the route under the incoming traceparent, every stage a span (21 CLIENT query spans of the
    N+1, middleware with phases, templates), semantic-convention attributes, no SQL parameter
    values, query-string values redacted; a 5xx is not involved and a 404 is no error."""
    port = free_port()
    env = {
        "BOOKSHOP_SQLITE": site_db, "DJANGO_SETTINGS_MODULE": "bookshop.settings",
        "STAGETRACE_SINKS": "otel", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
    }  # fmt: skip
    with serve(gunicorn_args(port), env, tmp_path / "gunicorn.log", port) as base:
        with requests.Session() as s:
            r = s.get(
                f"{base}/api/books/?q=secret-words&page=2", headers={"traceparent": TRACEPARENT}
            )
            assert r.status_code == 200
            other = "0af7651916cd43dd8448eb211c80319c"
            r = s.get(f"{base}/nowhere/", headers={"traceparent": f"00-{other}-{REMOTE}-01"})
            assert r.status_code == 404
        spans = wait_trace(collector, TRACE, 50)
        missing = wait_trace(collector, other, 3)
    root = check_tree(spans, REMOTE)
    assert root["name"] == "GET api/books/"
    assert root["resource"]["service.name"] == "bookshop"
    attrs = root["attributes"]
    assert attrs["http.request.method"] == "GET" and attrs["http.route"] == "api/books/"
    assert attrs["url.path"] == "/api/books/" and attrs["http.response.status_code"] == 200
    assert "secret-words" not in attrs["url.query"] and "q=" in attrs["url.query"]
    assert attrs["server.address"] == "127.0.0.1" and attrs["url.scheme"] == "http"
    assert "user_agent.original" in attrs and "client.address" in attrs
    kinds = Counter(s["attributes"]["stagetrace.kind"] for s in spans)
    assert kinds["db.query"] == 21 and kinds["orm.compile"] == 21 and kinds["middleware"] >= 7
    assert len(spans) == sum(kinds.values())
    queries = [s for s in spans if s["attributes"]["stagetrace.kind"] == "db.query"]
    for q in queries:
        assert q["kind"] == 3
        assert q["attributes"]["db.system.name"] == "sqlite"
        text = q["attributes"]["db.query.text"]
        if "WHERE" in text:  # the 20 author look-ups: placeholders, never the ids
            assert "%s" in text and not re.search(r"=\s*\d", text), text
        assert not any(k.endswith("parameters") for k in q["attributes"])
    # the N+1 finding: an event on the root, the attribute on the queries involved
    assert any(e["name"] == "stagetrace.finding" for e in root["events"])
    assert sum("stagetrace.findings" in q["attributes"] for q in queries) >= 20
    mws = [s for s in spans if s["attributes"]["stagetrace.kind"] == "middleware"]
    assert all("stagetrace.middleware.in_ns" in m["attributes"] for m in mws)
    assert all(
        s["kind"] == 1
        for s in spans
        if s["attributes"]["stagetrace.kind"] in ("middleware", "view")
    )
    # 404: no route, named by the method, not an error
    root404 = check_tree(missing, REMOTE)
    assert root404["name"] == "GET" and root404["status"]["code"] == 0


def test_fastapi_example_under_uvicorn_over_grpc(collector: Collector, tmp_path: Path) -> None:
    """uvicorn serving the FastAPI example, spans over OTLP/gRPC: the route template names the
    server span, it hangs under the incoming traceparent, each stage arrived once."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("grpc")
    port = free_port()
    env = {
        "STAGETRACE_SINKS": "otel", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_SERVICE_NAME": "fastapi-shop",
    }  # fmt: skip
    args = ["uvicorn", "--app-dir", str(FASTAPI), "--port", str(port), "--no-access-log", "app:app"]
    with serve(args, env, tmp_path / "uvicorn.log", port) as base:
        r = requests.get(
            f"{base}/items/4", headers={"traceparent": TRACEPARENT, "tracestate": "v=1"}
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 15
        while not any(s["parent_span_id"] == REMOTE for s in traces(collector, TRACE)):
            assert time.monotonic() < deadline, "no server span arrived"
            time.sleep(0.05)
        time.sleep(0.3)
        spans = traces(collector, TRACE)
    root = check_tree(spans, REMOTE)
    assert root["name"] == "GET /items/{item_id}"
    assert root["trace_state"] == "v=1"
    assert root["resource"]["service.name"] == "fastapi-shop"
    assert root["attributes"]["http.response.status_code"] == 200
    assert len({s["span_id"] for s in spans}) == len(spans)  # every stage once
    kinds = {s["attributes"]["stagetrace.kind"] for s in spans}
    assert {"gateway", "middleware", "view", "serialize"} <= kinds


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_sigterm_with_the_collector_down_exits_within_the_flush_deadline(
    collector: Collector, site_db: str, tmp_path: Path, server: str
) -> None:
    """With the collector unreachable, requests are served as fast as before and SIGTERM ends
    the server within the flush deadline (1 s here) plus the server's own shutdown, not after
    the exporter's 10 s timeout."""
    pytest.importorskip(server)
    collector.stop()
    port = free_port()
    env = {
        **os.environ, "BOOKSHOP_SQLITE": site_db, "DJANGO_SETTINGS_MODULE": "bookshop.settings",
        "STAGETRACE_SINKS": "otel", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
        "STAGETRACE_OTEL_FLUSH_TIMEOUT": "1",
    }  # fmt: skip
    if server == "gunicorn":
        args = gunicorn_args(port)
    else:
        args = ["uvicorn", "--app-dir", str(SITE), "--port", str(port), "--no-access-log",
                "bookshop.asgi:application"]  # fmt: skip
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        wait_for_port(port, proc, log)
        with requests.Session() as s:
            for _ in range(5):
                t = time.monotonic()
                assert s.get(f"http://127.0.0.1:{port}/books/").status_code == 200
                assert time.monotonic() - t < 2.0
        time.sleep(0.3)  # the batch reached the export thread, which is retrying
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert took < 5.0, log.read_text()[-2000:]
