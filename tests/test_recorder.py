"""The recorder: nesting, timing, errors, middleware phases, the stage cap, isolation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import stagetrace
from stagetrace import _recorder

from .conftest import begin


def test_stages_nest_under_the_innermost_open_stage(captured):
    """A stage opened inside another becomes its child; siblings share a parent."""
    root = begin("GET /", framework="test", method="GET", path="/")
    a = _recorder.enter("view", "a")
    b = _recorder.enter("db.query", "b")
    _recorder.exit(b)
    c = _recorder.enter("template", "c")
    _recorder.exit(c)
    _recorder.exit(a)
    _recorder.end(root)
    (tl,) = captured
    assert [(s.kind, s.name, s.parent) for s in tl.stages] == [
        ("gateway", "GET /", None),
        ("view", "a", 0),
        ("db.query", "b", 1),
        ("template", "c", 1),
    ]
    assert tl.method == "GET" and tl.path == "/" and tl.framework == "test"
    assert tl.protocol == "http"


def test_self_time_is_duration_minus_children(captured):
    """self_ns subtracts the time of child stages; starts are offsets from the timeline start."""
    root = begin("job", framework="test")
    a = _recorder.enter("view", "a")
    time.sleep(0.004)
    b = _recorder.enter("db.query", "b")
    time.sleep(0.006)
    _recorder.exit(b)
    _recorder.exit(a)
    _recorder.end(root)
    (tl,) = captured
    view, query = tl.stages[1], tl.stages[2]
    assert query.duration_ns >= 6_000_000
    assert view.self_ns == view.duration_ns - query.duration_ns
    assert 4_000_000 <= view.self_ns < view.duration_ns
    assert query.start_ns >= view.start_ns + 4_000_000
    assert query.end_ns <= view.end_ns <= tl.duration_ns
    assert tl.stages[0].start_ns == 0


def test_error_is_recorded_on_the_stage_it_left(captured):
    """A stage closed with an exception carries its qualified type and message."""

    class Boom(Exception):
        pass

    root = begin("job", framework="test")
    rec = _recorder.enter("view", "v")
    _recorder.exit(rec, Boom("it broke"))
    rec = _recorder.enter("view", "w")
    _recorder.exit(rec, ValueError("x"))
    _recorder.end(root)
    (tl,) = captured
    assert tl.stages[1].error.type.endswith(
        "test_error_is_recorded_on_the_stage_it_left.<locals>.Boom"
    )
    assert tl.stages[1].error.message == "it broke"
    assert tl.stages[2].error.to_dict() == {"type": "ValueError", "message": "x"}
    assert tl.stages[0].error is None


def test_middleware_phases_split_at_the_inner_call(captured):
    """phases.in ends when the middleware calls the next layer; phases.out starts on return."""
    root = begin("GET /", framework="test")
    mw = _recorder.enter_middleware("app.Timing")
    time.sleep(0.003)
    _recorder.inner_begin(mw)
    inner = _recorder.enter("view", "v")
    time.sleep(0.002)
    _recorder.exit(inner)
    _recorder.inner_end(mw)
    time.sleep(0.005)
    _recorder.exit(mw)
    short = _recorder.enter_middleware("app.Cache")
    _recorder.exit(short)
    _recorder.end(root)
    (tl,) = captured
    m, v, s = tl.stages[1], tl.stages[2], tl.stages[3]
    assert m.kind == "middleware" and m.short_circuit is False
    # Lower bounds only (a loaded machine stretches sleeps): the sum below fails if either
    # phase took in the view's time, so the split point is checked without upper bounds.
    assert m.phases["in"] >= 3_000_000 and m.phases["out"] >= 5_000_000
    assert v.duration_ns >= 2_000_000
    assert m.phases["in"] + v.duration_ns + m.phases["out"] <= m.duration_ns
    assert v.parent == m.id
    assert s.short_circuit is True and s.phases == {"in": s.duration_ns, "out": 0}
    d = m.to_dict()
    assert d["phases"] == dict(m.phases) and d["short_circuit"] is False
    assert "phases" not in v.to_dict()


def _layer(inner):
    """A synchronous middleware as Django builds one: it gets its next layer at construction."""

    def middleware(request):
        time.sleep(0.002)
        response = inner(request)
        time.sleep(0.003)
        return response

    return middleware


def test_a_fused_middleware_frame_records_the_same_stage_as_enter_and_leave(captured):
    """`run_layer` with a `next_layer` handler records what `enter_middleware`, `inner_begin`,
    `inner_end` and `exit` record: the stage, its in/out split, the stages inside it, and the
    call's result passes through."""

    def view(request):
        v = _recorder.enter("view", "v")
        time.sleep(0.001)
        _recorder.exit(v)
        return ("response", request)

    name = "app.Timing"
    layer = _layer(_recorder.next_layer(view, name, "test.site"))
    root = begin("GET /", framework="test")
    assert _recorder.run_layer(name, layer, "req", "test.site") == ("response", "req")
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    m, v = tl.stages[1], tl.stages[2]
    assert (m.kind, m.name, m.parent, v.parent) == ("middleware", name, 0, m.id)
    assert m.short_circuit is False and m.error is None
    assert m.phases["in"] >= 2_000_000 and m.phases["out"] >= 3_000_000
    assert m.phases["in"] + v.duration_ns + m.phases["out"] <= m.duration_ns


