"""What recording one stage costs, next to one OpenTelemetry SDK span, in one run."""

from __future__ import annotations

import pytest

import stagetrace
from stagetrace import _recorder

from .conftest import BATCH


@pytest.fixture
def live():
    """A timeline open in the current context, with the cap lifted, emptied between rounds."""
    stagetrace.reset()
    stagetrace.configure(max_stages=10**9)
    root = _recorder.begin("bench", framework="bench")
    tl = root[_recorder.TL]
    yield tl
    _recorder.end(root)
    stagetrace.reset()


def test_adapter_enter_exit(per_item, live):
    """The path adapters use for every stage: enter() + exit()."""
    enter, leave = _recorder.enter, _recorder.exit

    def run():
        for _ in range(BATCH):
            leave(enter("db.query", "SELECT"))
        del live[1:]

    per_item("adapter enter/exit", run)


def test_middleware_in_out(per_item, live):
    """A middleware stage with its in/out split: enter, inner begin/end, exit."""
    enter, leave = _recorder.enter_middleware, _recorder.exit
    ib, ie = _recorder.inner_begin, _recorder.inner_end

    def run():
        for _ in range(BATCH):
            rec = enter("app.Middleware")
            ib(rec)
            ie(rec)
            leave(rec)
        del live[1:]

    per_item("middleware in/out", run)


def test_with_stage(per_item, live):
    """The public context manager, including building the stage definition."""
    stage = stagetrace.stage

    def run():
        for _ in range(BATCH):
            with stage("step"):
                pass
        del live[1:]

    per_item("with stage()", run)


def test_with_stage_attrs(per_item, live):
    """The public context manager with attributes (a new definition per use)."""
    stage = stagetrace.stage

    def run():
        for _ in range(BATCH):
            with stage("step", kind="custom", n=1):
                pass
        del live[1:]

    per_item("with stage(**attrs)", run)


def test_decorated_call(per_item, live):
    """Calling a function decorated with @stage (the call itself included)."""

    @stagetrace.stage("step")
    def step():
        return None

    def run():
        for _ in range(BATCH):
            step()
        del live[1:]

    per_item("@stage call", run)


def test_outside_a_timeline(per_item):
    """The cost when no timeline is recording (sampled out, disabled, background code)."""
    stagetrace.reset()
    stage = stagetrace.stage

    def run():
        for _ in range(BATCH):
            with stage("step"):
                pass

    per_item("with stage(), not recording", run)


def test_otel_sdk_span(per_item):
    """Baseline: create and end one OpenTelemetry SDK span (no processor, nothing exported)."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk.TracerProvider().get_tracer("bench")

    def run():
        for _ in range(BATCH):
            tracer.start_span("SELECT").end()

    per_item("otel sdk span", run, rounds=100)


def test_whole_timeline_without_consumers(per_item):
    """begin + end of a timeline with one stage and no sink: the per-request fixed cost."""
    stagetrace.reset()
    stagetrace.configure()
    begin, end = _recorder.begin, _recorder.end

    def run():
        for _ in range(BATCH):
            end(begin("GET /", framework="bench", method="GET", path="/"))

    per_item("begin+end timeline", run)
