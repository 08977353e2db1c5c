"""Realistic synthetic timelines for the console waterfall's tests and golden files.

Each is built the way a reader would get it, through the public `Timeline.from_dict`, with the
shapes the adapters record: Django's middleware chain, an N+1 view, a 404, a Starlette error that
passes through every middleware, a background task after the response, deep nesting.
"""

from __future__ import annotations

from typing import Any

from stagetrace import Timeline

MS = 1_000_000

DJANGO_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

STARLETTE_MIDDLEWARE = [
    "starlette.middleware.errors.ServerErrorMiddleware",
    "app.ServedByHeader",
    "starlette.middleware.cors.CORSMiddleware",
    "starlette.middleware.gzip.GZipMiddleware",
    "starlette.middleware.exceptions.ExceptionMiddleware",
    "fastapi.middleware.asyncexitstack.AsyncExitStackMiddleware",
]


class Builder:
    """Collects stages (times in ms, like a person reads them) and builds a `Timeline`:
    self times, the per-kind summary and the schema fields are derived as the pipeline does."""

    def __init__(self, **fields: Any) -> None:
        self.fields: dict[str, Any] = {
            "schema": "stagetrace/timeline@2",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
            "request_id": "0af7651916cd43dd8448eb211c80319c",
            "service": "bookshop",
            "framework": "django",
            "protocol": "http",
            "method": "GET",
            "path": "/",
            "route": None,
            "status": 200,
            "start_unix_nano": 1764000000000000000,
            "findings": [],
            "dropped_stages": 0,
        }
        self.fields.update(fields)
        self.stages: list[dict[str, Any]] = []

    def add(
        self,
        kind: str,
        name: str,
        start: float,
        dur: float,
        parent: int | None = None,
        *,
        attrs: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
        phases: tuple[float, float] | None = None,
        short_circuit: bool = False,
    ) -> int:
        sid = len(self.stages)
        st: dict[str, Any] = {
            "id": sid,
            "parent": parent,
            "kind": kind,
            "name": name,
            "start_ns": round(start * MS),
            "duration_ns": round(dur * MS),
            "self_ns": 0,
            "attrs": attrs or {},
            "error": None if error is None else {"type": error[0], "message": error[1]},
        }
        if kind == "middleware":
            p_in, p_out = phases or (dur, 0.0)
            st["phases"] = {"in": round(p_in * MS), "out": round(p_out * MS)}
            st["short_circuit"] = short_circuit
        self.stages.append(st)
        return sid

    def chain(
        self, names: list[str], start: float, end: float, parent: int, step: float = 0.02
    ) -> int:
        """A middleware chain, each layer nested in the previous; returns the innermost id."""
        for i, name in enumerate(names):
            s, e = start + i * step, end - i * step * 0.5
            parent = self.add("middleware", name, s, e - s, parent, phases=(step * 0.8, step * 0.4))
        return parent

    def build(self, findings: list[dict[str, Any]] | None = None) -> Timeline:
        children: dict[int, int] = {}
        for st in self.stages:
            if st["parent"] is not None:
                children[st["parent"]] = children.get(st["parent"], 0) + st["duration_ns"]
        by_kind: dict[str, dict[str, int]] = {}
        for st in self.stages:
            st["self_ns"] = max(0, st["duration_ns"] - children.get(st["id"], 0))
            k = by_kind.setdefault(st["kind"], {"count": 0, "total_ns": 0, "self_ns": 0})
            k["count"] += 1
            k["total_ns"] += st["duration_ns"]
            k["self_ns"] += st["self_ns"]
        root = self.stages[0]
        data = {
            **self.fields,
            "duration_ns": root["duration_ns"],
            "stages": self.stages,
            "summary": {"by_kind": by_kind},
        }
        if findings is not None:
            data["findings"] = findings
        return Timeline.from_dict(data)


def _sql_attrs(text: str, rows: int, **more: Any) -> dict[str, Any]:
    return {
        "db.system.name": "postgresql",
        "db.namespace": "bookshop",
        "stagetrace.db.alias": "default",
        "db.operation.name": text.split()[0],
        "db.query.text": text,
        "db.response.returned_rows": rows,
        **more,
    }


BOOKS_SQL = (
    'SELECT "shop_book"."id", "shop_book"."title", "shop_book"."publisher_id",\n'
    '       "shop_book"."year", "shop_book"."price"\n'
    '  FROM "shop_book"\n ORDER BY "shop_book"."title" ASC'
)
PUBLISHER_SQL = (
    'SELECT "shop_publisher"."id", "shop_publisher"."name", "shop_publisher"."country" '
    'FROM "shop_publisher" WHERE "shop_publisher"."id" = %s LIMIT 21'
)