def test_a_next_layer_handler_finds_its_middleware_under_a_stage_the_middleware_opened(
    captured,
):
    """A middleware that calls the next layer inside a stage of its own (a lock, a cache
    lookup) still gets its in/out split: the handler finds the middleware's stage above."""

    def view(request):
        return request

    name = "app.Locking"
    handler = _recorder.next_layer(view, name, "test.site")

    def layer(request):
        time.sleep(0.002)
        own = _recorder.enter("custom", "lock")
        try:
            return handler(request)
        finally:
            _recorder.exit(own)

    root = begin("GET /", framework="test")
    assert _recorder.run_layer(name, layer, "req", "test.site") == "req"
    _recorder.end(root)
    (tl,) = captured
    m, own = tl.stages[1], tl.stages[2]
    assert own.parent == m.id and m.short_circuit is False
    assert m.phases["in"] >= 2_000_000


def test_a_fused_middleware_frame_passes_the_apps_exception_through_untouched(captured):
    """The layer's exception reaches the caller as the same object; the stage records it and
    the context goes back to the parent."""
    boom = ValueError("nope")

    def view(request):
        raise boom

    name = "app.Failing"
    layer = _layer(_recorder.next_layer(view, name, "test.site"))
    root = begin("GET /", framework="test")
    with pytest.raises(ValueError) as raised:
        _recorder.run_layer(name, layer, "req", "test.site")
    assert raised.value is boom
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    m = tl.stages[1]
    assert m.error is not None and m.error.type == "ValueError"
    assert m.phases["in"] >= 2_000_000  # the split was marked on the way in
    assert stagetrace.stats()["internal_errors"] == 0


def test_a_fused_middleware_frame_whose_clock_fails_still_serves_the_request(captured, monkeypatch):
    """The clock failing inside `run_layer` and the `next_layer` handler: the layer is still
    called and its result returned, every failure is counted at the adapter's site, and the
    context is back at the root afterwards."""
    name = "app.Timing"
    calls = []
    layer = _layer(_recorder.next_layer(calls.append, name, "test.site"))
    root = begin("GET /", framework="test")
    clock = _recorder.now
    fail = [False]

    def flaky_clock() -> int:
        if fail[0]:
            raise RuntimeError("clock failed")
        return clock()

    monkeypatch.setattr(_recorder, "now", flaky_clock)
    fail[0] = True
    assert _recorder.run_layer(name, layer, "req", "test.site") is None  # not entered
    fail[0] = False
    rec_layer = _layer(
        _recorder.next_layer(lambda r: fail.__setitem__(0, True) or r, name, "test.site")
    )
    assert _recorder.run_layer(name, rec_layer, "req2", "test.site") == "req2"
    fail[0] = False
    monkeypatch.undo()
    assert calls == ["req"]
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    assert stagetrace.stats()["internal_errors_by_site"] == {"test.site": 3}
    assert [s.kind for s in tl.stages] == ["gateway", "middleware"]


@pytest.mark.parametrize("is_async", [False, True])
def test_a_next_layer_handler_whose_lookup_fails_still_calls_the_next_layer(
    captured, monkeypatch, is_async
):
    """The handler's search for its middleware (``calls_next``, when the middleware opened a
    stage of its own around the call) failing: the next layer is called with the request and
    its result returned, the failure is counted at the adapter's site, and the middleware's
    stage is recorded without the split."""

    def broken(name):
        raise RuntimeError("lookup failed")

    async def anext_(request):
        return request

    name = "app.Locking"
    handler = _recorder.next_layer(
        anext_ if is_async else (lambda r: r), name, "test.site", is_async
    )

    def layer(request):
        own = _recorder.enter("custom", "lock")
        try:
            result = handler(request=request)
            return asyncio.run(result) if is_async else result
        finally:
            _recorder.exit(own)

    root = begin("GET /", framework="test")
    monkeypatch.setattr(_recorder, "calls_next", broken)
    assert _recorder.run_layer(name, layer, "req", "test.site") == "req"
    monkeypatch.undo()
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    assert stagetrace.stats()["internal_errors_by_site"] == {"test.site": 1}
    m = tl.stages[1]
    assert m.kind == "middleware" and m.error is None and m.phases["out"] == 0


