"""A small Flask bookshop: before/after-request and teardown functions, a blueprint, an N+1
JSON view, a template page with includes, a streaming CSV export, an error handler.

Run it (from the repository root) and watch the waterfalls:

    STAGETRACE_SINKS=console flask --app examples/flask_app/app run

then open http://127.0.0.1:5000/api/books, /books, /export.csv, /books/999.

TODO(lead, issue 12): switch the database to SQLAlchemy (sync, SQLite) once the
`stagetrace.sqlalchemy` branch is merged — `db()` becomes a SQLAlchemy session, and the
`db.query` stages then come with `orm.compile`, `orm.fetch`, `db.connect` and `transaction`.
Until then this example uses the standard library's sqlite3, whose queries are part of the
view's self time (no DB-API stages yet).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import stagetrace.flask

stagetrace.flask.instrument()  # every Flask app in the process

import flask  # noqa: E402
import stagetrace  # noqa: E402

HERE = Path(__file__).parent
DATABASE = HERE / "bookshop.sqlite3"

app = flask.Flask(__name__)
shop = flask.Blueprint("shop", __name__)


def init_db(path: Path = DATABASE) -> None:
    """Create and seed the database (idempotent)."""
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            create table if not exists author (id integer primary key, name text);
            create table if not exists book (
                id integer primary key, title text, author_id integer references author(id)
            );
            """
        )
        if conn.execute("select count(*) from book").fetchone()[0] == 0:
            conn.executemany(
                "insert into author (name) values (?)", [(f"Author {i}",) for i in range(4)]
            )
            conn.executemany(
                "insert into book (title, author_id) values (?, ?)",
                [(f"Book {i}", i % 4 + 1) for i in range(12)],
            )


def db() -> sqlite3.Connection:
    if "db" not in flask.g:
        flask.g.db = sqlite3.connect(app.config.get("DATABASE", DATABASE))
    return flask.g.db


@app.before_request
def load_user() -> None:
    flask.g.user = flask.request.headers.get("X-User", "guest")


@app.after_request
def served_by(response: flask.Response) -> flask.Response:
    response.headers["X-Served-By"] = "flask-bookshop"
    return response


@app.teardown_appcontext
def close_db(exc: BaseException | None) -> None:
    conn = flask.g.pop("db", None)
    if conn is not None:
        conn.close()


@shop.route("/api/books")
def api_books():
    """The N+1 view: one query for the books, one per book for its author."""
    books = db().execute("select id, title, author_id from book order by id").fetchall()
    out = []
    for book_id, title, author_id in books:
        (author,) = db().execute("select name from author where id = ?", (author_id,)).fetchone()
        out.append({"id": book_id, "title": title, "author": author})
    return flask.jsonify(books=out)


@shop.route("/books")
def books_page():
    rows = (
        db()
        .execute(
            "select book.title, author.name from book join author on author.id = book.author_id"
        )
        .fetchall()
    )
    return flask.render_template("books.html", books=rows, user=flask.g.user)


@shop.route("/books/<int:book_id>")
def book_detail(book_id: int):
    row = db().execute("select id, title from book where id = ?", (book_id,)).fetchone()
    if row is None:
        flask.abort(404)
    return {"id": row[0], "title": row[1]}


@shop.route("/export.csv")
def export():
    @flask.stream_with_context
    def rows():
        yield "id,title\n"
        with stagetrace.stage("read books", kind="custom"):
            for book_id, title in db().execute("select id, title from book order by id"):
                yield f"{book_id},{title}\n"

    return flask.Response(rows(), mimetype="text/csv")


@app.errorhandler(404)
def not_found(exc):
    return {"error": "not found"}, 404


app.register_blueprint(shop)
init_db()

if __name__ == "__main__":
    app.run(debug=False)
