"""SQLAlchemy's asyncio extension on PostgreSQL through asyncpg and on SQLite through
aiosqlite: the ORM's sync code runs in greenlets, and the stages still nest in the request, the
rows are still loaded in a fetch stage, and an N+1 still names the application's own line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("greenlet")
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import selectinload

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


@pytest.fixture(params=["asyncpg", "aiosqlite"])
async def engine(request, tmp_path):
    if request.param == "asyncpg":
        pytest.importorskip("asyncpg")
        eng = create_async_engine(pg_url("asyncpg", request.getfixturevalue("pg_database")))
    else:
        pytest.importorskip("aiosqlite")
        eng = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'sa.db'}")
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(eng) as s:
        s.add_all(seed_rows())
        await s.commit()
    yield eng
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await eng.dispose()


async def job(fn):
    async with stagetrace.timeline("job"):
        await fn()


async def test_async_session_stages_nest_in_the_timeline(instrumented, engine, captured):
    """An AsyncSession query: checkout, begin, compile, query, fetch (the pre-buffered rows,
    with their count), and the commit — all children of the job, in order."""

    async def run():
        async with AsyncSession(engine) as s:
            users = (await s.scalars(select(User))).all()
            assert len(users) == 6
            await s.commit()

    await job(run)
    (tl,) = captured
    assert [(s.kind, s.name, s.parent) for s in tl.stages[1:6]] == [
        ("db.connect", "pool checkout", 0),
        ("transaction", "begin", 0),
        ("orm.compile", "SELECT st_user", 0),
        ("db.query", "SELECT st_user", 0),
        ("orm.fetch", "User", 0),
    ]
    assert tl.stages[5].attrs["rows"] == 6
    commits = [s for s in tl.stages if s.kind == "transaction" and s.name == "commit"]
    assert len(commits) == 1
    query = tl.stages[4]
    assert query.attrs["db.system.name"] == engine.dialect.name
    if engine.dialect.name == "postgresql":
        assert query.attrs["db.response.returned_rows"] == 6


async def test_an_async_n_plus_one_names_the_awaiting_line(instrumented, engine, captured):
    """A query per row awaited in a loop: the ORM runs it in a greenlet, and the N+1 finding
    still names the line of the application's ``await``."""

    async def run():
        async with AsyncSession(engine) as s:
            users = (await s.scalars(select(User))).all()
            for user in users:
                (await s.scalars(select(Post).where(Post.user_id == user.id))).all()

    await job(run)
    (tl,) = captured
    (finding,) = [f for f in tl.findings if f.kind == "n_plus_one"]
    assert finding.attrs["count"] == 6
    assert finding.attrs["code.file.path"] == __file__
    assert finding.attrs["code.line.number"] == run.__code__.co_firstlineno + 4
    assert finding.attrs["code.function.name"].endswith("run")


async def test_async_selectinload_and_awaitable_lazy_loads(instrumented, engine, captured):
    """selectinload's batch nests in the parent fetch; a lazy load run through ``run_sync`` is
    a fetch stage around its query."""

    async def run():
        async with AsyncSession(engine) as s:
            users = (await s.scalars(select(User).options(selectinload(User.posts)))).all()
            assert sum(len(u.posts) for u in users) == 12
        async with AsyncSession(engine) as s:
            post = await s.get(Post, 1)
            user = await s.run_sync(lambda _: post.user)  # a lazy load, in a greenlet
            assert user.id == 1

    await job(run)
    (tl,) = captured
    parent = next(s for s in tl.stages if s.kind == "orm.fetch" and s.name == "User")
    (batch,) = [s for s in tl.stages if s.name == "selectin load User.posts"]
    assert batch.parent == parent.id
    assert [tl.stages[i].kind for i in range(batch.id + 1, batch.id + 4)] == [
        "orm.compile",
        "db.query",
        "orm.fetch",
    ]
    (lazy,) = [s for s in tl.stages if s.name == "lazy load Post.user"]
    assert [s.kind for s in tl.stages if s.parent == lazy.id] == [
        "orm.compile",
        "db.query",
        "orm.fetch",
    ]


async def test_an_error_loading_unrecorded_rows_is_not_chained_to_ours(
    instrumented, engine, monkeypatch
):
    """When the fetch stage cannot be set up (naming it fails, here by injection), the
    pre-buffered rows are loaded unrecorded, and outside stagetrace's except block: an error
    the application raises while they load (in its ``load`` event handler) reaches it as
    untraced, not "during handling of" ours."""
    from stagetrace.sqlalchemy import _install

    class Refused(Exception):
        pass

    def refuse(target: object, context: object) -> None:
        raise Refused("not loading this one")

    def broken(context: object) -> str:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(_install, "_fetch_name", broken)
    event.listen(User, "load", refuse)
    try:
        async with AsyncSession(engine) as s, stagetrace.timeline("job"):
            with pytest.raises(Refused) as raised:
                await s.scalars(select(User))
    finally:
        event.remove(User, "load", refuse)
    assert raised.value.__context__ is None
    assert stagetrace.stats()["internal_errors_by_site"]["sqlalchemy.fetch"] >= 1