def test_a_fused_middleware_frame_past_the_cap_keeps_the_summary_exact(captured):
    """Past `max_stages`, `run_layer` times the layer without keeping it, as `enter` does."""
    stagetrace.configure(max_stages=2)
    root = begin("GET /", framework="test")
    first = _recorder.enter("view", "kept")
    _recorder.exit(first)
    for _ in range(3):
        assert _recorder.run_layer("app.M", lambda r: r, 1, "test.site") == 1
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    assert len(tl.stages) == 2 and tl.dropped_stages == 3
    assert tl.by_kind["middleware"].count == 3


def test_an_asgi_layer_pair_splits_each_layer_at_the_next_ones_start_and_end(captured):
    """`enter_layer`/`leave_layer` record what `calls_inner`, `enter_middleware`, `leave` and
    `inner_end` record: each layer's inbound phase ends when the layer inside it starts, its
    outbound phase starts when that layer returns; the innermost one is split by routing's
    own `calls_inner`, and the context is back at the root afterwards."""
    root = begin("GET /", framework="test")
    a, outer_of_a = _recorder.enter_layer("app.A")
    assert outer_of_a is None  # directly under the gateway
    time.sleep(0.002)
    b, outer_of_b = _recorder.enter_layer("app.B")
    assert outer_of_b is a
    time.sleep(0.003)
    assert _recorder.calls_inner() is b
    view = _recorder.enter("view", "v")
    time.sleep(0.001)
    _recorder.exit(view)
    _recorder.inner_end(b)
    time.sleep(0.004)
    _recorder.leave_layer("test.site", b, outer_of_b)
    time.sleep(0.005)
    _recorder.leave_layer("test.site", a, outer_of_a)
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    sa, sb, sv = tl.stages[1], tl.stages[2], tl.stages[3]
    assert [(s.kind, s.name, s.parent) for s in (sa, sb, sv)] == [
        ("middleware", "app.A", 0),
        ("middleware", "app.B", 1),
        ("view", "v", 2),
    ]
    assert sa.short_circuit is False and sb.short_circuit is False
    assert sa.phases["in"] >= 2_000_000 and sa.phases["out"] >= 5_000_000
    assert sb.phases["in"] >= 3_000_000 and sb.phases["out"] >= 4_000_000
    assert sa.phases["in"] + sb.duration_ns + sa.phases["out"] <= sa.duration_ns
    assert stagetrace.stats()["internal_errors"] == 0


def test_an_asgi_layer_under_a_stage_its_outer_layer_opened_still_splits_it(captured):
    """A layer that calls the next one inside a stage of its own: the next layer's
    `enter_layer` finds it above that stage and ends its inbound phase there."""
    root = begin("GET /", framework="test")
    a, _ = _recorder.enter_layer("app.Locking")
    time.sleep(0.002)
    own = _recorder.enter("custom", "lock")
    b, outer = _recorder.enter_layer("app.Inner")
    assert outer is a
    _recorder.leave_layer("test.site", b, outer)
    _recorder.exit(own)
    _recorder.leave_layer("test.site", a, None)
    _recorder.end(root)
    (tl,) = captured
    sa = tl.stages[1]
    assert sa.short_circuit is False and sa.phases["in"] >= 2_000_000


def test_an_asgi_layer_that_raised_records_the_error_and_gives_the_context_back(captured):
    """`leave_layer` with the layer's exception: the stage carries it, the outer layer's
    outbound phase starts all the same, and the context is back at the outer layer."""
    root = begin("GET /", framework="test")
    a, _ = _recorder.enter_layer("app.A")
    b, outer = _recorder.enter_layer("app.Failing")
    _recorder.leave_layer("test.site", b, outer, ValueError("nope"))
    assert _recorder.current() is a
    time.sleep(0.002)
    _recorder.leave_layer("test.site", a, None)
    _recorder.end(root)
    (tl,) = captured
    sa, sb = tl.stages[1], tl.stages[2]
    assert sb.error is not None and sb.error.to_dict() == {"type": "ValueError", "message": "nope"}
    assert sa.error is None and sa.phases["out"] >= 2_000_000
    assert stagetrace.stats()["internal_errors"] == 0


