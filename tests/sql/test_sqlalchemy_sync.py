"""SQLAlchemy (sync) on SQLite and on PostgreSQL through psycopg 3: pool checkout, transactions,
compilation with the compiled cache's verdict, queries, ORM loading (lazy loads and
selectinload nested where they happen), errors, and instrumentation that comes and goes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("sqlalchemy")
from sqlalchemy import create_engine, exc, select, text
from sqlalchemy.orm import Session, selectinload

import stagetrace
import stagetrace.dbapi
import stagetrace.sqlalchemy

from .conftest import pg_url
from .models import Base, Post, User, seed_rows


@pytest.fixture
def instrumented() -> Iterator[None]:
    stagetrace.sqlalchemy.instrument()
    yield
    stagetrace.sqlalchemy.uninstrument()


def seeded(eng):
    Base.metadata.drop_all(eng)
    Base.metadata.create_all(eng)
    with Session(eng) as s:
        s.add_all(seed_rows())
        s.commit()
    return eng


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = seeded(create_engine(f"sqlite:///{tmp_path / 'sa.db'}"))
    else:
        eng = seeded(create_engine(pg_url("psycopg", request.getfixturevalue("pg_database"))))
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()


@pytest.fixture
def pg_engine(pg_database):
    eng = seeded(create_engine(pg_url("psycopg", pg_database)))
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()


def job(fn):
    """Run `fn` in a job timeline and return the timeline."""
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        fn()
    (tl,) = got
    return tl


def under(tl, stage):
    """The stages nested under `stage`, in order."""
    ids, out = {stage.id}, []
    for s in tl.stages:
        if s.parent in ids:
            ids.add(s.id)
            out.append(s)
    return out


def test_an_orm_query_is_checkout_begin_compile_query_fetch_rollback(instrumented, engine):
    """A session's first query: the pool checkout, begin, the statement's compilation (a cache
    miss, then a hit for the same statement), the query with its connection's attributes and
    placeholders (never the values), the rows turned into objects, the rollback at close."""

    def run():
        with Session(engine) as s:
            s.scalars(select(User).where(User.name != "secret-value")).all()
            s.scalars(select(User).where(User.name != "another-secret")).all()

    tl = job(run)
    kinds = [(s.kind, s.name) for s in tl.stages[1:]]
    assert kinds == [
        ("db.connect", "pool checkout"),
        ("transaction", "begin"),
        ("orm.compile", "SELECT st_user"),
        ("db.query", "SELECT st_user"),
        ("orm.fetch", "User"),
        ("orm.compile", "SELECT st_user"),
        ("db.query", "SELECT st_user"),
        ("orm.fetch", "User"),
        ("transaction", "rollback"),
    ]
    system = engine.dialect.name
    checkout, _, miss, query, fetch, hit, _, _, _ = tl.stages[1:]
    assert checkout.attrs["db.system.name"] == system
    assert isinstance(checkout.attrs["stagetrace.db.pool.wait_ns"], int)
    assert miss.attrs["cache.hit"] is False and miss.attrs["sqlalchemy.compiled_cache"] == "miss"
    assert hit.attrs["cache.hit"] is True and hit.attrs["sqlalchemy.compiled_cache"] == "hit"
    assert query.attrs["db.system.name"] == system
    assert query.attrs["db.operation.name"] == "SELECT"
    assert "st_user.name !=" in query.attrs["db.query.text"]
    assert fetch.attrs["rows"] == 6
    if system == "postgresql":
        assert query.attrs["db.namespace"].startswith("stagetrace_sql_")
        assert query.attrs["server.address"] == "127.0.0.1"
        assert query.attrs["server.port"] == 5432
        assert query.attrs["db.response.returned_rows"] == 6
    else:
        assert query.attrs["db.namespace"].endswith("sa.db")
    for s in tl.stages:
        for value in s.attrs.values():
            assert "secret" not in str(value)


def test_lazy_loads_are_fetch_stages_around_their_queries_and_an_n_plus_one(instrumented, engine):
    """Touching a lazy relationship in a loop: each load is an `orm.fetch` stage holding its
    compile, query and fetch; the N+1 analyzer names the loop's line."""

    def run():
        with Session(engine) as s:
            for user in s.scalars(select(User)).all():
                assert len(user.posts) == 2  # the lazy load

    tl = job(run)
    loads = [s for s in tl.stages if s.name == "lazy load User.posts"]
    assert len(loads) == 6
    for load in loads:
        assert load.kind == "orm.fetch" and load.attrs["sqlalchemy.loader"] == "lazy"
        assert [(s.kind, s.name) for s in under(tl, load)] == [
            ("orm.compile", "SELECT st_post"),
            ("db.query", "SELECT st_post"),
            ("orm.fetch", "Post"),
        ]
    (finding,) = [f for f in tl.findings if f.kind == "n_plus_one"]
    assert finding.attrs["count"] == 6
    assert finding.attrs["code.file.path"] == __file__
    line = run.__code__.co_firstlineno + 3  # the assert touching user.posts
    assert finding.attrs["code.line.number"] == line