def n_plus_one(repeats: int = 30) -> Timeline:
    """A Django template view listing books with each book's publisher: one query for the books,
    then `repeats` orm.fetch → (orm.compile, db.query) subtrees, one per book (the N+1)."""
    b = Builder(path="/books/by-publisher/", route="books/by-publisher/")
    per = 1.35
    total = 14.0 + repeats * per
    gw = b.add(
        "gateway",
        "WSGI",
        0,
        total,
        attrs={"http.request.method": "GET", "http.response.status_code": 200},
    )
    inner = b.chain(DJANGO_MIDDLEWARE, 0.05, total - 0.3, gw)
    b.add("route", "books/by-publisher/", 0.25, 0.08, inner, attrs={"http.route": "books/"})
    b.add(
        "middleware",
        "django.middleware.csrf.CsrfViewMiddleware.process_view",
        0.34,
        0.01,
        inner,
        phases=(0.01, 0),
    )
    view = b.add("view", "shop.views.books_by_publisher", 0.36, total - 1.2, inner)
    fetch = b.add("orm.fetch", "shop.Book", 0.4, 3.1, view, attrs={"rows": repeats})
    b.add("orm.compile", "SELECT shop.Book", 0.42, 0.35, fetch)
    b.add("db.connect", "default", 0.8, 1.1, fetch, attrs={"db.system.name": "postgresql"})
    b.add("db.query", "SELECT shop_book", 1.95, 1.4, fetch, attrs=_sql_attrs(BOOKS_SQL, repeats))
    page = b.add("template", "shop/books_by_publisher.html", 3.6, total - 4.6, view)
    base = b.add("template", "shop/base.html", 3.7, total - 4.8, page)
    b.add("template", "shop/_nav.html", 3.75, 0.05, base)
    queries = []
    t = 4.0
    for i in range(repeats):
        f = b.add("orm.fetch", "shop.Publisher", t, per - 0.15, base, attrs={"rows": 1})
        b.add("orm.compile", "SELECT shop.Publisher", t + 0.02, 0.55, f)
        extra: dict[str, Any] = {}
        if i == 1:
            extra = {
                "code.file.path": "shop/templates/shop/books_by_publisher.html",
                "code.line.number": 12,
                "code.function.name": "render",
            }
        elif i >= 5 and i % 5 == 0:
            extra = {"stagetrace.duplicate_of": 0}
        q = b.add(
            "db.query",
            "SELECT shop_publisher",
            t + 0.6,
            0.45,
            f,
            attrs=_sql_attrs(PUBLISHER_SQL, 1, **extra),
        )
        queries.append(q)
        t += per
    b.add("response.write", "body", total - 0.25, 0.2, gw, attrs={"http.response.body.size": 9312})
    # the ids of the repeated query stages, as the analyzer reports them
    finding = {
        "kind": "n_plus_one",
        "message": f"{repeats} similar queries (SELECT … FROM shop_publisher WHERE id = %s) "
        "under shop.views.books_by_publisher, from shop/books_by_publisher.html:12",
        "stages": queries,
        "attrs": {"count": repeats},
    }
    return b.build([finding])


def django_404() -> Timeline:
    """A Django 404: the view raises Http404 from get_object_or_404; Django renders the 404
    page inside the innermost middleware."""
    b = Builder(
        path="/publishers/999/",
        route="publishers/<int:pk>/",
        status=404,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        request_id="req-9c1e",
    )
    gw = b.add(
        "gateway",
        "WSGI",
        0,
        4.2,
        attrs={"http.request.method": "GET", "http.response.status_code": 404},
    )
    names = [*DJANGO_MIDDLEWARE[:5], "django.middleware.locale.LocaleMiddleware"]
    names += DJANGO_MIDDLEWARE[5:]
    inner = b.chain(names, 0.05, 4.0, gw)
    b.add("route", "publishers/<int:pk>/", 0.3, 0.07, inner)
    b.add(
        "middleware",
        "django.middleware.csrf.CsrfViewMiddleware.process_view",
        0.38,
        0.01,
        inner,
        phases=(0.01, 0),
    )
    view = b.add(
        "view",
        "shop.views.PublisherDetailView.get",
        0.4,
        1.3,
        inner,
        error=("django.http.response.Http404", "No Publisher matches the given query."),
    )
    fetch = b.add("orm.fetch", "shop.Publisher", 0.45, 1.1, view, attrs={"rows": 0})
    b.add("orm.compile", "SELECT shop.Publisher", 0.47, 0.3, fetch)
    b.add("db.query", "SELECT shop_publisher", 0.8, 0.6, fetch, attrs=_sql_attrs(PUBLISHER_SQL, 0))
    b.add("template", "404.html", 1.9, 1.6, inner, attrs={"template.engine": "django"})
    b.add("response.write", "body", 4.05, 0.1, gw)
    return b.build()