def test_an_asgi_layer_whose_clock_fails_on_return_is_counted_and_gives_the_context_back(
    captured, monkeypatch
):
    """The clock failing inside `leave_layer`: nothing raises, the failure is counted at the
    adapter's site, and the context goes back to the outer layer all the same."""
    root = begin("GET /", framework="test")
    a, _ = _recorder.enter_layer("app.A")
    b, outer = _recorder.enter_layer("app.B")

    def broken_clock() -> int:
        raise RuntimeError("clock failed")

    monkeypatch.setattr(_recorder, "now", broken_clock)
    _recorder.leave_layer("test.site", b, outer)
    monkeypatch.undo()
    assert _recorder.current() is a
    _recorder.leave_layer("test.site", a, None)
    _recorder.end(root)
    (tl,) = captured
    assert stagetrace.stats()["internal_errors_by_site"] == {"test.site": 2}
    assert [s.name for s in tl.stages] == ["GET /", "app.A", "app.B"]


def test_asgi_layers_past_the_cap_keep_the_summary_exact(captured):
    """Past `max_stages`, `enter_layer` times the layer without keeping it, as `enter` does,
    and `leave_layer` folds it into the per-kind summary."""
    stagetrace.configure(max_stages=2)
    root = begin("GET /", framework="test")
    kept, outer = _recorder.enter_layer("app.Kept")
    for _ in range(3):
        rec, o = _recorder.enter_layer("app.M")
        assert o is kept
        _recorder.leave_layer("test.site", rec, o)
    _recorder.leave_layer("test.site", kept, outer)
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    assert len(tl.stages) == 2 and tl.dropped_stages == 3
    assert tl.by_kind["middleware"].count == 4
    assert stagetrace.stats()["internal_errors"] == 0


def test_an_asgi_layer_outside_a_timeline_records_nothing():
    """Outside a timeline `enter_layer` opens nothing and `leave_layer` does nothing."""
    rec, outer = _recorder.enter_layer("app.M")
    assert rec is None and outer is None and _recorder.current() is None
    _recorder.leave_layer("test.site", None, None)
    assert stagetrace.stats()["internal_errors"] == 0


def test_a_middleware_link_records_the_layer_and_its_callers_split(captured):
    """`run_link`, as Django's chain calls it: each link opens its middleware's stage, the
    layer calls the next link directly, and that link ends the caller's inbound phase when it
    starts and starts its outbound phase when it is done; the result passes through."""

    def view(request):
        v = _recorder.enter("view", "v")
        time.sleep(0.001)
        _recorder.exit(v)
        return ("response", request)

    def convert(request, exc):  # pragma: no cover - nothing raises here
        raise AssertionError(exc)

    name = "app.Outer"  # the caller is found by this very string
    inner = _layer(view)
    outer = _layer(lambda r: _recorder.run_link("app.Inner", inner, r, "test.site", convert, name))
    root = begin("GET /", framework="test")
    assert _recorder.run_link(name, outer, "req", "test.site", convert) == (
        "response",
        "req",
    )
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    so, si, sv = tl.stages[1], tl.stages[2], tl.stages[3]
    assert [(s.name, s.parent) for s in (so, si, sv)] == [
        ("app.Outer", 0),
        ("app.Inner", 1),
        ("v", 2),
    ]
    assert so.short_circuit is False and so.phases["in"] >= 2_000_000
    assert so.phases["out"] >= 3_000_000
    assert so.phases["in"] + si.duration_ns + so.phases["out"] <= so.duration_ns
    assert stagetrace.stats()["internal_errors"] == 0


def test_a_middleware_link_turns_an_exception_into_a_result_inside_its_own_time(captured):
    """A link whose layer raises: the stage records the exception, ``convert`` makes the
    result (the same exception object passed), and the caller's outbound phase starts only
    after the conversion — its time is the link's, not the caller's own."""
    boom = ValueError("nope")
    seen = []

    def failing(request):
        raise boom

    def convert(request, exc):
        seen.append(exc)
        time.sleep(0.004)
        return "converted"

    name = "app.Outer"

    def outer(request):
        result = _recorder.run_link("app.Failing", failing, request, "test.site", convert, name)
        time.sleep(0.001)
        return result

    root = begin("GET /", framework="test")
    assert _recorder.run_link(name, outer, "req", "test.site", convert) == "converted"
    _recorder.end(root)
    (tl,) = captured
    so, sf = tl.stages[1], tl.stages[2]
    assert seen == [boom]
    assert sf.error is not None and sf.error.type == "ValueError"
    assert so.error is None and so.short_circuit is False
    assert so.phases["out"] < 4_000_000  # the conversion's 4 ms is not the outer layer's own
    assert stagetrace.stats()["internal_errors"] == 0


