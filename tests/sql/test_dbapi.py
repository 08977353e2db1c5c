"""SQL without an ORM: sqlite3, psycopg 3 (sync and async) and asyncpg used directly give
``db.connect`` and ``db.query`` stages; objects stay what the application expects; Django's and
SQLAlchemy's own recording is never doubled; instrumentation comes and goes."""

from __future__ import annotations

import inspect
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import stagetrace
import stagetrace.dbapi

from ..helpers import unhashable_param
from .conftest import PG_HOST, PG_PORT

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_sqlite3"


@pytest.fixture
def instrumented() -> Iterator[None]:
    stagetrace.dbapi.instrument()
    yield
    stagetrace.dbapi.uninstrument()


def queries(tl):
    return [s for s in tl.stages if s.kind == "db.query"]


def test_sqlite3_connect_and_statements(instrumented, tmp_path):
    """connect, execute (on the connection and on cursors), executemany and executescript are
    stages with the database file, placeholders and the driver's row counts; the objects are
    still sqlite3 connections and cursors."""
    path = str(tmp_path / "raw.db")
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(path)
        conn.executescript("CREATE TABLE t (id INTEGER, secret TEXT);")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "hush"), (2, "hush")])
        cur = conn.cursor()
        cur.execute("SELECT secret FROM t WHERE id = ?", (1,))
        assert cur.fetchall() == [("hush",)]
        assert conn.execute("UPDATE t SET secret = 'x' WHERE id > ?", (0,)).rowcount == 2
        conn.close()
    assert isinstance(conn, sqlite3.Connection) and isinstance(cur, sqlite3.Cursor)
    (tl,) = got
    (connect,) = [s for s in tl.stages if s.kind == "db.connect"]
    assert connect.attrs == {"db.system.name": "sqlite", "db.namespace": path}
    script, insert, select, update = queries(tl)
    assert script.name == "CREATE" and "db.response.returned_rows" not in script.attrs
    assert insert.attrs["db.operation.batch.size"] == 2
    assert insert.attrs["db.response.returned_rows"] == 2
    assert select.attrs["db.query.text"] == "SELECT secret FROM t WHERE id = ?"
    assert select.attrs["db.namespace"] == path
    assert update.attrs["db.response.returned_rows"] == 2
    assert all("hush" not in str(s.attrs) for s in tl.stages)


class _CountedRepr(str):
    """A parameter value that counts how often its ``repr`` is taken."""

    calls = 0

    def __repr__(self) -> str:
        type(self).calls += 1
        return str.__repr__(self)


def test_recorded_parameters_of_a_large_batch_are_not_all_turned_into_text(instrumented):
    """With record_sql_params on, an ``executemany`` of 20,000 rows records the start of its
    parameters, cut at ``max_sql_length`` — and only that start is turned into text on the
    request path, not all 20,000 rows first (whose repr would then be thrown away)."""
    stagetrace.configure(record_sql_params=True, max_sql_length=200)
    rows = [(_CountedRepr("v"),) for _ in range(20_000)]
    _CountedRepr.calls = 0
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", rows)
        conn.close()
    (tl,) = got
    (insert,) = [s for s in queries(tl) if s.name.startswith("INSERT")]
    text = insert.attrs["db.query.parameters"]
    assert text.startswith("[('v',), ('v',), ") and len(text) == 200
    assert _CountedRepr.calls < 100


def test_parameter_text_stays_bounded_however_deep_or_subclassed_the_values() -> None:
    """``params_text`` makes at most `limit` characters in time bounded by `limit`: also for
    an array parameter inside an ``executemany`` row (a container below the levels it
    follows) and for a ``str`` subclass, whose whole ``repr`` used to be made and then cut
    (a 2,000,000-element list: about 250 ms on the request path per statement)."""
    from stagetrace._sql import params_text

    class Text(str):
        def __repr__(self) -> str:
            raise AssertionError("the whole value was turned into text")

    class Ids(list):  # type: ignore[type-arg]
        def __repr__(self) -> str:
            raise AssertionError("the whole value was turned into text")

    deep = [[[[[Ids(range(10))]]]]]
    assert params_text(deep, 100) == "[[[[[…]]]]]"
    assert params_text([(Text("x" * 1000),)], 20) == "[('" + "x" * 17
    assert params_text([(list(range(10**5)),)], 30) == "[([0, 1, 2, 3, 4, 5, 6, 7, 8, "
    assert params_text((Ids(range(10**5)),), 12) == "([0, 1, 2, 3"
    assert params_text((1, "a", b"x", None, {"k": [1]}, ("t",)), 100) == repr(
        (1, "a", b"x", None, {"k": [1]}, ("t",))
    )


