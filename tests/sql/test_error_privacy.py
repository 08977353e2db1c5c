"""A failed statement's error message can quote its parameter values (PostgreSQL's ``DETAIL``,
MySQL's ``Duplicate entry '...'``, SQLAlchemy's ``[parameters: ...]``): unless the user records
parameter values, no stage keeps them — not the query's, nor the view's or the request's the
exception went through."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import stagetrace
import stagetrace.dbapi

from .conftest import PG_HOST, PG_PORT

SECRET = "alice.secret@example.com"


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (  # psycopg / Django on PostgreSQL
            'duplicate key value violates unique constraint "users_email_key"\n'
            f"DETAIL:  Key (email)=({SECRET}) already exists.",
            'duplicate key value violates unique constraint "users_email_key" …',
        ),
        (  # SQLAlchemy's wrapper
            "(sqlite3.IntegrityError) UNIQUE constraint failed: users.email\n"
            "[SQL: INSERT INTO users (email) VALUES (?)]\n"
            f"[parameters: ('{SECRET}',)]",
            "(sqlite3.IntegrityError) UNIQUE constraint failed: users.email …",
        ),
        (  # PyMySQL / mysqlclient
            f"(1062, \"Duplicate entry '{SECRET}' for key 'users.email'\")",
            "1062: Duplicate entry …",
        ),
        (
            f'invalid input syntax for type integer: "{SECRET}"\nLINE 1: ...',
            "invalid input syntax for type integer: …",
        ),
        (
            'null value in column "email" of relation "users" violates not-null constraint',
            'null value in column "email" of relation "users" violates not-null constraint',
        ),
        ("can't adapt type 'dict'", "can't adapt type …"),
        (  # asyncpg refusing an argument prints its repr, unquoted
            "invalid input for query argument $1: 4111111111111111 (value out of int32 range)",
            "invalid input for query argument $1: …",
        ),
        (
            "invalid input for query argument $2: datetime.date(1980, 5, 17) (expected str)",
            "invalid input for query argument $2: …",
        ),
        ('monkey "secret" business', "monkey …"),  # not a schema object's name
        (  # PostgreSQL in German: its own quotes
            "doppelter Schlüsselwert verletzt Unique-Constraint »users_email_key«\n"
            f"DETAIL:  Schlüssel »(email)=({SECRET})« existiert bereits.",
            "doppelter Schlüsselwert verletzt Unique-Constraint »users_email_key« …",
        ),
        (
            f"ungültige Eingabesyntax für Typ integer: »{SECRET}«",
            "ungültige Eingabesyntax für Typ integer: …",
        ),
        (
            f"syntaxe en entrée invalide pour le type integer : « {SECRET} »",
            "syntaxe en entrée invalide pour le type integer : …",
        ),
        ("UNIQUE constraint failed: users.email", "UNIQUE constraint failed: users.email"),
    ],
)
def test_a_database_error_message_keeps_what_names_the_schema_and_no_values(message, kept):
    """The first line only, cut at the first quote that does not follow a schema object's
    kind (constraint, column, relation, key...)."""
    from stagetrace._errors import db_error_message

    assert db_error_message(message) == kept


def test_database_errors_are_told_by_their_classes():
    """PEP 249's classes (every driver's and Django's) and SQLAlchemy's statement errors are the
    database's; other exceptions are not."""
    import sqlite3

    import sqlalchemy.exc
    from django.db import utils

    from stagetrace._errors import is_db_error

    for t in (sqlite3.IntegrityError, sqlite3.OperationalError, utils.IntegrityError):
        assert is_db_error(t)
    assert is_db_error(sqlalchemy.exc.IntegrityError)
    assert is_db_error(sqlalchemy.exc.StatementError)
    assert not is_db_error(ValueError) and not is_db_error(KeyError)