def test_a_lazy_loads_name_is_made_once_per_relationship(instrumented, engine):
    """The name of a lazy load's stage is cached: SQLAlchemy's loader strategies take no weak
    references, and a cache keyed on them silently cached nothing — the name was formatted
    again on every load of an N+1 loop."""
    from stagetrace.sqlalchemy import _install

    def run():
        with Session(engine) as s:
            for user in s.scalars(select(User)).all():
                assert len(user.posts) == 2

    formatted: list[str] = []
    real = _install.remember

    def counting(cache, key, obj, value):  # type: ignore[no-untyped-def]
        formatted.append(value)
        return real(cache, key, obj, value)

    _install._relationship_names.clear()
    _install.remember = counting
    try:
        tl = job(run)
        job(run)
    finally:
        _install.remember = real
    assert len([s for s in tl.stages if s.name == "lazy load User.posts"]) == 6
    assert formatted == ["lazy load User.posts"]


def test_an_n_plus_one_in_a_jinja2_template_names_the_templates_line(
    instrumented, engine, tmp_path
):
    """Lazy loads touched in a Jinja2 template's loop: the call site is the template file and
    the line of the template that touches the relationship (it was the line of Jinja2's
    generated Python code, 25 in a 4-line template, in its function ``root``)."""
    import jinja2

    (tmp_path / "users.html").write_text(
        "<h1>Users</h1>\n"
        "{% for user in users %}\n"
        "  <p>{{ user.name }}: {{ user.posts|length }} posts</p>\n"
        "{% endfor %}\n"
    )
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tmp_path)))

    def run():
        with Session(engine) as s:
            env.get_template("users.html").render(users=s.scalars(select(User)).all())

    tl = job(run)
    (finding,) = [f for f in tl.findings if f.kind == "n_plus_one"]
    assert finding.attrs["code.file.path"] == str(tmp_path / "users.html")
    assert finding.attrs["code.line.number"] == 3
    assert "code.function.name" not in finding.attrs
    assert finding.attrs["call_site"] == f"{tmp_path / 'users.html'}:3"


def test_selectinload_runs_inside_the_fetch_that_triggers_it(instrumented, engine):
    """selectinload: one follow-up query, nested in the parent rows' fetch, in a stage of its
    own; no N+1."""

    def run():
        with Session(engine) as s:
            users = s.scalars(select(User).options(selectinload(User.posts))).all()
            assert sum(len(u.posts) for u in users) == 12

    tl = job(run)
    (parent,) = [s for s in tl.stages if s.kind == "orm.fetch" and s.name == "User"]
    (batch,) = [s for s in tl.stages if s.name == "selectin load User.posts"]
    assert batch.parent == parent.id and batch.attrs["sqlalchemy.loader"] == "selectin"
    inside = under(tl, batch)
    assert [s.kind for s in inside] == ["orm.compile", "db.query", "orm.fetch"]
    assert inside[2].attrs["rows"] == 12
    assert tl.count("db.query") == 2
    assert not [f for f in tl.findings if f.kind == "n_plus_one"]


def test_writes_are_a_transaction_with_its_commit(instrumented, engine):
    """session.begin(): begin, the flush's INSERT (with the driver's row count), commit."""

    def run():
        with Session(engine) as s, s.begin():
            s.add(Post(title="new", user_id=1))

    tl = job(run)
    names = [(s.kind, s.name) for s in tl.stages if s.kind in ("transaction", "db.query")]
    assert names[0] == ("transaction", "begin")
    assert ("db.query", "INSERT st_post") in names
    assert names[-1] == ("transaction", "commit")
    (insert,) = [s for s in tl.stages if s.kind == "db.query" and s.name == "INSERT st_post"]
    assert insert.attrs["db.operation.name"] == "INSERT"
    assert "new" not in insert.attrs["db.query.text"]