def test_sqlite3_factories_of_the_application_are_kept(instrumented, tmp_path):
    """A connection factory and a cursor factory the application passes: the objects are still
    instances of them (and recorded); a failing statement records its error and raises the
    driver's own exception."""

    class MyConnection(sqlite3.Connection):
        marker = "conn"

    class MyCursor(sqlite3.Cursor):
        marker = "cursor"

    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(":memory:", factory=MyConnection)
        cur = conn.cursor(MyCursor)
        cur.execute("SELECT 1")
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            conn.execute("SELECT * FROM missing")
    assert isinstance(conn, MyConnection) and conn.marker == "conn"
    assert isinstance(cur, MyCursor) and cur.marker == "cursor"
    (tl,) = got
    ok, failed = queries(tl)
    assert ok.error is None
    assert failed.error.type == "sqlite3.OperationalError"


def test_an_n_plus_one_over_raw_sqlite3_in_a_fastapi_app(tmp_path, monkeypatch):
    """The sqlite3 example: its N+1 endpoint's queries are stages under the view, with one
    n_plus_one finding at the loop's line; the joined query has none; the connection opened in
    the dependency is a db.connect stage."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import stagetrace.starlette

    monkeypatch.setenv("SQLITE_DATABASE", str(tmp_path / "example.db"))
    sys.path.insert(0, str(EXAMPLE))
    sys.modules.pop("app", None)
    try:
        import app as module

        client = TestClient(module.app)
        with stagetrace.capture() as got:
            assert len(client.get("/orders/n-plus-one").json()) == 8
            assert len(client.get("/orders").json()) == 8
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("app", None)
        stagetrace.dbapi.uninstrument()
        stagetrace.starlette.uninstrument()
    n_plus_one, fixed = got
    (view,) = [s for s in n_plus_one.stages if s.kind == "view" and "orders" in s.name]
    assert len(queries(n_plus_one)) == 9
    assert all(view in n_plus_one.ancestors(q) for q in queries(n_plus_one))
    (connect,) = [s for s in n_plus_one.stages if s.kind == "db.connect"]
    assert n_plus_one.stages[connect.parent].kind == "dependency"
    (finding,) = n_plus_one.findings
    assert finding.kind == "n_plus_one" and finding.attrs["count"] == 8
    source = (EXAMPLE / "app.py").read_text().splitlines()
    line = finding.attrs["code.line.number"]
    assert Path(finding.attrs["code.file.path"]) == EXAMPLE / "app.py"
    assert "example_line WHERE order_id = ?" in source[line - 1]
    assert fixed.findings == () and len(queries(fixed)) == 1


@pytest.fixture
def pg_conninfo(pg_database):
    return f"host={PG_HOST} port={PG_PORT} user=postgres dbname={pg_database}"


def test_psycopg_sync(instrumented, pg_conninfo, pg_database):
    """psycopg.connect, Connection.execute, cursors (client- and server-side), executemany:
    stages with the database, server and row counts; a composed query is recorded by its type
    only."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    with (
        stagetrace.capture() as got,
        stagetrace.timeline("job"),
        psycopg.connect(pg_conninfo, autocommit=True) as conn,
    ):
        conn.execute("CREATE TEMP TABLE t (id int)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s)", [(1,), (2,), (3,)])
            cur.execute("SELECT id FROM t WHERE id > %s", (0,))
            assert len(cur.fetchall()) == 3
        with conn.transaction(), conn.cursor(name="server_side") as cur:
            cur.execute("SELECT id FROM t")
            cur.fetchall()
        conn.execute(sql.SQL("SELECT {} FROM t").format(sql.Identifier("id")))
    (tl,) = got
    (connect,) = [s for s in tl.stages if s.kind == "db.connect"]
    assert connect.attrs["db.namespace"] == pg_database
    assert connect.attrs["server.address"] == PG_HOST and connect.attrs["server.port"] == PG_PORT
    _create, insert, select, server_side, composed = queries(tl)
    assert insert.attrs["db.operation.batch.size"] == 3
    assert select.attrs["db.query.text"] == "SELECT id FROM t WHERE id > %s"
    assert select.attrs["db.response.returned_rows"] == 3
    assert select.attrs["db.namespace"] == pg_database
    assert server_side.attrs["db.query.text"] == "SELECT id FROM t"
    assert composed.attrs["db.query.text"] == "<Composed>"


