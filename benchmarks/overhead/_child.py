"""One configuration in its own interpreter, serving blocks of requests on command.

    python -m benchmarks.overhead._child --app django-sqlite --config none --reply-fd 5

Commands arrive as JSON lines on standard input; replies go as JSON lines to ``--reply-fd``
(standard output and error belong to the app and its tracer, and go to a log file):

* ``{"cmd": "block", "path": p, "n": n}`` — serve `n` requests of `p`, then flush the tracer.
  Reply: the wall time of each request (ns), the process CPU time of the block including the
  flush (all threads), the tracer's cumulative count of delivered spans/stages, and the
  garbage collector's time and collections per generation during the block.
* ``{"cmd": "memory", "path": p}`` — one request under tracemalloc (see `memory`).
* ``{"cmd": "exit"}``.

``--setup`` instead creates and seeds the database and exits.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True)
    parser.add_argument("--config", default="none")
    parser.add_argument("--reply-fd", type=int)
    parser.add_argument("--setup", action="store_true")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per endpoint")
    parser.add_argument("--min-warmup", type=int, default=20, help="requests per endpoint")
    parser.add_argument("--paths", help="comma-separated paths to serve instead of the app's")
    args = parser.parse_args()
    cpu = os.environ.get("BENCH_CPU")
    if cpu is not None:  # see _runner.PIN; the threads started later inherit it
        os.sched_setaffinity(0, {int(cpu)})

    from . import _apps, _tracers

    if args.setup:
        _apps.prepare_django_db()
        return

    reply_file = os.fdopen(args.reply_fd, "w", buffering=1)

    def reply(obj: dict[str, Any]) -> None:
        reply_file.write(json.dumps(obj) + "\n")

    framework = _apps.framework_of(args.app)
    try:
        tracer = _tracers.setup(framework, args.config)
        driver = _apps.make_driver(args.app, tracer)
    except _tracers.Unavailable as exc:
        reply({"unavailable": str(exc)})
        return
    except Exception as exc:
        traceback.print_exc()
        reply({"unavailable": f"set-up failed: {type(exc).__name__}: {exc}"})
        return

    endpoints = (
        args.paths.split(",") if args.paths else [path for _, path in _apps.ENDPOINTS[framework]]
    )
    try:
        recorded, kinds = warm_up(driver, tracer, endpoints, args.warmup, args.min_warmup)
    except Exception as exc:
        traceback.print_exc()
        reply({"unavailable": f"warm-up failed: {type(exc).__name__}: {exc}"})
        return
    reply(
        {
            "ready": True,
            "recorded": recorded,
            "kinds": kinds,
            "delivered": tracer.delivered(),
            "pid": os.getpid(),
        }
    )

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            break
        if cmd["cmd"] == "block":
            reply(block(driver, tracer, cmd["path"], cmd["n"]))
        elif cmd["cmd"] == "memory":
            reply(memory(driver, tracer, cmd["path"]))


def warm_up(
    driver: Any, tracer: Any, endpoints: list[str], seconds: float, minimum: int
) -> tuple[dict[str, int | None], dict[str, dict[str, int]]]:
    """Serve each endpoint for `seconds` (imports, caches, connections, the tracers' lazy
    set-up), flush; then, for stagetrace, capture one request of each to count its stages."""
    for path in endpoints:
        deadline = time.perf_counter() + seconds
        n = 0
        while n < minimum or time.perf_counter() < deadline:
            step = min(5, max(1, minimum - n))
            driver.run(path, step)
            n += step
    tracer.flush()
    recorded: dict[str, int | None] = {}
    kinds: dict[str, dict[str, int]] = {}
    if tracer.stagetrace_on:
        import stagetrace

        for path in endpoints:
            with stagetrace.capture() as got:
                driver.run(path, 1)
            recorded[path] = len(got[0].stages) if got else 0
            if got:
                kinds[path] = {k: s.count for k, s in got[0].by_kind.items()}
        tracer.flush()
    return recorded, kinds


class GcMeter:
    """Time and count the garbage collector's runs, in every thread (a ``gc.callbacks``
    entry: called twice per collection, not per allocation)."""

    def __init__(self) -> None:
        self.ns = 0
        self.collections = [0, 0, 0]
        self._start = 0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
        else:
            self.ns += time.perf_counter_ns() - self._start
            self.collections[info["generation"]] += 1


GC = GcMeter()


def block(driver: Any, tracer: Any, path: str, n: int) -> dict[str, Any]:
    gc_ns, collections = GC.ns, list(GC.collections)
    c0 = time.process_time_ns()
    lat = driver.run(path, n)
    tracer.flush()
    cpu = time.process_time_ns() - c0
    return {
        "lat": lat,
        "cpu": cpu,
        "delivered": tracer.delivered(),
        "gc_ns": GC.ns - gc_ns,
        "gc": [a - b for a, b in zip(GC.collections, collections, strict=True)],
    }


def memory(driver: Any, tracer: Any, path: str) -> dict[str, Any]:
    """Serve one request of `path` under tracemalloc: the memory still held after it was
    delivered (flush, then a full collection) and the peak during it, both above what was
    held before; and, for stagetrace, what the delivered timeline says."""
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        driver.run(path, 1)
        _, peak = tracemalloc.get_traced_memory()
        tracer.flush()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out: dict[str, Any] = {"retained": after - before, "peak": peak - before}
    if tracer.stagetrace_on:
        import stagetrace

        kept = stagetrace.recent()
        if kept:
            tl = kept[-1]
            out["timeline"] = {
                "stages": len(tl.stages),
                "dropped_stages": tl.dropped_stages,
                "by_kind": {k: s.count for k, s in tl.by_kind.items()},
                "kept_timelines": len(kept),
            }
    return out


if __name__ == "__main__":
    main()
