#!/usr/bin/env python
"""Memory soak: resident memory of a process serving many requests with stagetrace on.

    python benchmarks/memory_soak.py [--requests 100000] [--sink memory|jsonl|none]

Serves the Django example's N+1 view (``/api/books/``, about 40 stages a request) in-process
through Django's WSGIHandler, with stagetrace recording into the chosen sink (``memory`` keeps
the last 100 timelines; ``jsonl`` writes every one to a temporary file; ``none`` records and
drops), and prints the process's resident memory (VmRSS) every tenth of the run, with
`stagetrace.stats()` at the end. What to look for: after the first tenth (imports, caches,
the memory sink filling up) the column stays flat — no growth with the number of requests.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from django_overhead import serve, setup_site


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--sink", choices=("memory", "jsonl", "none"), default="memory")
    parser.add_argument("--path", default="/api/books/")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stagetrace-soak-"))
    setup_site(str(tmp / "db.sqlite3"))
    from django.core.handlers.wsgi import WSGIHandler

    import stagetrace

    if args.sink == "memory":
        stagetrace.configure(sinks=["memory"], memory_size=100)
    elif args.sink == "jsonl":
        stagetrace.configure(sinks=["jsonl"], jsonl=str(tmp / "soak.jsonl"))
    else:
        stagetrace.configure(sinks=[])
    handler = WSGIHandler()
    step = max(1, args.requests // 10)
    print(f"{'requests':>10} {'RSS MiB':>9} {'s':>7}")
    t0 = time.perf_counter()
    for i in range(1, args.requests + 1):
        serve(handler, args.path)
        if i % step == 0:
            stagetrace.flush(timeout=30)
            gc.collect()
            print(f"{i:>10} {rss_kib() / 1024:>9.1f} {time.perf_counter() - t0:>7.1f}", flush=True)
    stats = stagetrace.stats()
    print("stats:", {k: v for k, v in stats.items() if v})


if __name__ == "__main__":
    main()
