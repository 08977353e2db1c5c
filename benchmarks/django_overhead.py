#!/usr/bin/env python
"""Added latency per request of the Django adapter, for the example site's views.

    python benchmarks/django_overhead.py [--rounds 15] [--block 40]
    python benchmarks/django_overhead.py --instructions      # needs valgrind

Serves each view in-process through Django's WSGIHandler (no network, so the difference is
stagetrace's alone) in three modes, interleaved in blocks so machine noise hits all alike:

* ``off``      — stagetrace not instrumented (the handler was built without it);
* ``on``       — instrumented, no sink: the cost on the request path;
* ``on+jsonl`` — instrumented, JSON lines sink: also the background worker freezing and
  writing every timeline, competing for the GIL in the same process.

Timing is CPU time, not wall time, so that other load on a shared machine does not count:
``request thread`` is the thread serving the requests (the request path), ``process`` adds the
background worker. Each figure is the median over rounds of the per-request mean of a block.
Prints the added CPU time per request and per recorded stage.

``--instructions`` counts instructions instead, with valgrind's callgrind: unaffected by other
load, so small differences are real (counts still move a few percent between runs). Each (view, mode) runs in its own
process twice, serving 10 and 50 requests with a fixed hash seed; the difference over 40
requests is the per-request count, setup cancelled out.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "examples" / "django_site"
VIEWS = ["/books/", "/api/books/", "/api/books/3/", "/authors/2/", "/export.csv"]


def setup_site(db: str) -> None:
    os.environ["BOOKSHOP_SQLITE"] = db
    os.environ["DJANGO_SETTINGS_MODULE"] = "bookshop.settings"
    for key in [k for k in os.environ if k.startswith("STAGETRACE_")]:
        del os.environ[key]
    sys.path.insert(0, str(SITE))
    import django

    django.setup()  # the app instruments Django here
    from django.core.management import call_command

    call_command("migrate", verbosity=0, stdout=io.StringIO())
    call_command("seed", stdout=io.StringIO())


def environ(path: str) -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def start_response(status, headers, exc_info=None):
    return lambda data: None


def serve(handler, path: str) -> None:
    response = handler(environ(path), start_response)
    for _ in response:
        pass
    response.close()


#: `--instructions --modes`: besides ``off`` and ``on`` (the site's own configuration).
CONFIGS: dict[str, dict] = {
    "record": {"sinks": []},
    "memory": {"sinks": ["memory"]},
    "excluded": {"sinks": ["memory"], "exclude_paths": ["^/"]},
    "sampled-out": {"sinks": ["memory"], "sample_rate": 0.0},
}


def child(mode: str, path: str, n: int, db: str) -> None:
    """Under callgrind: serve `n` requests of `path` with stagetrace on or off."""
    setup_site(db)
    from django.core.handlers.wsgi import WSGIHandler

    import stagetrace.django

    if mode == "off":
        stagetrace.django.uninstrument()
    elif mode in CONFIGS:
        import stagetrace

        stagetrace.configure(**CONFIGS[mode])
    handler = WSGIHandler()
    serve(handler, path)  # warm up (lazy imports, first connection)
    for _ in range(n):
        serve(handler, path)


def instructions(modes: list[str], views: list[str]) -> None:
    import re
    import subprocess

    db = str(Path(tempfile.mkdtemp(prefix="stagetrace-bench-")) / "db.sqlite3")
    subprocess.run([sys.executable, __file__, "--child", "setup", "/", "0", db], check=True)

    def count(mode: str, path: str, n: int) -> int:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--child",
                mode,
                path,
                str(n),
                db,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # same dict layouts in every run
        ).stderr
        return int(re.search(r"Collected : (\d+)", out).group(1))

    print("instructions per request (callgrind), in-process WSGI, SQLite\n")
    others = [m for m in modes if m != "off"]
    print(f"{'view':15s} {'off':>12s}" + "".join(f" {m + ' added':>20s}" for m in others))
    for path in views:
        per = {m: (count(m, path, 50) - count(m, path, 10)) / 40 for m in ["off", *others]}
        cells = "".join(
            f" {per[m] - per['off']:>11,.0f} {100 * (per[m] - per['off']) / per['off']:6.1f}%"
            for m in others
        )
        print(f"{path:15s} {per['off']:12,.0f}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=40)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument(
        "--modes",
        default="off,on",
        help=f"with --instructions: comma list of off, on, {', '.join(CONFIGS)}",
    )
    parser.add_argument("--views", default=",".join(VIEWS), help="comma list of paths")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "N", "DB"))
    args = parser.parse_args()
    if args.child:
        mode, path, n, db = args.child
        if mode == "setup":
            setup_site(db)
        else:
            child(mode, path, int(n), db)
        return
    if args.instructions:
        modes = args.modes.split(",")
        instructions(modes if "off" in modes else ["off", *modes], args.views.split(","))
        return

    tmp = tempfile.mkdtemp(prefix="stagetrace-bench-")
    setup_site(str(Path(tmp) / "db.sqlite3"))
    from django.core.handlers.wsgi import WSGIHandler

    import django
    import stagetrace
    import stagetrace.django

    handler_on = WSGIHandler()
    stagetrace.django.uninstrument()
    handler_off = WSGIHandler()
    stagetrace.django.instrument()

    one = serve

    def block(handler, path: str, n: int) -> tuple[float, float]:
        t0, p0 = time.thread_time_ns(), time.process_time_ns()
        for _ in range(n):
            one(handler, path)
        stagetrace.flush(30)  # the worker's share of this block lands in this block
        return (time.thread_time_ns() - t0) / n, (time.process_time_ns() - p0) / n

    jsonl = Path(tmp) / "timelines.jsonl"
    modes = {
        "off": (handler_off, lambda: stagetrace.django.uninstrument()),
        "on": (
            handler_on,
            lambda: (stagetrace.django.instrument(), stagetrace.configure(sinks=[])),
        ),
        "on+jsonl": (
            handler_on,
            lambda: (
                stagetrace.django.instrument(),
                stagetrace.configure(sinks=["jsonl"], jsonl=str(jsonl)),
            ),
        ),
    }
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {
        (m, v): [] for m in modes for v in VIEWS
    }
    stage_counts: dict[str, int] = {}
    for path in VIEWS:  # warm up, and count stages per view
        with stagetrace.capture() as got:
            one(handler_on, path)
        stage_counts[path] = len(got[0].stages)
        one(handler_off, path)
    for _ in range(args.rounds):
        for mode, (handler, prepare) in modes.items():
            prepare()
            for path in VIEWS:
                samples[mode, path].append(block(handler, path, args.block))
    stagetrace.django.instrument()

    print(
        f"Django {django.get_version()}, SQLite, in-process WSGI; CPU µs per request, median "
        f"of {args.rounds} rounds of {args.block} requests per view and mode, interleaved\n"
    )
    print(
        f"{'view':15s} {'stages':>6s} | {'request thread: off':>19s} {'on':>8s} {'added':>7s}"
        f" {'/stage':>7s} | {'process: off':>12s} {'on+jsonl':>9s} {'added':>7s}"
    )

    def med(mode: str, path: str, i: int) -> float:
        return statistics.median(x[i] for x in samples[mode, path]) / 1000

    for path in VIEWS:
        n = stage_counts[path]
        off, on = med("off", path, 0), med("on", path, 0)
        poff, pjs = med("off", path, 1), med("on+jsonl", path, 1)
        print(
            f"{path:15s} {n:6d} | {off:19.1f} {on:8.1f} {on - off:7.1f} {(on - off) / n:7.2f}"
            f" | {poff:12.1f} {pjs:9.1f} {pjs - poff:7.1f}"
        )


if __name__ == "__main__":
    main()