async def transactions(engine) -> None:
    """A commit, a rollback, ``engine.begin()``, savepoints released and rolled back to, and
    a session closed with its transaction still open."""
    async with AsyncSession(engine) as s:
        await s.execute(text("SELECT 1"))
        await s.commit()
    async with AsyncSession(engine) as s:
        await s.execute(text("SELECT 2"))
        await s.rollback()
    async with engine.begin() as conn:
        await conn.execute(text("SELECT 3"))
    async with AsyncSession(engine) as s:
        async with s.begin_nested():
            await s.execute(text("SELECT 4"))
        nested = await s.begin_nested()
        await s.execute(text("SELECT 5"))
        await nested.rollback()
        await s.commit()
    async with AsyncSession(engine) as s:
        await s.execute(text("SELECT 6"))


def shape(tl) -> list[tuple[str, str, int | None]]:
    return [(s.kind, s.name, s.parent) for s in tl.stages if s.kind != "orm.compile"]


async def test_the_async_driver_underneath_adds_nothing(instrumented, engine, captured):
    """asyncpg (and sqlite3 under aiosqlite) instrumented too, as the web adapters install
    them: one `db.query` per statement, and each COMMIT/ROLLBACK is SQLAlchemy's one
    ``transaction`` stage, with nothing inside — as over a sync driver, and as without the
    driver instrumented (asyncpg's own ``COMMIT;``/``ROLLBACK;`` used to be a second stage,
    a ``db.query`` inside it)."""
    await engine.dispose()
    await job(lambda: transactions(engine))
    stagetrace.dbapi.instrument()
    try:
        await engine.dispose()  # new connections: made by the instrumented driver
        await job(lambda: transactions(engine))
    finally:
        stagetrace.dbapi.uninstrument()
    alone, both = captured
    assert shape(both) == shape(alone)
    tl = both
    ends = [(s.name, s.parent) for s in tl.stages if s.kind == "transaction" and s.name != "begin"]
    assert ends == [("commit", 0), ("rollback", 0), ("commit", 0), ("commit", 0), ("rollback", 0)]
    txs = [s for s in tl.stages if s.kind == "transaction"]
    assert [s.attrs for s in txs] == [s.attrs for s in alone.stages if s.kind == "transaction"]
    for s in txs:
        assert s.attrs["db.system.name"] == engine.dialect.name
        assert [c for c in tl.stages if c.parent == s.id] == [], s.name
    queries = [s.name for s in tl.stages if s.kind == "db.query" and s.parent == 0]
    # savepoints are statements SQLAlchemy executes: queries of its own, recorded once too
    assert queries == [
        *("SELECT", "SELECT", "SELECT"),
        *("SAVEPOINT", "SELECT", "RELEASE"),
        *("SAVEPOINT", "SELECT", "ROLLBACK"),
        "SELECT",
    ]
    assert all(tl.stages[s.parent].kind != "db.query" for s in tl.stages if s.kind == "db.query")


async def test_a_failing_commit_is_the_commit_stages_error(instrumented, engine, captured):
    """A COMMIT that PostgreSQL refuses (a deferred constraint) with asyncpg instrumented too:
    the error is on SQLAlchemy's one ``commit`` stage, with no failed ``db.query`` beside it."""
    if engine.dialect.name != "postgresql":
        pytest.skip("deferred constraints are checked at COMMIT on PostgreSQL")
    from sqlalchemy.exc import IntegrityError

    stagetrace.dbapi.instrument()
    try:

        async def run():
            async with engine.connect() as conn:
                await conn.execute(
                    text("CREATE TEMP TABLE d (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
                )
                await conn.execute(text("INSERT INTO d VALUES (1), (1)"))
                with pytest.raises(IntegrityError):
                    await conn.commit()

        await job(run)
    finally:
        stagetrace.dbapi.uninstrument()
    (tl,) = captured
    (commit,) = [s for s in tl.stages if s.kind == "transaction" and s.name == "commit"]
    assert commit.parent == 0 and commit.error is not None
    assert [s for s in tl.stages if s.parent == commit.id] == []
    assert [s.name for s in tl.stages if s.kind == "db.query"] == ["CREATE", "INSERT d"]
    assert all(s.error is None for s in tl.stages if s.kind == "db.query")