def test_a_failing_statement_ends_its_stage_with_the_error(instrumented, engine):
    """A statement the database rejects: its `db.query` stage carries the error and ends there;
    the next statement is a sibling, not a child."""

    def run():
        with Session(engine) as s:
            with pytest.raises(exc.DBAPIError):
                s.execute(text("SELECT * FROM no_such_table"))
            s.rollback()
            s.execute(text("SELECT 1"))

    tl = job(run)
    failed, ok = [s for s in tl.stages if s.kind == "db.query"]
    assert failed.error is not None and "no_such_table" in failed.error.message
    assert ok.error is None and ok.parent == failed.parent == 0


def test_waiting_for_a_pooled_connection_is_the_checkouts_wait_time(instrumented, pg_engine):
    """With a pool of one connection held elsewhere for 300 ms, the checkout waits: its
    `stagetrace.db.pool.wait_ns` holds that wait; a new connection is a nested `connect`."""
    pool_engine = create_engine(pg_engine.url, pool_size=1, max_overflow=0)
    held = pool_engine.connect()
    release = threading.Timer(0.3, held.close)
    try:

        def run():
            release.start()
            with pool_engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        tl = job(run)
    finally:
        release.cancel()
        held.close()
    (checkout,) = [s for s in tl.stages if s.name == "pool checkout"]
    assert checkout.attrs["stagetrace.db.pool.wait_ns"] >= 100_000_000
    pool_engine.dispose()

    def fresh():
        with pool_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    tl = job(fresh)
    (checkout,) = [s for s in tl.stages if s.name == "pool checkout"]
    (connect,) = [s for s in tl.stages if s.kind == "db.connect" and s.name == "connect"]
    assert connect.parent == checkout.id
    assert checkout.attrs["stagetrace.db.pool.wait_ns"] < connect.duration_ns
    pool_engine.dispose()


def test_the_driver_underneath_adds_no_second_query_stage(instrumented, engine):
    """With the DB-API drivers instrumented too (sqlite3, psycopg), each statement is one
    `db.query` stage, SQLAlchemy's."""
    stagetrace.dbapi.instrument()
    try:
        engine.dispose()  # new connections: made by the instrumented driver

        def run():
            with Session(engine) as s:
                s.scalars(select(User)).all()
                s.execute(text("SELECT 1"))

        tl = job(run)
    finally:
        stagetrace.dbapi.uninstrument()
    queries = [s for s in tl.stages if s.kind == "db.query"]
    assert [s.name for s in queries] == ["SELECT st_user", "SELECT"]
    assert all(tl.stages[s.parent].kind != "db.query" for s in queries)
    connects = [s for s in tl.stages if s.kind == "db.connect"]
    assert [s.name for s in connects] == ["pool checkout", "connect"]


def test_pool_pre_ping_is_the_checkouts_own_work(instrumented, engine):
    """With ``pool_pre_ping`` and the drivers instrumented too (as the web adapters install
    them), the ping SQLAlchemy sends on each checkout (``;`` on psycopg, ``SELECT 1`` on
    SQLite) is part of the ``pool checkout`` stage, as a new connection's setup is part of its
    ``connect``: not a query of the application's, nor a duplicate query in every request that
    checks out twice."""
    pinging = create_engine(engine.url, pool_pre_ping=True)
    stagetrace.dbapi.instrument()
    try:
        with pinging.connect() as conn:  # the first connection, outside the request
            conn.execute(text("SELECT 1"))

        def run():
            for i in range(3):
                with pinging.connect() as conn:
                    conn.execute(text("SELECT :i"), {"i": i}).all()

        tl = job(run)
    finally:
        stagetrace.dbapi.uninstrument()
        pinging.dispose()
    queries = [s for s in tl.stages if s.kind == "db.query"]
    assert len(queries) == 3
    assert all(tl.stages[s.parent].kind != "db.connect" for s in queries)
    assert tl.findings == ()


