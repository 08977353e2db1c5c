"""The Flask example (examples/flask_app/app.py, the issue's acceptance app) yields complete
timelines: every Flask-level stage, in order, under a real server."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from werkzeug.serving import make_server

import stagetrace
import stagetrace.flask

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app"


@pytest.fixture
def example(tmp_path) -> Iterator[object]:
    sys.path.insert(0, str(EXAMPLE))
    sys.modules.pop("app", None)
    try:
        import app as module  # type: ignore[import-not-found]

        module.app.config["DATABASE"] = tmp_path / "shop.sqlite3"
        module.init_db(tmp_path / "shop.sqlite3")
        yield module
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("app", None)
        stagetrace.flask.uninstrument()


def test_the_example_under_a_real_server(example):
    """Served by Werkzeug's server on loopback: the JSON view, the template page, the
    streaming export and a 404 each give a complete timeline with the Flask stages."""
    server = make_server("127.0.0.1", 0, example.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    with stagetrace.capture() as got:
        try:
            assert len(httpx.get(url + "/api/books").json()["books"]) == 12
            assert "Book 3" in httpx.get(url + "/books").text
            assert httpx.get(url + "/export.csv").text.count("\n") == 13
            assert httpx.get(url + "/books/999").status_code == 404
        finally:
            server.shutdown()
            server.server_close()
    by_path = {t.path: t for t in got}
    api = by_path["/api/books"]
    assert api.framework == "flask" and api.route == "/api/books"
    kinds = [s.kind for s in api.stages]
    assert kinds == [
        "gateway",
        "route",
        "middleware",
        "view",
        "serialize",
        "middleware",
        "middleware",
        "response.write",
    ], kinds
    assert [s.attrs.get("flask.hook") for s in api.stages if s.kind == "middleware"] == [
        "before_request",
        "after_request",
        "teardown_appcontext",
    ]
    page = by_path["/books"]
    assert [s.name for s in page.stages if s.kind == "template"][:2] == ["books.html", "base.html"]
    assert len([s for s in page.stages if s.name == "book_row.html"]) == 12
    export = by_path["/export.csv"]
    write = next(s for s in export.stages if s.kind == "response.write")
    assert write.attrs["chunks"] == 13
    assert next(s for s in export.stages if s.name == "read books").parent == write.id
    missing = by_path["/books/999"]
    assert next(s for s in missing.stages if s.kind == "view" and "book_detail" in s.name).error
    assert any(s.attrs.get("flask.error_handler") for s in missing.stages)
    for tl in got:
        assert "http.response.sent_ns" in tl.stages[0].attrs
        assert all("unfinished" not in s.attrs for s in tl.stages)