def test_a_middleware_link_lets_other_exceptions_and_the_conversions_own_through(captured):
    """`BaseException`s of the layer, and an exception the conversion raises, reach the
    caller as the same objects; the stages are closed and the context is back at the root."""
    stop = KeyboardInterrupt()
    again = RuntimeError("conversion failed")

    def interrupted(request):
        raise stop

    def failing(request):
        raise ValueError("x")

    def convert(request, exc):
        raise again

    root = begin("GET /", framework="test")
    with pytest.raises(KeyboardInterrupt) as raised:
        _recorder.run_link("app.A", interrupted, 1, "test.site", convert)
    assert raised.value is stop and _recorder.current() is root
    with pytest.raises(RuntimeError) as raised2:
        _recorder.run_link("app.B", failing, 1, "test.site", convert)
    assert raised2.value is again and _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    assert [s.error.type for s in tl.stages[1:]] == ["KeyboardInterrupt", "ValueError"]
    assert all(s.duration_ns > 0 for s in tl.stages)


def test_a_middleware_link_finds_its_caller_by_name_above_a_stage_the_caller_opened(captured):
    """A caller that calls the link inside a stage of its own — even a `middleware` one —
    still gets its split: the link looks for the caller's name, not the nearest middleware."""
    name = "app.Locking"

    def layer(request):
        time.sleep(0.002)
        own = _recorder.enter_middleware("app.Locking.lock")
        try:
            return _recorder.run_link("app.Inner", lambda r: r, request, "test.site", None, name)
        finally:
            _recorder.exit(own)

    root = begin("GET /", framework="test")
    assert _recorder.run_link(name, layer, "req", "test.site", None) == "req"
    _recorder.end(root)
    (tl,) = captured
    m, lock = tl.stages[1], tl.stages[2]
    assert lock.parent == m.id
    assert m.short_circuit is False and m.phases["in"] >= 2_000_000
    assert stagetrace.stats()["internal_errors"] == 0


def test_a_middleware_link_whose_clock_fails_on_return_still_serves_the_request(
    captured, monkeypatch
):
    """The clock failing after the layer returned: the result still comes back, the failure
    is counted at the adapter's site, the context is back at the caller, and the caller's
    outbound mark is attempted (and counted) on its own."""
    name = "app.Outer"
    clock = _recorder.now
    fail = [False]

    def flaky_clock() -> int:
        if fail[0]:
            raise RuntimeError("clock failed")
        return clock()

    def inner_layer(request):
        fail[0] = True  # from here on, every clock read fails
        return request

    def outer_layer(request):
        result = _recorder.run_link("app.Inner", inner_layer, request, "test.site", None, name)
        assert _recorder.current() is outer_rec[0]
        fail[0] = False
        return result

    outer_rec = [None]
    monkeypatch.setattr(_recorder, "now", flaky_clock)
    root = begin("GET /", framework="test")

    def outer_call(request):
        outer_rec[0] = _recorder.current()
        return outer_layer(request)

    assert _recorder.run_link(name, outer_call, "req", "test.site", None) == "req"
    monkeypatch.undo()
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    assert stagetrace.stats()["internal_errors_by_site"] == {"test.site": 2}
    assert [s.name for s in tl.stages] == ["GET /", "app.Outer", "app.Inner"]


def test_middleware_links_outside_a_timeline_and_past_the_cap(captured):
    """Outside a timeline a link only calls (and converts); past `max_stages` it times the
    layer for the summary without keeping it."""
    assert _recorder.run_link("app.M", lambda r: r + 1, 1, "test.site", None) == 2
    stagetrace.configure(max_stages=2)
    root = begin("GET /", framework="test")
    kept = _recorder.enter("view", "kept")
    _recorder.exit(kept)
    for _ in range(3):
        assert _recorder.run_link("app.M", lambda r: r, 1, "test.site", None) == 1
    assert _recorder.current() is root
    _recorder.end(root)
    (tl,) = captured
    assert len(tl.stages) == 2 and tl.dropped_stages == 3
    assert tl.by_kind["middleware"].count == 3


def test_a_next_layer_handler_outside_a_timeline_only_calls_through(captured):
    """With nothing recording, the handler calls the next layer and returns its result, for
    both natures; the async one is a coroutine function, as the layer it stands for."""
    sync = _recorder.next_layer(lambda r: ("sync", r), "app.M", "test.site")
    assert sync("req") == ("sync", "req")

    async def nxt(r):
        return ("async", r)

    handler = _recorder.next_layer(nxt, "app.M", "test.site", True)
    assert asyncio.iscoroutinefunction(handler) and not asyncio.iscoroutinefunction(sync)
    assert asyncio.run(handler("req")) == ("async", "req")
    assert captured == []