@pytest.fixture
def flask_app_on_sqlalchemy() -> Iterator[object]:
    flask = pytest.importorskip("flask")
    sa = pytest.importorskip("sqlalchemy")
    import stagetrace.flask

    stagetrace.flask.instrument()
    engine = sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    md = sa.MetaData()
    users = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String, unique=True),
    )
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(users.insert(), {"email": SECRET})
    app = flask.Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # /crash answers 500, as in production

    @app.post("/signup")
    def signup() -> str:
        with engine.begin() as c:
            c.execute(users.insert(), {"email": flask.request.form["email"]})
        return "ok"

    @app.post("/crash")
    def crash() -> str:
        with engine.begin() as c:
            c.execute(users.insert(), {"email": flask.request.form["email"]})
        return "ok"

    @app.errorhandler(sa.exc.IntegrityError)
    def taken(e: Exception) -> tuple[str, int]:
        if flask.request.path == "/crash":
            raise e
        return "email taken", 409

    yield app
    stagetrace.flask.uninstrument()
    engine.dispose()


def test_a_failed_sqlalchemy_statement_exports_no_parameter_value(flask_app_on_sqlalchemy):
    """SQLAlchemy's error text lists the parameters: the query stage, the view it went through
    and the request that failed with it keep the error's type and its first line only."""
    app = flask_app_on_sqlalchemy
    with stagetrace.capture() as timelines:
        app.test_client().post("/signup", data={"email": SECRET}).close()
        app.test_client().post("/crash", data={"email": SECRET}).close()
    for tl in timelines:
        assert SECRET not in json.dumps(tl.to_dict())
        (query,) = [s for s in tl.stages if s.kind == "db.query" and s.error is not None]
        assert query.error.type == "sqlalchemy.exc.IntegrityError"
        assert "UNIQUE constraint failed: users.email" in query.error.message
    failed = [s for s in timelines[1].stages if s.error is not None]
    assert {s.kind for s in failed} >= {"db.query", "view"}


def test_with_record_sql_params_the_whole_message_is_kept(flask_app_on_sqlalchemy):
    """Opting in to parameter values opts in to the messages that quote them."""
    stagetrace.configure(record_sql_params=True)
    with stagetrace.capture() as timelines:
        flask_app_on_sqlalchemy.test_client().post("/signup", data={"email": SECRET}).close()
    (query,) = [s for s in timelines[0].stages if s.kind == "db.query" and s.error is not None]
    assert SECRET in query.error.message and "[SQL: INSERT INTO users" in query.error.message


def test_a_failed_psycopg_statement_exports_no_parameter_value():
    """PostgreSQL's DETAIL line quotes the duplicate key's value."""
    from ..conftest import need_service

    need_service("PostgreSQL", PG_HOST, PG_PORT)
    psycopg = pytest.importorskip("psycopg")
    dsn = f"host={PG_HOST} port={PG_PORT} dbname=test user=postgres"
    table = "st_error_privacy"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"CREATE TABLE {table} (email text UNIQUE)")
        c.execute(f"INSERT INTO {table} VALUES (%s)", (SECRET,))
    stagetrace.dbapi.instrument()
    try:
        with (
            stagetrace.capture() as timelines,
            stagetrace.timeline("signup"),
            psycopg.connect(dsn) as c,
            pytest.raises(psycopg.errors.UniqueViolation),
        ):
            c.execute(f"INSERT INTO {table} VALUES (%s)", (SECRET,))
    finally:
        stagetrace.dbapi.uninstrument()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
    (tl,) = timelines
    assert SECRET not in json.dumps(tl.to_dict())
    (query,) = [s for s in tl.stages if s.kind == "db.query" and s.error is not None]
    assert query.error.message == (
        f'duplicate key value violates unique constraint "{table}_email_key" …'
    )


@pytest.mark.parametrize(
    ("value", "secret"),
    [(4111111111111111, "4111111111111111"), (__import__("datetime").date(1980, 5, 17), "1980")],
)
def test_an_argument_asyncpg_refuses_is_not_kept(value, secret):
    """asyncpg prints a refused argument's ``repr`` without quotes (a card number, a birth
    date): the message stops at the argument's number."""
    import asyncio

    from ..conftest import need_service

    need_service("PostgreSQL", PG_HOST, PG_PORT)
    asyncpg = pytest.importorskip("asyncpg")

    async def fail() -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
        try:
            with stagetrace.timeline("job"):
                await conn.fetch("SELECT $1::int", value)
        finally:
            await conn.close()

    with stagetrace.capture() as got, pytest.raises(asyncpg.DataError):
        asyncio.run(fail())
    (tl,) = got
    assert secret not in json.dumps(tl.to_dict())
    assert tl.stages[0].error.message == "invalid input for query argument $1: …"
