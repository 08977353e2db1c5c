"""A small Flask bookshop on SQLAlchemy (sync, SQLite): before/after-request and teardown
functions, a blueprint, an N+1 JSON view and its fix, a template page with includes, a
streaming CSV export, an error handler.

Run it (from the repository root) and watch the waterfalls:

    STAGETRACE_SINKS=console flask --app examples/flask_app/app run

then open http://127.0.0.1:5000/api/books (the N+1: one query for the books, then one lazy
load per author), /api/books/fast (the fix: ``selectinload``), /books, /export.csv and
/books/999. `stagetrace.flask.instrument()` also records SQLAlchemy's work: ``orm.compile``,
``db.connect``, ``db.query``, ``orm.fetch`` and ``transaction`` stages inside the view.
"""

from __future__ import annotations

from pathlib import Path

import stagetrace.flask

stagetrace.flask.instrument()  # every Flask app in the process, and SQLAlchemy with them

from sqlalchemy import ForeignKey, create_engine, func, select  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

import flask  # noqa: E402
import stagetrace  # noqa: E402

HERE = Path(__file__).parent
DATABASE = HERE / "bookshop.sqlite3"


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


app = flask.Flask(__name__)
shop = flask.Blueprint("shop", __name__)
_engines: dict[str, Engine] = {}


def engine() -> Engine:
    """The engine of the configured database file (one per file, made on first use)."""
    url = f"sqlite:///{app.config.get('DATABASE', DATABASE)}"
    if url not in _engines:
        _engines[url] = create_engine(url)
    return _engines[url]


def init_db(path: Path = DATABASE) -> None:
    """Create and seed the database (idempotent)."""
    app.config["DATABASE"] = path
    Base.metadata.create_all(engine())
    with Session(engine()) as session, session.begin():
        if session.scalar(select(func.count()).select_from(Book)) == 0:
            authors = [Author(name=f"Author {i}") for i in range(6)]
            session.add_all(authors)
            session.add_all(Book(title=f"Book {i}", author=authors[i % 6]) for i in range(12))


def db() -> Session:
    """This request's session, closed when the app context ends."""
    if "db" not in flask.g:
        flask.g.db = Session(engine())
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
    session = flask.g.pop("db", None)
    if session is not None:
        session.close()


@shop.route("/api/books")
def api_books():
    """The N+1 view: one query for the books, then one lazy load per book for its author."""
    books = db().scalars(select(Book).order_by(Book.id)).all()
    out = [{"id": b.id, "title": b.title, "author": b.author.name} for b in books]
    return flask.jsonify(books=out)


@shop.route("/api/books/fast")
def api_books_fast():
    """The fix: the authors of all books in one more query (``selectinload``)."""
    query = select(Book).options(selectinload(Book.author)).order_by(Book.id)
    books = db().scalars(query).all()
    out = [{"id": b.id, "title": b.title, "author": b.author.name} for b in books]
    return flask.jsonify(books=out)


@shop.route("/books")
def books_page():
    rows = db().execute(select(Book.title, Author.name).join(Book.author).order_by(Book.id))
    return flask.render_template("books.html", books=rows.all(), user=flask.g.user)


@shop.route("/books/<int:book_id>")
def book_detail(book_id: int):
    book = db().get(Book, book_id)
    if book is None:
        flask.abort(404)
    return {"id": book.id, "title": book.title}


@shop.route("/export.csv")
def export():
    @flask.stream_with_context
    def rows():
        yield "id,title\n"
        with stagetrace.stage("read books", kind="custom"):
            for book_id, title in db().execute(select(Book.id, Book.title).order_by(Book.id)):
                yield f"{book_id},{title}\n"

    return flask.Response(rows(), mimetype="text/csv")


@app.errorhandler(404)
def not_found(exc):
    return {"error": "not found"}, 404


app.register_blueprint(shop)
init_db()

if __name__ == "__main__":
    app.run(debug=False)
