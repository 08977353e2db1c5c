#!/usr/bin/env python
"""Added cost per query of stagetrace.sqlalchemy and stagetrace.dbapi, side by side.

    python benchmarks/sql_overhead.py [--rounds 25] [--block 200] [--pg]
    python benchmarks/sql_overhead.py --instructions      # needs valgrind

Each workload runs blocks of queries in three modes, interleaved round by round, in one
process: ``off`` (not instrumented), ``idle`` (instrumented, outside any timeline: what every
query pays when the request is not recorded) and ``on`` (instrumented, inside a timeline; no
sink, no analyzers — the request-path cost only; a new timeline per block keeps it under
``max_stages``). Reported: the median time per query of each mode and the added cost of
``idle`` and ``on`` against ``off``. Workloads: sqlite3 used directly (``stagetrace.dbapi``);
SQLAlchemy Core and ORM on in-memory SQLite (``stagetrace.sqlalchemy``, with the sqlite3
driver underneath instrumented as well, as in an app that turns both on); with ``--pg``, the
ORM through asyncpg on PostgreSQL 127.0.0.1:5432 (database ``test``). Wall-clock medians are at
the mercy of other load on the machine; ``--instructions`` counts instructions per query with
valgrind's callgrind instead (each mode and workload in its own process, 50 and 250 queries,
the difference over 200 queries).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import stagetrace
import stagetrace.dbapi
import stagetrace.sqlalchemy

MODES = ("off", "idle", "on")


def set_mode(mode: str) -> None:
    if mode == "off":
        stagetrace.sqlalchemy.uninstrument()
        stagetrace.dbapi.uninstrument()
    else:
        stagetrace.sqlalchemy.instrument()
        stagetrace.dbapi.instrument()


def sync_block(mode: str, n: int, setup: Callable[[], Any], query: Callable[[Any], Any]) -> float:
    """Seconds per query for `n` calls of ``query(state)``."""
    set_mode(mode)
    state = setup()
    if mode == "on":
        with stagetrace.timeline("bench"):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                query(state)
            t1 = time.perf_counter_ns()
    else:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            query(state)
        t1 = time.perf_counter_ns()
    return (t1 - t0) / n


def raw_sqlite() -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    conns: dict[bool, Any] = {}

    def setup() -> Any:
        # a connection made in this mode (instrumented ones are of the traced subclass)
        key = stagetrace.dbapi.is_instrumented()
        if key not in conns:
            conn = sqlite3.connect(":memory:")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
            conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(100)])
            conns[key] = conn
        return conns[key]

    def query(conn: Any) -> Any:
        return conn.execute("SELECT name FROM t WHERE id = ?", (7,)).fetchall()

    return setup, query


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def sqlalchemy_workloads() -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
    engines: dict[bool, Any] = {}

    def engine() -> Any:
        key = stagetrace.dbapi.is_instrumented()
        if key not in engines:
            eng = create_engine("sqlite://")
            Base.metadata.create_all(eng)
            with Session(eng) as s:
                s.add_all(Item(id=i, name=f"n{i}") for i in range(1, 101))
                s.commit()
            engines[key] = eng
        return engines[key]

    stmt = select(Item.__table__.c.name).where(Item.__table__.c.id == 7)

    def core_setup() -> Any:
        return engine().connect()

    def core_query(conn: Any) -> Any:
        return conn.execute(stmt).fetchall()

    def orm_setup() -> Any:
        return Session(engine())

    def orm_query(session: Any) -> Any:
        return session.scalars(select(Item).where(Item.id == 7)).all()

    return {
        "SQLAlchemy Core, SQLite": (core_setup, core_query),
        "SQLAlchemy ORM, SQLite": (orm_setup, orm_query),
    }


def asyncpg_orm(rounds: int, n: int) -> dict[str, list[float]]:
    from sqlalchemy import select, text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def main() -> dict[str, list[float]]:
        eng = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/test")
        async with eng.begin() as conn:
            await conn.execute(text("CREATE TEMP TABLE IF NOT EXISTS bench_pg (id int)"))
        out: dict[str, list[float]] = {m: [] for m in MODES}
        stmt = select(text("1"))
        for _ in range(rounds):
            for mode in MODES:
                set_mode(mode)
                async with AsyncSession(eng) as s:
                    await s.execute(stmt)
                    if mode == "on":
                        async with stagetrace.timeline("bench"):
                            t0 = time.perf_counter_ns()
                            for _ in range(n):
                                await s.execute(stmt)
                            t1 = time.perf_counter_ns()
                    else:
                        t0 = time.perf_counter_ns()
                        for _ in range(n):
                            await s.execute(stmt)
                        t1 = time.perf_counter_ns()
                out[mode].append((t1 - t0) / n)
        await eng.dispose()
        return out

    return asyncio.run(main())


def report(name: str, samples: dict[str, list[float]]) -> None:
    med = {m: statistics.median(samples[m]) for m in MODES}
    print(
        f"{name:34s} {med['off'] / 1000:8.2f} {med['idle'] / 1000:8.2f} {med['on'] / 1000:8.2f}"
        f" {(med['idle'] - med['off']) / 1000:+9.2f} {(med['on'] - med['off']) / 1000:+9.2f}"
        f" {med['on'] / med['off']:7.2f}x"
    )


def all_workloads() -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
    return {"sqlite3 (DB-API), direct": raw_sqlite(), **sqlalchemy_workloads()}


def child(workload: str, mode: str, n: int) -> None:
    stagetrace.configure(analyzers=[], sinks=[])
    setup, query = all_workloads()[workload]
    sync_block(mode, 20, setup, query)  # warm-up: the same in every run
    sync_block(mode, n, setup, query)


def instructions() -> None:
    def count(workload: str, mode: str, n: int) -> int:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--child",
                workload,
                mode,
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        ).stderr
        found = re.search(r"Collected : (\d+)", out)
        assert found is not None, out[-2000:]
        return int(found.group(1))

    print("instructions per query (callgrind)\n")
    print(
        f"{'workload':34s} {'off':>9s} {'idle':>9s} {'on':>9s} {'idle-off':>9s} {'on-off':>9s}"
        f" {'on/off':>8s}"
    )
    for workload in all_workloads():
        per = {m: (count(workload, m, 250) - count(workload, m, 50)) / 200 for m in MODES}
        print(
            f"{workload:34s} {per['off']:9.0f} {per['idle']:9.0f} {per['on']:9.0f}"
            f" {per['idle'] - per['off']:+9.0f} {per['on'] - per['off']:+9.0f}"
            f" {per['on'] / per['off']:7.2f}x"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if "--instructions" in sys.argv:
        instructions()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--pg", action="store_true", help="also the ORM on PostgreSQL (asyncpg)")
    args = parser.parse_args()
    stagetrace.configure(analyzers=[], sinks=[])
    workloads = all_workloads()
    print(f"per query, median of {args.rounds} interleaved blocks of {args.block} (µs)\n")
    print(
        f"{'workload':34s} {'off':>8s} {'idle':>8s} {'on':>8s} {'idle-off':>9s} {'on-off':>9s}"
        f" {'on/off':>8s}"
    )
    for name, (setup, query) in workloads.items():
        samples: dict[str, list[float]] = {m: [] for m in MODES}
        for mode in MODES:  # warm-up: connections, compiled cache, code paths
            sync_block(mode, args.block, setup, query)
        for _ in range(args.rounds):
            for mode in MODES:
                samples[mode].append(sync_block(mode, args.block, setup, query))
        report(name, samples)
    if args.pg:
        report("SQLAlchemy ORM async, asyncpg", asyncpg_orm(args.rounds, args.block))
    set_mode("off")


if __name__ == "__main__":
    main()
