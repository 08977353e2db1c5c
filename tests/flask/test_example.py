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

        module.init_db(tmp_path / "shop.sqlite3")
        yield module
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("app", None)
        stagetrace.flask.uninstrument()


def test_the_example_under_a_real_server(example):
    """Served by Werkzeug's server on loopback: the JSON view, the template page, the
    streaming export and a 404 each give a complete timeline with the Flask stages, and the
    SQLAlchemy stages inside the view; the N+1 view gives exactly one n_plus_one finding
    naming its loop's line, its selectinload fix none."""
    server = make_server("127.0.0.1", 0, example.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    with stagetrace.capture() as got:
        try:
            assert len(httpx.get(url + "/api/books").json()["books"]) == 12
            assert httpx.get(url + "/api/books/fast").json() == httpx.get(url + "/api/books").json()
            assert "Book 3" in httpx.get(url + "/books").text
            assert httpx.get(url + "/export.csv").text.count("\n") == 13
            assert httpx.get(url + "/books/999").status_code == 404
        finally:
            server.shutdown()
            server.server_close()
    by_path = {t.path: t for t in got}
    api = by_path["/api/books"]
    assert api.framework == "flask" and api.route == "/api/books"
    kinds = [s.kind for s in api.stages if not s.kind.startswith(("orm.", "db.", "transaction"))]
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
    view = next(s for s in api.stages if s.kind == "view")
    sql = [s for s in api.stages if s.kind in ("orm.compile", "db.query", "orm.fetch")]
    assert {s.kind for s in sql} == {"orm.compile", "db.query", "orm.fetch"}
    assert all(api.stages[s.parent].kind != "gateway" for s in sql)
    assert all(view.start_ns <= s.start_ns and s.end_ns <= view.end_ns for s in sql)
    queries = api.of_kind("db.query")
    assert len(queries) == 7  # the books, then one lazy load per author (6), not per book
    assert all("?" in q.attrs["db.query.text"] for q in queries[1:])
    (finding,) = [f for f in api.findings if f.kind == "n_plus_one"]
    source = (EXAMPLE / "app.py").read_text().splitlines()
    line = next(i for i, t in enumerate(source, 1) if "b.author.name} for b in books]" in t)
    assert finding.attrs["code.line.number"] == line
    fast = by_path["/api/books/fast"]
    assert len(fast.of_kind("db.query")) == 2 and fast.findings == ()
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