async def test_psycopg_async(instrumented, pg_conninfo):
    """AsyncConnection.connect and AsyncCursor.execute are stages; errors are recorded."""
    psycopg = pytest.importorskip("psycopg")
    with stagetrace.capture() as got:
        async with stagetrace.timeline("job"):
            conn = await psycopg.AsyncConnection.connect(pg_conninfo)
            async with conn.cursor() as cur:
                await cur.execute("SELECT %s::int", (1,))
                with pytest.raises(psycopg.errors.UndefinedTable):
                    await cur.execute("SELECT * FROM missing")
            await conn.close()
    (tl,) = got
    assert [s.kind for s in tl.stages[1:]] == ["db.connect", "db.query", "db.query"]
    assert tl.stages[3].error.type == "psycopg.errors.UndefinedTable"


async def test_asyncpg(instrumented, pg_database):
    """asyncpg.connect, execute, fetch/fetchrow/fetchval, executemany, prepared statements and
    pools: stages with row counts; a transaction's BEGIN and COMMIT are queries too."""
    asyncpg = pytest.importorskip("asyncpg")
    dsn = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{pg_database}"
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    with stagetrace.capture() as got:
        async with stagetrace.timeline("job"):
            conn = await asyncpg.connect(dsn)
            await conn.execute("CREATE TEMP TABLE t (id int)")
            await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,)])
            assert len(await conn.fetch("SELECT id FROM t WHERE id > $1", 0)) == 2
            assert await conn.fetchval("SELECT count(*) FROM t") == 2
            assert (await conn.fetchrow("SELECT id FROM t ORDER BY id"))["id"] == 1
            stmt = await conn.prepare("SELECT id FROM t WHERE id = $1")
            assert len(await stmt.fetch(2)) == 1
            async with conn.transaction():
                await conn.execute("DELETE FROM t WHERE id = $1", 1)
            await conn.close()
            assert await pool.fetchval("SELECT 41 + $1::int", 1) == 42
    await pool.close()
    (tl,) = got
    (connect,) = [s for s in tl.stages if s.kind == "db.connect"]
    assert connect.attrs["db.namespace"] == pg_database
    names = [s.name for s in queries(tl)]
    assert names[:10] == [
        "CREATE",
        "INSERT t",
        "SELECT t",
        "SELECT t",
        "SELECT t",
        "SELECT t",
        "BEGIN",
        "DELETE t",
        "COMMIT",
        "SELECT",
    ]
    assert names[10:] == []  # the pool's reset of the connection it got back is no query
    fetch = queries(tl)[2]
    assert fetch.attrs["db.response.returned_rows"] == 2
    assert fetch.attrs["db.query.text"] == "SELECT id FROM t WHERE id > $1"
    assert queries(tl)[1].attrs["db.operation.batch.size"] == 2


async def test_transaction_control_repeated_in_a_request_is_no_finding(instrumented, pg_database):
    """Five asyncpg transactions in one request send ``BEGIN;`` and ``COMMIT;`` five times
    each, the same text with the same (no) parameters: transaction control, which no batching
    or cache could save, so neither an N+1 nor a duplicate-query finding — only the INSERTs
    of the loop are an N+1."""
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{pg_database}")
    try:
        await conn.execute("CREATE TEMP TABLE t (id int)")
        with stagetrace.capture() as got:
            async with stagetrace.timeline("job"):
                for i in range(5):
                    async with conn.transaction():
                        await conn.execute("INSERT INTO t VALUES ($1)", i)
    finally:
        await conn.close()
    (tl,) = got
    assert [s.name for s in queries(tl)] == ["BEGIN", "INSERT t", "COMMIT"] * 5
    assert [f.message.split(" at ")[0] for f in tl.findings] == [
        "N+1: 5× INSERT INTO t VALUES (...)"
    ]


