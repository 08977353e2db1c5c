"""Budget checks for the benchmarks: per-stage medians and their ratio to an OpenTelemetry SDK
span, all measured in the same run. Run with:

    python -m pytest benchmarks --benchmark-enable

The session fails when a budget is exceeded (see BUDGET_NS and BUDGET_RATIO below).
"""

from __future__ import annotations

import pytest

#: Each benchmark records this many stages (or spans) per round.
BATCH = 100
#: A recorded stage must cost at most this much...
BUDGET_NS = 1000.0
#: ...and at most this fraction of creating and ending one OpenTelemetry SDK span.
BUDGET_RATIO = 0.10
#: The benchmarks held to the budget (the user-facing ones are reported, and held too).
BUDGETED = ("adapter enter/exit", "middleware in/out", "with stage()", "@stage call")

RESULTS: dict[str, float] = {}


@pytest.fixture
def per_item(benchmark, request):
    """Run `fn` (which does BATCH items) under pytest-benchmark and remember the median per
    item under the test's `label` marker."""

    def run(label: str, fn, rounds: int = 300):
        benchmark.group = "stagetrace vs OpenTelemetry, per stage"
        benchmark.name = label
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=20)
        RESULTS[label] = benchmark.stats.stats.median * 1e9 / BATCH

    return run


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    otel = RESULTS.get("otel sdk span")
    tr = terminalreporter
    tr.section("stagetrace per-stage cost (medians, same run)")
    for label, ns in RESULTS.items():
        ratio = f"{ns / otel:.3f}x otel span" if otel else ""
        tr.write_line(f"{label:28s} {ns:9.1f} ns   {ratio}")
    failures = _failures()
    for f in failures:
        tr.write_line(f"BUDGET EXCEEDED: {f}", red=True)
    if not failures and otel:
        tr.write_line(
            f"budget: <= {BUDGET_NS:.0f} ns and <= {BUDGET_RATIO}x otel span: met", green=True
        )


def _failures() -> list[str]:
    otel = RESULTS.get("otel sdk span")
    out = []
    for label in BUDGETED:
        ns = RESULTS.get(label)
        if ns is None:
            continue
        if ns > BUDGET_NS:
            out.append(f"{label}: {ns:.0f} ns > {BUDGET_NS:.0f} ns")
        if otel and ns > BUDGET_RATIO * otel:
            out.append(f"{label}: {ns / otel:.3f}x > {BUDGET_RATIO}x of an otel span")
    return out


def pytest_sessionfinish(session, exitstatus):
    if RESULTS and _failures() and exitstatus == 0:
        session.exitstatus = 1
