#!/usr/bin/env python
"""Added cost per request of the Starlette/FastAPI adapter, for the FastAPI example's endpoints.

    python benchmarks/asgi_overhead.py [--rounds 15] [--block 40]
    python benchmarks/asgi_overhead.py --instructions      # needs valgrind

Requests are driven straight into the ASGI app in-process (no server, no test client), so the
difference is stagetrace's alone: ``off`` (not instrumented; the middleware stack built without
it) against ``on`` (instrumented, no sink). CPU time is measured per block of requests,
interleaved; ``--instructions`` counts instructions with valgrind's callgrind instead —
unaffected by other load (each mode runs 10 and 50 requests in its own process, with a fixed
hash seed; the difference over 40 requests is the per-request count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fastapi_app"
REQUESTS = [
    ("GET", "/items/3", None),
    ("GET", "/items?limit=10", None),
    ("GET", "/page", None),
    ("POST", "/orders", {"item_id": 1}),
]


def load_app(mode: str):
    for key in [k for k in os.environ if k.startswith("STAGETRACE_")]:
        del os.environ[key]
    sys.path.insert(0, str(EXAMPLE))
    import app as example  # instruments at import

    import stagetrace.starlette

    if mode == "off":
        stagetrace.starlette.uninstrument()
    example.app.middleware_stack = None
    example.send_receipt.__code__ = (lambda order_id: None).__code__  # no sleeping task
    return example.app


def driver(app):
    async def lifespan() -> None:
        queue = [{"type": "lifespan.startup"}]

        async def receive():
            return queue.pop(0) if queue else await asyncio.sleep(3600)

        async def send(message):
            pass

        task = asyncio.ensure_future(
            app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        )
        await asyncio.sleep(0.01)
        task.cancel()

    async def one(method: str, path: str, body) -> None:
        raw = json.dumps(body).encode() if body is not None else b""
        path_only, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path_only,
            "raw_path": path_only.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "client": ("127.0.0.1", 1),
            "server": ("bench", 80),
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
            ],
        }
        messages = [{"type": "http.request", "body": raw}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            pass

        await app(scope, receive, send)

    return lifespan, one


def child(mode: str, index: int, n: int) -> None:
    app = load_app(mode)
    lifespan, one = driver(app)
    method, path, body = REQUESTS[index]

    async def main() -> None:
        await lifespan()
        for _ in range(n + 1):
            await one(method, path, body)

    asyncio.run(main())


def instructions() -> None:
    def count(mode: str, index: int, n: int) -> int:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--child",
                mode,
                str(index),
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # same dict layouts in every run
        ).stderr
        return int(re.search(r"Collected : (\d+)", out).group(1))

    print("instructions per request (callgrind), FastAPI example, in-process ASGI\n")
    print(f"{'request':22s} {'off':>11s} {'on':>11s} {'added':>9s} {'added %':>8s}")
    for i, (method, path, _) in enumerate(REQUESTS):
        per = {m: (count(m, i, 50) - count(m, i, 10)) / 40 for m in ("off", "on")}
        added = per["on"] - per["off"]
        print(
            f"{method + ' ' + path:22s} {per['off']:11,.0f} {per['on']:11,.0f} {added:9,.0f} "
            f"{100 * added / per['off']:7.1f}%"
        )


def cpu_time(rounds: int, block: int) -> None:
    import stagetrace
    import stagetrace.starlette

    app = load_app("on")
    lifespan, one = driver(app)

    async def run() -> dict[tuple[str, int], list[float]]:
        await lifespan()
        samples: dict[tuple[str, int], list[float]] = {}
        stages = {}
        for i, (method, path, body) in enumerate(REQUESTS):
            with stagetrace.capture() as got:
                await one(method, path, body)
            stages[i] = len(got[0].stages)
        for _ in range(rounds):
            for mode in ("off", "on"):
                if mode == "off":
                    stagetrace.starlette.uninstrument()
                else:
                    stagetrace.starlette.instrument()
                app.middleware_stack = None
                for i, (method, path, body) in enumerate(REQUESTS):
                    await one(method, path, body)  # (re)build the stack outside the timing
                    t0 = time.thread_time_ns()
                    for _ in range(block):
                        await one(method, path, body)
                    samples.setdefault((mode, i), []).append((time.thread_time_ns() - t0) / block)
        samples["stages"] = [stages[i] for i in range(len(REQUESTS))]  # type: ignore[index]
        return samples

    samples = asyncio.run(run())
    stages = samples.pop("stages")  # type: ignore[call-overload]
    print(f"CPU µs per request (thread time), median of {rounds} rounds of {block}\n")
    print(f"{'request':22s} {'stages':>6s} {'off':>9s} {'on':>9s} {'added':>8s} {'/stage':>7s}")
    for i, (method, path, _) in enumerate(REQUESTS):
        off = statistics.median(samples["off", i]) / 1000
        on = statistics.median(samples["on", i]) / 1000
        print(
            f"{method + ' ' + path:22s} {stages[i]:6d} {off:9.1f} {on:9.1f} {on - off:8.1f} "
            f"{(on - off) / stages[i]:7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=40)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "INDEX", "N"))
    args = parser.parse_args()
    if args.child:
        mode, index, n = args.child
        child(mode, int(index), int(n))
    elif args.instructions:
        instructions()
    else:
        cpu_time(args.rounds, args.block)


if __name__ == "__main__":
    main()