def test_stage_cap_keeps_memory_bounded_and_summary_exact(captured):
    """Past max_stages stages are counted in dropped_stages, and summary counts stay exact."""
    stagetrace.configure(max_stages=10)
    root = begin("job", framework="test")
    for _ in range(30):
        q = _recorder.enter("db.query", "q")
        inner = _recorder.enter("orm.fetch", "f")
        _recorder.exit(inner)
        _recorder.exit(q)
    live = _recorder.timeline_of(root)
    assert len(live) == 10
    _recorder.end(root)
    (tl,) = captured
    assert len(tl.stages) == 10
    assert tl.dropped_stages == 60 - 9
    assert tl.by_kind["db.query"].count == 30
    assert tl.by_kind["orm.fetch"].count == 30
    assert tl.by_kind["gateway"].count == 1
    total_q = tl.by_kind["db.query"].total_ns
    fetch = tl.by_kind["orm.fetch"].total_ns
    assert tl.by_kind["db.query"].self_ns <= total_q - fetch + 1000
    assert tl.by_kind["gateway"].self_ns <= tl.duration_ns - total_q


def test_dropped_children_are_subtracted_from_a_kept_parents_self_time(captured):
    """A kept stage whose children were dropped still gets an honest self time."""
    stagetrace.configure(max_stages=2)
    root = begin("job", framework="test")
    v = _recorder.enter("view", "v")
    q = _recorder.enter("db.query", "dropped")
    time.sleep(0.005)
    _recorder.exit(q)
    _recorder.exit(v)
    _recorder.end(root)
    (tl,) = captured
    view = tl.stages[1]
    assert tl.dropped_stages == 1
    assert view.duration_ns >= 5_000_000
    assert view.self_ns < 2_000_000


def test_stage_left_open_is_closed_at_the_timeline_end(captured):
    """A stage still open when the request ends lasts until the end and is marked unfinished."""
    root = begin("job", framework="test")
    _recorder.enter("custom", "leaked")
    _recorder.end(root)
    (tl,) = captured
    leaked = tl.stages[1]
    assert leaked.attrs == {"unfinished": True}
    assert leaked.end_ns == tl.duration_ns


def test_stages_after_the_end_are_not_part_of_the_timeline(captured):
    """A task that outlives its request does not add stages to the finished timeline."""
    root = begin("job", framework="test")
    holder = _recorder.enter("custom", "before")
    _recorder.exit(holder)
    parent = root
    _recorder.end(root)
    _recorder.restore(parent)  # what a leaked task still sees
    late = _recorder.enter("custom", "late")
    _recorder.exit(late)
    _recorder.restore(None)
    (tl,) = captured
    assert [s.name for s in tl.stages] == ["job", "before"]


def test_nothing_is_recorded_outside_a_timeline(captured):
    """enter() outside a timeline returns None and exit(None) is harmless."""
    rec = _recorder.enter("view", "v")
    assert rec is None
    _recorder.exit(rec)
    with stagetrace.stage("x"):
        stagetrace.annotate(a=1)
    assert captured == []


def test_a_nested_begin_joins_the_outer_timeline(captured):
    """An adapter beginning inside a live timeline records into it instead of starting another."""
    outer = begin("outer", framework="asgi")
    inner = begin("inner", framework="django")
    assert inner is None
    rec = _recorder.enter("view", "v")
    _recorder.set_route("books/<int:pk>/")
    _recorder.exit(rec)
    _recorder.end(inner)
    _recorder.end(outer)
    (tl,) = captured
    assert tl.framework == "asgi" and tl.route == "books/<int:pk>/"
    assert [s.name for s in tl.stages] == ["outer", "v"]


def _work(label: str, n: int) -> None:
    for i in range(n):
        with stagetrace.stage(f"{label}-{i}"):
            stagetrace.annotate(owner=label)
            time.sleep(0)


async def _async_work(label: str, n: int) -> None:
    for i in range(n):
        async with stagetrace.stage(f"{label}-{i}"):
            stagetrace.annotate(owner=label)
            await asyncio.sleep(0)


