"""The FastAPI + async SQLAlchemy example (examples/fastapi_sqlalchemy) on PostgreSQL through
asyncpg and on SQLite through aiosqlite: complete timelines — gateway, middleware, route, view,
the session dependency and its teardown after the response, pool checkout, transactions,
compile, queries, fetches — and exactly one N+1 finding, at the loop's line, for the N+1
endpoint and none for its fix."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
from fastapi.testclient import TestClient

import stagetrace.sqlalchemy
import stagetrace.starlette

from .conftest import pg_url

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_sqlalchemy"


@pytest.fixture(params=["asyncpg", "aiosqlite"])
def example(request, tmp_path, monkeypatch):
    if request.param == "asyncpg":
        pytest.importorskip("asyncpg")
        url = pg_url("asyncpg", request.getfixturevalue("pg_database"))
    else:
        pytest.importorskip("aiosqlite")
        url = f"sqlite+aiosqlite:///{tmp_path / 'example.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    sys.path.insert(0, str(EXAMPLE))
    sys.modules.pop("app", None)
    try:
        import app as module

        with TestClient(module.app) as client:
            yield module, client
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("app", None)
        stagetrace.sqlalchemy.uninstrument()
        stagetrace.starlette.uninstrument()


def statements(tl):
    """The application's queries: every ``db.query`` stage (the transaction control of the
    driver underneath is not one: see `transaction_ends`)."""
    return [s for s in tl.stages if s.kind == "db.query"]


def transaction_ends(tl):
    """(kind, name) of every stage that ends a transaction, each asserted childless: a COMMIT
    or ROLLBACK is SQLAlchemy's one ``transaction`` stage, and asyncpg's own ``COMMIT;`` (the
    driver is instrumented too) is not a second stage inside it."""
    ends = [
        s
        for s in tl.stages
        if s.kind in ("transaction", "db.query") and s.name.upper() in ("COMMIT", "ROLLBACK")
    ]
    for end in ends:
        assert [s for s in tl.stages if s.parent == end.id] == [], end.name
    return [(s.kind, s.name) for s in ends]


def loop_line(name: str) -> int:
    """The line of the query inside the ``for`` loop of the example's endpoint `name`."""
    tree = ast.parse((EXAMPLE / "app.py").read_text())
    func = next(n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef) and n.name == name)
    loop = next(n for n in ast.walk(func) if isinstance(n, ast.For))
    return loop.body[0].lineno


def test_n_plus_one_endpoint_has_every_stage_and_one_finding(example, captured):
    """GET /authors/n-plus-one: the request's stages from gateway to fetch, the session
    dependency (and its teardown after the response), and one n_plus_one finding naming the
    loop's file:line."""
    _, client = example
    response = client.get("/authors/n-plus-one")
    assert response.status_code == 200 and len(response.json()) == 8
    (tl,) = captured
    kinds = {s.kind for s in tl.stages}
    assert {
        "gateway",
        "middleware",
        "route",
        "view",
        "dependency",
        "db.connect",
        "transaction",
        "orm.compile",
        "db.query",
        "orm.fetch",
        "serialize",
        "response.write",
    } <= kinds
    assert tl.route == "/authors/n-plus-one" and tl.framework == "fastapi"
    (view,) = [s for s in tl.stages if s.kind == "view" and s.name.endswith("authors_n_plus_one")]
    setup, teardown = [s for s in tl.stages if s.kind == "dependency"]
    assert setup.name == teardown.name == "app.get_session"
    assert tl.stages[setup.parent].name == "dependencies"
    assert teardown.attrs == {"teardown": True} and teardown.parent == 0
    queries = statements(tl)
    assert len(queries) == 9
    for q in queries:
        ancestors = list(tl.ancestors(q))
        assert view in ancestors
        assert q.attrs["db.system.name"] in ("postgresql", "sqlite")
    (checkout,) = [s for s in tl.stages if s.name == "pool checkout"]
    assert view in tl.ancestors(checkout)
    # the session's rollback at close runs in the dependency's teardown
    assert any(s.kind == "transaction" and teardown in tl.ancestors(s) for s in tl.stages)
    findings = [f for f in tl.findings if f.kind == "n_plus_one"]
    assert len(findings) == 1
    (finding,) = findings
    assert finding.attrs["count"] == 8
    assert Path(finding.attrs["code.file.path"]) == EXAMPLE / "app.py"
    assert finding.attrs["code.line.number"] == loop_line("authors_n_plus_one")
    assert f"app.py:{loop_line('authors_n_plus_one')}" in finding.message


def test_the_fixed_endpoint_has_no_finding(example, captured):
    """GET /authors (selectinload): two queries, the second inside the first's fetch; no
    finding."""
    _, client = example
    response = client.get("/authors")
    assert response.status_code == 200 and len(response.json()) == 8
    (tl,) = captured
    assert len(statements(tl)) == 2
    assert tl.findings == ()
    (batch,) = [s for s in tl.stages if s.name == "selectin load Author.books"]
    assert tl.stages[batch.parent].kind == "orm.fetch"


def test_a_write_in_a_transaction(example, captured):
    """POST /authors/1/books: begin, the insert inside it, commit; a missing author is a 404
    whose HTTPException is recorded on the view and whose transaction rolls back."""
    _, client = example
    assert client.post("/authors/1/books", params={"title": "new"}).status_code == 201
    assert client.post("/authors/99/books", params={"title": "x"}).status_code == 404
    ok, missing = captured
    ops = [(s.kind, s.name) for s in ok.stages if s.kind in ("transaction", "db.query")]
    assert ops.index(("transaction", "begin")) < ops.index(("db.query", "INSERT example_book"))
    assert ops.index(("db.query", "INSERT example_book")) < ops.index(("transaction", "commit"))
    # the commit; the second transaction (the count) rolled back when the session closes
    assert transaction_ends(ok) == [("transaction", "commit"), ("transaction", "rollback")]
    # the rollback as the HTTPException leaves ``session.begin()``
    assert transaction_ends(missing) == [("transaction", "rollback")]
    assert missing.status == 404