def starlette_500() -> Timeline:
    """A FastAPI endpoint raising RuntimeError: the error passes out through every middleware
    until ServerErrorMiddleware turns it into a 500, so every layer carries it."""
    b = Builder(
        framework="fastapi",
        path="/api/v1/orders/42/refunds",
        route="/api/v1/orders/{order_id}/refunds",
        method="POST",
        status=500,
    )
    err = ("RuntimeError", "payment gateway returned an unexpected response")
    gw = b.add("gateway", "ASGI", 0, 31.0, attrs={"http.response.sent_ns": 30_800_000})
    parent = gw
    for i, name in enumerate(STARLETTE_MIDDLEWARE):
        parent = b.add(
            "middleware",
            name,
            0.05 + i * 0.05,
            30.5 - i * 0.1,
            parent,
            error=err if i > 0 else None,
            phases=(0.03, 0.4 if i == 0 else 0.01),
        )
    b.add("route", "/api/v1/orders/{order_id}/refunds", 0.4, 0.05, parent)
    view = b.add("view", "app.api.refunds.create_refund", 0.5, 29.8, parent, error=err)
    deps = b.add("view", "dependencies", 0.55, 0.8, view)
    b.add("serialize", "validate request body", 0.6, 0.2, deps)
    b.add(
        "cache",
        "default.get",
        1.4,
        0.3,
        view,
        attrs={"cache.operation": "get", "cache.hit": False},
    )
    b.add(
        "http.client",
        "POST payments.example.com",
        1.8,
        28.0,
        view,
        attrs={
            "http.request.method": "POST",
            "server.address": "payments.example.com",
            "server.port": 443,
            "url.scheme": "https",
            "url.path": "/v2/refunds",
            "url.query": "idempotency_key",
            "http.response.status_code": 502,
        },
    )
    b.add("response.write", "body", 30.6, 0.2, gw)
    return b.build()


def background_task() -> Timeline:
    """FastAPI: a POST whose response was sent at 2 ms, then a 50 ms background task."""
    b = Builder(
        framework="fastapi",
        path="/orders",
        route="/orders",
        method="POST",
        status=201,
        request_id="order-5531",
    )
    gw = b.add(
        "gateway",
        "ASGI",
        0,
        53.1,
        attrs={"http.response.sent_ns": 2_000_000, "stagetrace.queue_time_ns": 1_200_000},
    )
    mw = b.add(
        "middleware",
        "starlette.middleware.errors.ServerErrorMiddleware",
        0.03,
        52.9,
        gw,
        phases=(0.02, 0.01),
    )
    b.add("route", "/orders", 0.1, 0.05, mw)
    view = b.add("view", "app.create_order", 0.2, 1.2, mw)
    tx = b.add("transaction", "atomic", 0.3, 0.9, view, attrs={"outcome": "commit"})
    b.add(
        "db.query",
        "INSERT shop_order",
        0.35,
        0.5,
        tx,
        attrs=_sql_attrs('INSERT INTO "shop_order" ("item_id", "quantity") VALUES (%s, %s)', 1),
    )
    b.add("cache", "default.get_many", 1.25, 0.1, view, attrs={"cache.hits": 2, "cache.keys": 3})
    b.add("response.write", "body", 1.5, 0.45, mw)
    b.add("task", "app.tasks.send_receipt", 2.1, 51.0, mw)
    return b.build()


def deep_nesting(depth: int = 24) -> Timeline:
    """A job with `depth` nested custom stages whose names are long dotted paths."""
    b = Builder(framework="python", protocol="job", method=None, path=None, status=None)
    parent = b.add("task", "reports.nightly.build_monthly_statements", 0, 100.0)
    for i in range(depth):
        parent = b.add(
            "custom",
            f"reports.pipeline.stages.level{i:02d}.StatementSectionRenderer.render_section",
            1 + i,
            98.0 - 2 * i,
            parent,
        )
    b.add(
        "db.query",
        "SELECT ledger_entry",
        30,
        40,
        parent,
        attrs=_sql_attrs(
            'SELECT * FROM "ledger_entry" WHERE "account_id" = %s AND "posted" >= %s', 18234
        ),
        error=("psycopg.errors.QueryCanceled", "canceling statement due to statement timeout"),
    )
    return b.build()


def all_examples() -> dict[str, Timeline]:
    """Every example, by the name its golden files carry."""
    return {
        "n-plus-one": n_plus_one(),
        "django-404": django_404(),
        "starlette-500": starlette_500(),
        "background-task": background_task(),
        "deep": deep_nesting(),
    }