async def test_an_asyncpg_pool_resetting_its_connections_is_no_query(instrumented, pg_database):
    """A pool resets each connection it gets back (``Connection.reset``: ``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; ...``): the pool's housekeeping, not the application's
    query — two ``pool.fetchval`` calls in a request are two queries, not four with a
    duplicate among them."""
    asyncpg = pytest.importorskip("asyncpg")
    dsn = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{pg_database}"
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        with stagetrace.capture() as got:
            async with stagetrace.timeline("job"):
                assert await pool.fetchval("SELECT 1") == 1
                assert await pool.fetchval("SELECT 2") == 2
    (tl,) = got
    assert [s.attrs["db.query.text"] for s in queries(tl)] == ["SELECT 1", "SELECT 2"]
    assert tl.findings == ()


async def test_asyncpg_prepared_statement_methods_stay_plain_functions(instrumented, pg_database):
    """asyncpg's ``PreparedStatement.fetch`` (and its siblings) are plain functions that check
    the statement's connection when called and only then return the coroutine: instrumented,
    they still are. A statement whose connection went back to the pool raises asyncpg's
    ``InterfaceError`` at the call, recorded or not, chained to nothing of stagetrace's; a
    usable one is still a ``db.query`` stage."""
    asyncpg = pytest.importorskip("asyncpg")
    from asyncpg.connection import Connection
    from asyncpg.prepared_stmt import PreparedStatement

    for cls in (Connection, PreparedStatement):
        for name in ("executemany", "fetch", "fetchval", "fetchrow", "fetchmany"):
            method = vars(cls)[name]
            assert inspect.iscoroutinefunction(method) is inspect.iscoroutinefunction(
                method.__wrapped__
            ), f"{cls.__name__}.{name}"
    assert not inspect.iscoroutinefunction(PreparedStatement.fetch)

    dsn = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{pg_database}"
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            released = await conn.prepare("SELECT 1")
        with pytest.raises(asyncpg.InterfaceError, match="released back") as untraced:
            released.fetch()
        with stagetrace.capture() as got:
            async with stagetrace.timeline("job"):
                with pytest.raises(asyncpg.InterfaceError, match="released back") as recorded:
                    released.fetchval()
                async with pool.acquire() as conn:
                    stmt = await conn.prepare("SELECT $1::int + 1")
                    assert await stmt.fetchval(41) == 42
    finally:
        await pool.close()
    assert untraced.value.__context__ is None and recorded.value.__context__ is None
    assert stagetrace.stats()["internal_errors"] == 0
    (tl,) = got
    assert queries(tl)[0].attrs["db.query.text"] == "SELECT $1::int + 1"


class _FinalConnection(sqlite3.Connection):
    """An application's connection class that refuses subclasses (so stagetrace cannot trace
    the connections it makes)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("_FinalConnection may not be subclassed")


class _NoRepr(str):
    """A parameter value that cannot be turned into text (so recording it, with
    record_sql_params, fails): neither whole (``repr``) nor cut (slicing, which is what
    stagetrace takes of a long ``str``)."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __getitem__(self, key: object) -> str:  # type: ignore[override]
        raise RuntimeError("no slice")


async def _sqlite_connect(request):
    missing = request.getfixturevalue("tmp_path") / "missing" / "db.sqlite3"
    with pytest.raises(sqlite3.OperationalError) as raised:
        sqlite3.connect(str(missing), factory=_FinalConnection)
    return raised.value


async def _sqlite_execute(request):
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError, match="no such table") as raised:
        conn.execute("SELECT * FROM missing WHERE name = ?", (_NoRepr("x"),))
    return raised.value


async def _asyncpg(request, prepared):
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(
        f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{request.getfixturevalue('pg_database')}"
    )
    try:
        query = "SELECT $1::text, 1 / $2::int"
        target = await conn.prepare(query) if prepared else conn
        args = (_NoRepr("x"), 0) if prepared else (query, _NoRepr("x"), 0)
        with pytest.raises(asyncpg.DivisionByZeroError) as raised:
            await target.fetchrow(*args)
    finally:
        await conn.close()
    return raised.value


async def _asyncpg_connection(request):
    return await _asyncpg(request, prepared=False)


async def _asyncpg_statement(request):
    return await _asyncpg(request, prepared=True)


