"""What the OpenTelemetry context hook (option ``otel_context``) costs a request, side by side
with the hook off.

    .venv/bin/python benchmarks/otel_context_cost.py

Measures, best of several rounds (µs):

* a bare recorded request (gateway begin/release/end with 10 stages), hook off and on;
* asking for the current span once inside a stage (what another instrumentation does);
* the per-stage alternative: one OpenTelemetry ``context.attach``/``detach`` pair per stage;
* a Django test-client request to a view running one query (nobody asks for the span), hook off and on.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def best(fn: Callable[[], None], n: int, rounds: int = 7) -> float:
    """Best per-call time in µs over `rounds` rounds of `n` calls."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return min(times)


def bare(otel_context: bool) -> float:
    import stagetrace
    from stagetrace import _recorder
    from stagetrace._http import gateway

    stagetrace.reset()
    stagetrace.configure(otel_context=otel_context, sinks=[])
    cfg = stagetrace.settings()
    req = gateway.Request("GET", "/x", None, "http", {"host": "h"})

    def one() -> None:
        root = gateway.begin_http(cfg, "bench", req, framework="custom")
        for _ in range(10):
            _recorder.exit(_recorder.enter("custom", "s"))
        gateway.release(root)
        gateway.end_http(root, 200)

    return best(one, 5000)


def ask_current_span() -> float:
    from opentelemetry import trace

    import stagetrace
    from stagetrace import _recorder
    from stagetrace._http import gateway

    stagetrace.reset()
    stagetrace.configure(otel_context=True, sinks=[])
    cfg = stagetrace.settings()
    req = gateway.Request("GET", "/x", None, "http", {"host": "h"})
    root = gateway.begin_http(cfg, "bench", req, framework="custom")
    rec = _recorder.enter("db.query", "q")
    get = trace.get_current_span
    cost = best(lambda: get().get_span_context(), 20000)
    _recorder.exit(rec)
    gateway.release(root)
    gateway.end_http(root, 200)
    return cost


def attach_per_stage() -> float:
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    sc = SpanContext(1, 2, False)

    def one() -> None:
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(sc)))
        context.detach(token)

    return best(one, 20000)


def django_request(otel_context: bool) -> float:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")
    import django

    django.setup()
    from django.test import Client, override_settings

    import stagetrace
    from stagetrace.django._install import load_settings

    stagetrace.reset()
    load_settings()
    stagetrace.configure(otel_context=otel_context, sinks=[])
    client = Client()
    with override_settings(ROOT_URLCONF="tests.otel.test_coexist"):
        client.get("/sqlite/")
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(300):
                client.get("/sqlite/")
            samples.append((time.perf_counter() - t0) / 300 * 1e6)
    return statistics.median(samples)


def main() -> None:
    off = min(bare(False) for _ in range(3))
    on = min(bare(True) for _ in range(3))
    print(f"bare request, 10 stages:      off {off:6.2f} µs   on {on:6.2f} µs   (+{on - off:.2f})")
    print(f"current span asked once:      {ask_current_span():6.2f} µs")
    print(f"attach+detach per stage:      {attach_per_stage():6.2f} µs (× stages, not used)")
    doff = min(django_request(False) for _ in range(2))
    don = min(django_request(True) for _ in range(2))
    print(
        f"Django request (1 query):     off {doff:6.1f} µs   on {don:6.1f} µs   (+{don - doff:.1f})"
    )


if __name__ == "__main__":
    main()
