"""The Flask app the adapter's tests run against: before/after/teardown functions, a
blueprint, JSON, templates, class-based views, error handlers, streaming, an async view and an
outbound call."""

from __future__ import annotations

import sqlite3

import httpx
from flask.views import MethodView

import flask
import stagetrace

RAISED: list[BaseException] = []
TORN_DOWN: list[str] = []
OUTBOUND_URL: list[str] = []


def create_app() -> flask.Flask:
    app = flask.Flask(__name__)
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("create table book (id integer primary key, title text)")
    db.executemany("insert into book (title) values (?)", [("Dune",), ("Emma",), ("Ulysses",)])

    @app.before_request
    def load_user():
        flask.g.user = flask.request.headers.get("X-User", "anonymous")

    @app.before_request
    def maintenance():
        if flask.request.path == "/maintenance":
            return "down for maintenance", 503
        return None

    @app.after_request
    def add_header(response):
        response.headers["X-User"] = flask.g.get("user", "-")
        return response

    @app.teardown_request
    def close_db(exc):
        TORN_DOWN.append(flask.request.path)

    @app.route("/books/<int:book_id>")
    def book(book_id):
        row = db.execute("select id, title from book where id = ?", (book_id,)).fetchone()
        if row is None:
            flask.abort(404)
        return flask.jsonify(id=row[0], title=row[1])

    @app.route("/maintenance")
    def maintenance_page():
        return "never reached"

    @app.route("/books")
    def books():
        return [{"id": i, "title": t} for i, t in db.execute("select id, title from book")]

    @app.route("/page")
    def page():
        titles = [t for (t,) in db.execute("select title from book")]
        return flask.render_template("page.html", books=titles)

    @app.route("/boom")
    def boom():
        exc = ValueError("bad value")
        RAISED.append(exc)
        raise exc

    @app.route("/crash")
    def crash():
        exc = KeyError("crash")
        RAISED.append(exc)
        raise exc

    @app.errorhandler(ValueError)
    def handle_value_error(exc):
        return {"error": str(exc)}, 400

    @app.errorhandler(404)
    def not_found(exc):
        return "nothing here", 404

    @app.route("/stream")
    def stream():
        @flask.stream_with_context
        def rows():
            for i in range(3):
                with stagetrace.stage(f"row {i}"):
                    yield f"{i},{flask.request.path}\n"

        return flask.Response(rows(), mimetype="text/csv")

    @app.route("/async")
    async def async_view():
        return "async ok"

    @app.route("/outbound")
    def outbound():
        r = httpx.get(OUTBOUND_URL[-1] + "/books/1?secret=x")
        return {"status": r.status_code}

    class ItemAPI(MethodView):
        def get(self, item_id):
            return {"item": item_id}

        def post(self, item_id):
            return {"created": item_id}, 201

    app.add_url_rule("/items/<int:item_id>", view_func=ItemAPI.as_view("item"))

    bp = flask.Blueprint("shop", __name__, url_prefix="/shop")

    @bp.before_request
    def shop_open():
        pass

    @bp.route("/orders/<name>")
    def order(name):
        return f"order {name}"

    app.register_blueprint(bp)
    return app