@pytest.mark.parametrize(
    ("call", "site"),
    [
        (_sqlite_connect, "dbapi.sqlite3"),
        (_sqlite_execute, "dbapi.sqlite3"),
        (_asyncpg_connection, "dbapi.asyncpg"),
        (_asyncpg_statement, "dbapi.asyncpg"),
    ],
    ids=["sqlite3.connect", "sqlite3.execute", "asyncpg.connection", "asyncpg.statement"],
)
async def test_the_drivers_error_is_not_chained_to_an_internal_error(
    instrumented, request, call, site
):
    """Where stagetrace fails before the driver's call (a connection class it cannot subclass,
    a parameter whose repr fails with record_sql_params on), the call runs untraced, and the
    driver's exception reaches the application as untraced: not "during handling of" ours."""
    stagetrace.configure(record_sql_params=True)
    with stagetrace.capture():
        async with stagetrace.timeline("job"):
            error = await call(request)
    assert error.__context__ is None
    assert stagetrace.stats()["internal_errors_by_site"].get(site, 0) >= 1


@pytest.mark.usefixtures("sql_integrations_start_unpatched")
def test_instrumentation_is_reversible_and_idempotent(tmp_path):
    """instrument() twice patches once; uninstrument() puts sqlite3.connect (and psycopg's and
    asyncpg's entry points) back; connections made while instrumented go quiet."""
    import asyncpg
    import psycopg

    before = (
        sqlite3.connect,
        sqlite3.dbapi2.connect,
        vars(psycopg.Cursor)["execute"],
        vars(psycopg.Connection)["connect"],
        asyncpg.connect,
        vars(asyncpg.connection.Connection)["fetch"],
    )
    stagetrace.dbapi.instrument()
    stagetrace.dbapi.instrument()
    assert sqlite3.connect is not before[0] and sqlite3.dbapi2.connect is sqlite3.connect
    conn = sqlite3.connect(":memory:")
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn.execute("SELECT 1")
    assert got[0].count("db.query") == 1
    stagetrace.dbapi.uninstrument()
    after = (
        sqlite3.connect,
        sqlite3.dbapi2.connect,
        vars(psycopg.Cursor)["execute"],
        vars(psycopg.Connection)["connect"],
        asyncpg.connect,
        vars(asyncpg.connection.Connection)["fetch"],
    )
    assert after == before
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn.execute("SELECT 1")
        sqlite3.connect(":memory:").execute("SELECT 1")
    assert got[0].count("db.query") == 0 and got[0].count("db.connect") == 0


def test_a_query_past_max_stages_is_not_recorded_twice(instrumented):
    """Past max_stages an adapter's db.query stage is timed but not kept; the driver's call
    inside it is still that query, not a second one (Django with the drivers instrumented
    counted 19,801 queries of 10,000 once the cap was reached)."""
    stagetrace.configure(max_stages=5)
    conn = sqlite3.connect(":memory:")
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        for _ in range(20):
            with stagetrace.stage("SELECT 1", kind="db.query"):
                conn.execute("SELECT 1")
    (tl,) = got
    assert tl.by_kind["db.query"].count == 20
    assert tl.dropped_stages == 20 - 4


class _DictCursor(sqlite3.Cursor):
    def dicts(self) -> list[dict[str, object]]:
        names = [d[0] for d in self.description]
        return [dict(zip(names, row, strict=True)) for row in self.fetchall()]


class _DefaultFactory(sqlite3.Connection):
    def cursor(self, factory=_DictCursor):  # type: ignore[no-untyped-def, override]
        return super().cursor(factory)


class _NoFactory(sqlite3.Connection):
    def cursor(self):  # type: ignore[no-untyped-def, override]
        return super().cursor(_DictCursor)