async def test_concurrent_tasks_and_threads_never_share_stages(captured):
    """100 asyncio tasks and 8 threads, each with its own timeline: no stage lands elsewhere."""

    async def task_body(k: int) -> None:
        with stagetrace.timeline(f"task-{k}", owner=f"task-{k}"):
            await _async_work(f"task-{k}", 20)

    def thread_body(k: int) -> None:
        with stagetrace.timeline(f"thread-{k}", owner=f"thread-{k}"):
            _work(f"thread-{k}", 200)

    threads = [threading.Thread(target=thread_body, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    await asyncio.gather(*(task_body(k) for k in range(100)))
    for t in threads:
        t.join()
    assert len(captured) == 108
    for tl in captured:
        owner = tl.stages[0].name
        assert tl.stages[0].attrs["owner"] == owner
        expected = 200 if owner.startswith("thread") else 20
        assert len(tl.stages) == expected + 1
        for st in tl.stages[1:]:
            assert st.attrs["owner"] == owner, (owner, st)
            assert st.name.startswith(owner + "-")
            assert st.parent == 0
    assert len({tl.trace_id for tl in captured}) == 108


async def test_gathered_children_of_one_stage_keep_their_own_subtrees(captured):
    """Tasks gathered inside a stage each nest their stages under it, never under each other."""

    async def child(name: str) -> None:
        async with stagetrace.stage(name):
            await asyncio.sleep(0.001)
            async with stagetrace.stage(name + ".inner"):
                await asyncio.sleep(0.001)

    with stagetrace.timeline("job"):
        async with stagetrace.stage("fan-out"):
            await asyncio.gather(child("a"), child("b"), child("c"))
    (tl,) = captured
    by_name = {s.name: s for s in tl.stages}
    fan = by_name["fan-out"]
    for n in "abc":
        assert by_name[n].parent == fan.id
        assert by_name[n + ".inner"].parent == by_name[n].id


def test_context_survives_asgiref_hops(captured):
    """Stages recorded across async_to_sync and sync_to_async land in the same timeline."""
    asgiref_sync = pytest.importorskip("asgiref.sync")

    async def async_part() -> None:
        async with stagetrace.stage("async part"):
            await asgiref_sync.sync_to_async(sync_inner)()

    def sync_inner() -> None:
        with stagetrace.stage("sync inner"):
            pass

    with stagetrace.timeline("job"):
        asgiref_sync.async_to_sync(async_part)()
        with stagetrace.stage("after"):
            pass
    (tl,) = captured
    names = {s.name: s for s in tl.stages}
    assert names["sync inner"].parent == names["async part"].id
    assert names["async part"].parent == 0
    assert names["after"].parent == 0


def test_a_carried_body_resumes_where_its_last_chunk_left_the_position(captured):
    """`carry` produces the first chunk at the given position and each later one where the
    previous left it (a stage held open across ``yield`` is the parent of stages opened in
    later chunks), never moves the caller's own position, and runs the producer in the
    caller's context: the server's values of other context variables, and tokens made in one
    chunk reset in a later one or at close."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    root = begin("GET /stream", framework="test", method="GET", path="/stream")
    write = _recorder.enter("response.write", "body")
    _recorder.restore(root)
    seen: list[str] = []

    def body():
        token = var.set("producer")
        try:
            with stagetrace.stage("rows", "template"):
                yield b"a"
                seen.append(var.get())
                with stagetrace.stage("row 2"):
                    pass
                yield b"bc"
            yield b"d"
        finally:
            var.reset(token)

    done: list[tuple[int, int, BaseException | None]] = []
    chunks = _recorder.carry(body(), write, lambda n, size, exc: done.append((n, size, exc)))
    out = []
    for chunk in chunks:
        assert _recorder.current() is root  # the caller's position is never moved
        assert var.get() == "producer"  # the producer's writes are the caller's context's
        out.append(chunk)
    assert out == [b"a", b"bc", b"d"] and done == [(3, 4, None)]
    assert seen == ["producer"] and var.get() == "unset"
    _recorder.exit(write)
    _recorder.end(root)
    (tl,) = captured
    assert [(s.kind, s.name, s.parent) for s in tl.stages] == [
        ("gateway", "GET /stream", None),
        ("response.write", "body", 0),
        ("template", "rows", 1),
        ("custom", "row 2", 2),
    ]


def test_a_stage_that_cannot_be_closed_is_reported_and_the_context_goes_back(captured, monkeypatch):
    """`leave` (the adapters' guarded exit) failing before it has done anything: the failure
    is counted as an internal error at the adapter's site, never raised, and the context goes
    back to the parent so the stages after it still nest under the right one."""
    root = begin("GET /", framework="test", method="GET", path="/")
    rec = _recorder.enter("view", "v")

    def broken_clock() -> int:
        raise RuntimeError("clock failed")

    monkeypatch.setattr(_recorder, "now", broken_clock)
    _recorder.leave("test.site", rec)
    monkeypatch.undo()
    assert _recorder.current() is root
    after = _recorder.enter("template", "t")
    _recorder.exit(after)
    _recorder.end(root)
    assert stagetrace.stats()["internal_errors_by_site"] == {"test.site": 1}
    (tl,) = captured
    assert [(s.kind, s.name, s.parent) for s in tl.stages] == [
        ("gateway", "GET /", None),
        ("view", "v", 0),
        ("template", "t", 0),
    ]


def test_enter_owned_once_records_the_outer_call_of_a_method_calling_its_own_super(captured):
    """With ``once``, entering a stage of the same kind and owner as the current one (a
    compiler's ``as_sql`` calling ``super().as_sql()``) records nothing; another owner or
    kind nests as usual."""
    owner, other = object(), object()
    root = begin("GET /", framework="test")
    outer = _recorder.enter_owned("orm.compile", "outer", owner, once=True)
    assert outer is not None
    assert _recorder.enter_owned("orm.compile", "again", owner, once=True) is None
    sub = _recorder.enter_owned("orm.compile", "subquery", other, once=True)
    _recorder.exit(sub)
    fetch = _recorder.enter_owned("orm.fetch", "same owner, other kind", owner, once=True)
    _recorder.exit(fetch)
    _recorder.exit(outer)
    _recorder.end(root)
    (tl,) = captured
    assert [(s.name, s.parent) for s in tl.stages[1:]] == [
        ("outer", 0),
        ("subquery", 1),
        ("same owner, other kind", 1),
    ]


def test_a_stage_closed_from_elsewhere_leaves_that_context_where_it_was(captured):
    """A generator holding a stage open across ``yield`` can be closed anywhere — by the garbage
    collector in the middle of the next request, say. Closing it ends its stage but moves
    neither that request's position (its later stages still nest where they should) nor an
    empty context into the finished request."""

    def chunks():
        rec = _recorder.enter("template", "page")
        try:
            yield "a"
            yield "b"
        finally:
            _recorder.exit(rec)

    first = begin("GET /peek", framework="test")
    gen = chunks()
    assert next(gen) == "a"  # the template stage stays open across the yield
    _recorder.exit(_recorder.current())
    _recorder.end(first)
    assert _recorder.current() is None

    second = begin("GET /books", framework="test")
    view = _recorder.enter("view", "books")
    gen.close()  # as the collector would, while /books runs
    query = _recorder.enter("db.query", "SELECT 1")
    _recorder.exit(query)
    _recorder.exit(view)
    _recorder.end(second)

    gen = chunks()
    third = begin("GET /again", framework="test")
    assert next(gen) == "a"
    _recorder.end(third)
    gen.close()  # in a context outside any timeline: it stays outside
    assert _recorder.current() is None

    peek, books, _ = captured
    assert [(s.kind, s.name, s.parent) for s in books.stages] == [
        ("gateway", "GET /books", None),
        ("view", "books", 0),
        ("db.query", "SELECT 1", 1),
    ]
    assert [s.kind for s in peek.stages] == ["gateway", "template"]


def test_a_cut_query_gets_the_hash_of_its_whole_statement_when_sealed():
    """A ``db.query`` stage whose text was cut (`note_cut`) gets ``stagetrace.db.query.hash``
    when the timeline is sealed, not on the request path: a hash of the whole statement's
    fingerprint, so values (here after the cut) change nothing and no value can be recovered
    from it; the same in every process. A stage whose text was not cut gets none."""
    import hashlib

    from stagetrace.analyzers import fingerprint

    head = "SELECT " + ", ".join(f"c{i}" for i in range(40)) + " FROM t"
    whole = [f"{head} WHERE id = 1", f"{head} WHERE id = 2", f"{head} WHERE owner = 1"]
    with stagetrace.capture() as got:
        root = begin("job", framework="test")
        for sql in whole:
            attrs = {"db.query.text": sql[:50] + "…"}
            rec = _recorder.enter("db.query", "SELECT", attrs)
            _recorder.note_cut(rec, attrs, sql)
            assert "stagetrace.db.query.hash" not in attrs  # not on the request path
            _recorder.leave("test", rec)
        short = {"db.query.text": "SELECT 1"}
        _recorder.leave("test", _recorder.enter("db.query", "SELECT", short))
        _recorder.end(root)
    (tl,) = got
    first, second, other, plain = [s for s in tl.stages if s.kind == "db.query"]
    expected = hashlib.blake2b(fingerprint(whole[0]).encode(), digest_size=8).hexdigest()
    assert first.attrs["stagetrace.db.query.hash"] == expected
    assert second.attrs["stagetrace.db.query.hash"] == expected
    assert other.attrs["stagetrace.db.query.hash"] != expected
    assert "stagetrace.db.query.hash" not in plain.attrs
