"""FastAPI over plain sqlite3 (no ORM): the queries are stages too, N+1 included.

Run it (from the repository root; the database is created and filled at start-up):

    pip install -e '.[starlette]' fastapi uvicorn
    STAGETRACE_SINKS=console uvicorn --app-dir examples/fastapi_sqlite3 app:app

then open http://127.0.0.1:8000/orders/n-plus-one and http://127.0.0.1:8000/orders (the fix).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from typing import Annotated

import stagetrace.dbapi
import stagetrace.starlette

stagetrace.starlette.instrument()
stagetrace.dbapi.instrument()  # sqlite3, psycopg and asyncpg, wherever they are used

from fastapi import Depends, FastAPI  # noqa: E402

DATABASE = os.environ.get("SQLITE_DATABASE", "./fastapi_sqlite3.db")


def seed() -> None:
    with sqlite3.connect(DATABASE) as conn:
        conn.executescript(
            """
            DROP TABLE IF EXISTS example_line;
            DROP TABLE IF EXISTS example_order;
            CREATE TABLE example_order (id INTEGER PRIMARY KEY, customer TEXT);
            CREATE TABLE example_line (id INTEGER PRIMARY KEY, order_id INTEGER, item TEXT);
            """
        )
        conn.executemany(
            "INSERT INTO example_order (id, customer) VALUES (?, ?)",
            [(i, f"customer {i}") for i in range(1, 9)],
        )
        conn.executemany(
            "INSERT INTO example_line (order_id, item) VALUES (?, ?)",
            [(i, f"item {i}.{j}") for i in range(1, 9) for j in range(3)],
        )
    conn.close()


seed()
app = FastAPI(title="stagetrace FastAPI + sqlite3 example")


def get_db() -> Iterator[sqlite3.Connection]:
    """A connection per request (opened in the dependency: a db.connect stage)."""
    conn = sqlite3.connect(DATABASE, check_same_thread=False)
    try:
        yield conn
    finally:
        conn.close()


Db = Annotated[sqlite3.Connection, Depends(get_db)]


@app.get("/orders/n-plus-one")
def orders_n_plus_one(db: Db) -> list[dict[str, object]]:
    """One query for the orders, then one more per order: the N+1 pattern."""
    orders = db.execute("SELECT id, customer FROM example_order ORDER BY id").fetchall()
    out = []
    for order_id, customer in orders:
        lines = db.execute("SELECT item FROM example_line WHERE order_id = ?", (order_id,))
        out.append({"customer": customer, "items": [item for (item,) in lines.fetchall()]})
    return out


@app.get("/orders")
def orders(db: Db) -> list[dict[str, object]]:
    """The fix: one query with a join."""
    rows = db.execute(
        "SELECT o.id, o.customer, l.item FROM example_order o"
        " JOIN example_line l ON l.order_id = o.id ORDER BY o.id, l.id"
    ).fetchall()
    customers: dict[int, str] = {}
    items: dict[int, list[str]] = {}
    for order_id, customer, item in rows:
        customers[order_id] = customer
        items.setdefault(order_id, []).append(item)
    return [{"customer": customers[i], "items": items[i]} for i in customers]