class _PassThrough(sqlite3.Connection):
    calls = 0

    def cursor(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        _PassThrough.calls += 1
        return super().cursor(*args, **kwargs)


class _NamedFirst(sqlite3.Connection):
    def cursor(self, label=None, factory=_DictCursor):  # type: ignore[no-untyped-def, override]
        cur = super().cursor(factory)
        cur.label = label
        return cur


def test_an_application_connection_class_keeps_its_own_cursor(instrumented):
    """A ``Connection`` subclass of the application's with its own ``cursor()`` gets what it
    asks for: its default cursor class (traced), its own arguments in their places, and no
    argument it does not take."""
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(":memory:", factory=_DefaultFactory)
        cur = conn.cursor()
        assert isinstance(cur, _DictCursor)
        assert cur.execute("SELECT 1 AS one").dicts() == [{"one": 1}]

        named = sqlite3.connect(":memory:", factory=_NamedFirst).cursor("report")
        assert isinstance(named, _DictCursor) and named.label == "report"
        assert named.execute("SELECT 2 AS two").dicts() == [{"two": 2}]

        through = sqlite3.connect(":memory:", factory=_PassThrough)
        through.cursor().execute("SELECT 5")
        assert _PassThrough.calls == 1

        bare = sqlite3.connect(":memory:", factory=_NoFactory)
        assert bare.cursor().execute("SELECT 3 AS three").dicts() == [{"three": 3}]
        bare.execute("SELECT 4")
    (tl,) = got
    texts = [s.attrs["db.query.text"] for s in queries(tl)]
    # the cursor of a cursor() without a factory parameter is the application's own: untraced
    assert texts == ["SELECT 1 AS one", "SELECT 2 AS two", "SELECT 5", "SELECT 4"]
    assert stagetrace.stats().get("internal_errors", 0) == 0


def test_a_parameter_that_cannot_be_hashed_still_closes_its_stage(instrumented):
    """Telling repeated queries apart hashes the parameters; when that fails, the query is
    still a stage that ends, and the statements after it are recorded where they run."""
    with unhashable_param() as param, stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(":memory:")
        assert conn.execute("SELECT ?", (param,)).fetchall() == [(7,)]
        with stagetrace.stage("after"):
            conn.execute("SELECT 2")
    (tl,) = got
    assert [(s.kind, s.name, tl.stages[s.parent].kind) for s in tl.stages[1:]] == [
        ("db.connect", "connect", "task"),
        ("db.query", "SELECT", "task"),
        ("custom", "after", "task"),
        ("db.query", "SELECT", "custom"),
    ]
    assert not any(s.attrs.get("unfinished") for s in tl.stages)


COMMENTED = "/* tag */ " * 40 + "(SELECT 1) UNION (SELECT 2)"


def test_naming_a_statement_after_many_comments_is_linear():
    """A statement opening with many block comments and then no keyword (valid PostgreSQL:
    ``/* tag */ ... (SELECT 1) UNION (SELECT 2)``) is named at once: the name's pattern
    matches each comment one way only (it used to split a run of them in exponentially many
    ways — 24 comments took seconds, 40 would take days). Run in a child process so a
    regression fails by its deadline instead of hanging the suite."""
    import subprocess

    code = (
        "from stagetrace import _sql; import sys; "
        f"print(_sql.describe({COMMENTED!r}), _sql.describe('/* a */ -- b\\n /* c*d */ select x from t'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "('SQL', 'SQL') ('SELECT t', 'SELECT')", done.stderr


def test_a_commented_statement_is_recorded_under_postgresql(instrumented, pg_conninfo):
    """Such a statement (with a few comments: a regression must not hang the suite here) sent
    through psycopg in a recorded job: answered, one ``db.query`` stage with its text."""
    psycopg = pytest.importorskip("psycopg")
    sql = "/* tag */ " * 3 + "(SELECT 1) UNION (SELECT 2)"
    with (
        stagetrace.capture() as got,
        stagetrace.timeline("job"),
        psycopg.connect(pg_conninfo, autocommit=True) as conn,
    ):
        assert conn.execute(sql).fetchall() == [(1,), (2,)]
    (query,) = queries(got[0])
    assert (query.name, query.attrs["db.query.text"]) == ("SQL", sql)


def _strings(obj, seen=None):
    """Every string reachable from `obj` through dicts, lists and tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, seen)
            yield from _strings(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v, seen)


def test_a_cut_statement_is_one_shape_whatever_its_values_widths(instrumented):
    """A long column list, then ``IN`` with 2,000 literal values: cut for the record and cut
    again for its hash inside the value list, where how many values fit depends on their
    widths. Six runs with values 3, 4 and 5 digits wide are one statement shape — one hash,
    one N+1 — as they would be hashed whole."""
    columns = ", ".join(f"column_number_{i}" for i in range(400))
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE TABLE wide (x INTEGER, {columns})")
        for width in (3, 4, 5, 3, 4, 5):
            values = ", ".join(str(10 ** (width - 1) + i) for i in range(2000))
            conn.execute(f"SELECT {columns} FROM wide WHERE x IN ({values})").fetchall()
        conn.close()
    (tl,) = got
    found = [q for q in queries(tl) if q.attrs["db.query.text"].startswith("SELECT column")]
    assert len({q.attrs["stagetrace.db.query.hash"] for q in found}) == 1
    (n_plus_one,) = [f for f in tl.findings if f.kind == "n_plus_one"]
    assert n_plus_one.attrs["count"] == 6


def test_a_timeline_waiting_for_the_worker_keeps_no_statement_whole(instrumented):
    """A huge statement (an inline ``IN`` list of 200,000 values) cut at ``max_sql_length``:
    until the worker seals its timeline, the request keeps only the recorded text and a
    bounded beginning for the statement's hash — never the statement's whole text — and the
    stages still get told apart and hashed at the seal."""
    from stagetrace import _recorder

    stagetrace.configure(max_sql_length=100)
    values = ", ".join(str(i) for i in range(200_000))
    big = f"SELECT 1 WHERE 1 IN ({values})"
    held = {}
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(":memory:")
        for _ in range(3):
            conn.execute(big).fetchall()
        live = _recorder.live()
        held["queries"] = max(len(s) for s in _strings(live.queries))
        held["cut"] = [len(s) for s in _strings(live.cut_sql) if len(s) > 101]
        conn.close()
    assert len(big) > 1_000_000
    assert held["queries"] <= 101, held
    assert held["cut"] == [_recorder.MIN_HASHED_SQL], held  # one copy for the three runs
    (tl,) = got
    hashes = {q.attrs.get("stagetrace.db.query.hash") for q in queries(tl)}
    assert len(hashes) == 1 and None not in hashes


def test_statements_sharing_their_recorded_text_are_told_apart(instrumented):
    """Two statements that differ only after ``max_sql_length`` characters (a long column list,
    then ``WHERE id = ?`` or ``WHERE owner = ?``) are recorded with the same cut text, but
    are different statements: no duplicate marks between them, no N+1 or duplicate finding
    that merges them. One statement repeated is still an N+1 and a duplicate; one whose
    literal values differ after the cut is still one statement shape (an N+1)."""
    stagetrace.configure(max_sql_length=60)
    columns = ", ".join(f"column_number_{i}" for i in range(8))
    head = f"SELECT {columns} FROM wide"
    assert len(head) > 60
    by_id, by_owner = f"{head} WHERE id = ?", f"{head} WHERE owner = ?"
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE TABLE wide (id INTEGER, owner INTEGER, {columns})")
        for i in (1, 2, 3, 4, 5):
            conn.execute(by_id, (i,)).fetchall()
        for i in (1, 2, 3):
            conn.execute(by_owner, (i,)).fetchall()
        conn.execute(by_id, (1,)).fetchall()
        for i in (7, 8, 9, 10, 11):  # literal values after the cut: one shape all the same
            conn.execute(f"{head} WHERE owner > {i} AND id < 100").fetchall()
        conn.close()
    (tl,) = got
    found = [q for q in queries(tl) if q.attrs["db.query.text"].startswith("SELECT column")]
    assert len(found) == 14
    ids, owners, again, literals = found[:5], found[5:8], found[8], found[9:]
    assert {q.attrs["db.query.text"] for q in found} == {head[:60] + "…"}
    assert [q for q in owners if "stagetrace.duplicate_of" in q.attrs] == []
    assert again.attrs["stagetrace.duplicate_of"] == ids[0].id
    assert [q for q in literals if "stagetrace.duplicate_of" in q.attrs] == []
    assert all("owner >" not in str(q.attrs) for q in literals)  # nor the values after the cut

    n_plus_one = sorted(
        (sorted(f.stages) for f in tl.findings if f.kind == "n_plus_one"), key=lambda s: s[0]
    )
    assert n_plus_one == [
        sorted(q.id for q in [*ids, again]),
        [q.id for q in literals],
    ], [f.message for f in tl.findings]
    # each N+1 says where its loop is (the call site is taken when the recorded text repeats)
    for f in tl.findings:
        if f.kind == "n_plus_one":
            assert f.attrs.get("code.file.path") == __file__, f.attrs
    duplicates = [f for f in tl.findings if f.kind == "duplicate_query"]
    assert [sorted(f.stages) for f in duplicates] == [[ids[0].id, again.id]], [
        f.message for f in duplicates
    ]