@pytest.mark.usefixtures("sql_integrations_start_unpatched")
def test_instrumentation_is_idempotent_and_reversible(engine):
    """instrument() twice records once; uninstrument() restores every patched attribute and
    removes the listeners: nothing is recorded, and SQLAlchemy works as before."""
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import loading
    from sqlalchemy.sql.elements import ClauseElement

    before = {
        (owner, name): vars(owner).get(name)
        for owner, name in (
            (Engine, "raw_connection"),
            (Connection, "_commit_impl"),
            (Connection, "_exec_single_context"),
            (ClauseElement, "_compile_w_cache"),
            (loading, "instances"),
        )
    }

    def run():
        with Session(engine) as s:
            s.scalars(select(User)).all()

    stagetrace.sqlalchemy.instrument()
    stagetrace.sqlalchemy.instrument()
    assert stagetrace.sqlalchemy.is_instrumented()
    tl = job(run)
    assert tl.count("db.query") == 1 and tl.count("orm.compile") == 1
    stagetrace.sqlalchemy.uninstrument()
    assert not stagetrace.sqlalchemy.is_instrumented()
    for (owner, name), value in before.items():
        assert vars(owner).get(name) is value, name
    tl = job(run)
    assert [s.kind for s in tl.stages] == ["task"]
    # no event listener was ever added: SQLAlchemy's event dispatch stays off
    from sqlalchemy.engine.interfaces import Dialect

    assert vars(Engine)["_has_events"] is False and vars(Dialect)["_has_events"] is False


@pytest.mark.usefixtures("sql_integrations_start_unpatched")
def test_an_adapters_install_is_reference_counted(engine):
    """Two users of `install` (an adapter and the application): the patches stay until the
    last one leaves; `uninstrument` without `instrument` changes nothing."""
    stagetrace.sqlalchemy.uninstrument()
    stagetrace.sqlalchemy.install()
    stagetrace.sqlalchemy.instrument()
    stagetrace.sqlalchemy.uninstrument()
    assert stagetrace.sqlalchemy.is_instrumented()
    stagetrace.sqlalchemy.uninstall()
    assert not stagetrace.sqlalchemy.is_instrumented()
    stagetrace.sqlalchemy.uninstall()  # one too many: ignored
    assert not stagetrace.sqlalchemy.is_instrumented()


def test_nothing_is_recorded_outside_a_timeline(instrumented, engine):
    """Queries outside any timeline run normally and leave no trace."""
    with stagetrace.capture() as got, Session(engine) as s:
        assert len(s.scalars(select(User)).all()) == 6
    assert got == []
    assert stagetrace.current_timeline() is None


def test_elapsed_time_of_a_slow_statement_is_the_querys(instrumented, pg_engine):
    """The query stage lasts as long as the statement (a 50 ms sleep on the server)."""

    def run():
        with pg_engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.05)"))

    t0 = time.perf_counter_ns()
    tl = job(run)
    elapsed = time.perf_counter_ns() - t0
    (query,) = [s for s in tl.stages if s.kind == "db.query"]
    assert 50_000_000 <= query.duration_ns <= elapsed


def test_yield_per_loads_in_chunks_each_a_fetch_stage(instrumented, engine):
    """execution_options(yield_per=2): rows are loaded two at a time, as without stagetrace,
    each chunk an `orm.fetch` stage where it is read."""

    def run():
        with Session(engine) as s:
            result = s.scalars(select(User).execution_options(yield_per=2))
            seen = [len(chunk) for chunk in result.partitions()]
            assert seen == [2, 2, 2]

    tl = job(run)
    fetches = [s for s in tl.stages if s.kind == "orm.fetch"]
    assert [s.attrs.get("rows") for s in fetches][:3] == [2, 2, 2]


def test_a_huge_statement_is_named_from_its_cut_text(instrumented):
    """The compile stage's name comes from the statement cut to ``max_sql_length`` (as the
    query's text), so the cache of names never holds a statement of any size — nor the literal
    values an application inlined in it."""
    from stagetrace import _sql

    eng = create_engine("sqlite://")
    _sql._described.clear()
    with eng.connect() as conn:
        for n in range(5):
            ids = ",".join(str(i) for i in range(n * 10_000, n * 10_000 + 5_000))
            with stagetrace.capture() as got, stagetrace.timeline("job"):
                conn.execute(text(f"SELECT 1 WHERE 1 IN ({ids})")).all()
    eng.dispose()
    (compile_stage,) = [s for s in got[0].stages if s.kind == "orm.compile"]
    assert compile_stage.name == "SELECT"
    limit = stagetrace.settings().max_sql_length
    assert max(len(k) for k in _sql._described) <= limit + 1
