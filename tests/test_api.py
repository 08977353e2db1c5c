"""The public recording API: stage, timeline, annotate, current_timeline, capture."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

import stagetrace


def test_stage_decorates_sync_functions_transparently(captured):
    """A decorated function keeps its name, docstring and result, and each call is a stage."""

    @stagetrace.stage("compute", kind="custom", unit="eur")
    def compute(x: int) -> int:
        """Double it."""
        return x * 2

    with stagetrace.timeline("job"):
        assert compute(21) == 42
        assert compute(1) == 2
    assert compute.__name__ == "compute" and compute.__doc__ == "Double it."
    assert compute.__wrapped__(3) == 6
    (tl,) = captured
    calls = tl.of_kind("custom")
    assert [s.name for s in calls] == ["compute", "compute"]
    assert calls[0].attrs == {"unit": "eur"}


async def test_stage_decorates_async_functions_and_they_stay_async(captured):
    """Decorating a coroutine function returns a coroutine function; the await is timed."""

    @stagetrace.stage("fetch", kind="http.client")
    async def fetch() -> str:
        await asyncio.sleep(0.002)
        return "ok"

    assert inspect.iscoroutinefunction(fetch)
    async with stagetrace.timeline("job"):
        assert await fetch() == "ok"
    (tl,) = captured
    (st,) = tl.of_kind("http.client")
    assert st.duration_ns >= 2_000_000


async def test_decorating_a_staticmethod_or_classmethod_keeps_what_it_is(captured):
    """Above ``@staticmethod`` or ``@classmethod`` the decorators wrap the function inside and
    return the same kind of descriptor: no argument shifts, async stays async."""

    class Rates:
        base = 10

        @stagetrace.stage("double")
        @staticmethod
        def double(x: int) -> int:
            return 2 * x

        @stagetrace.stage("fetch")
        @staticmethod
        async def fetch(x: int) -> int:
            return x

        @stagetrace.stage("add")
        @classmethod
        def add(cls, x: int) -> int:
            return cls.base + x

        @stagetrace.timeline("nightly")
        @staticmethod
        def nightly() -> int:
            return Rates.double(1)

    assert isinstance(vars(Rates)["double"], staticmethod)
    assert inspect.iscoroutinefunction(Rates.fetch)
    with stagetrace.timeline("job"):
        assert Rates.double(4) == 8 and Rates().double(4) == 8
        assert await Rates().fetch(3) == 3
        assert Rates.add(1) == 11 and Rates().add(2) == 12
    assert Rates().nightly() == 2
    job, nightly = captured
    assert [s.name for s in job.stages[1:]] == ["double", "double", "fetch", "add", "add"]
    assert nightly.name == "nightly" and [s.name for s in nightly.stages[1:]] == ["double"]


def test_bare_decorator_names_the_stage_after_the_function(captured):
    """@stagetrace.stage without arguments uses the function's qualified name."""

    @stagetrace.stage
    def load_rates() -> None:
        pass

    with stagetrace.timeline("job"):
        load_rates()
    (tl,) = captured
    assert tl.stages[1].name.endswith("load_rates")


def test_the_apps_exception_passes_through_unchanged(captured):
    """The very same exception object reaches the caller, and the stage records it."""
    err = KeyError("missing")

    @stagetrace.stage("lookup")
    def lookup() -> None:
        raise err

    with pytest.raises(KeyError) as info, stagetrace.timeline("job"):
        lookup()
    assert info.value is err
    (tl,) = captured
    assert tl.stages[1].error.type == "KeyError"
    assert tl.stages[0].error.type == "KeyError"


def test_stage_context_manager_records_error_and_does_not_swallow_it(captured):
    """`with stage()` never suppresses the exception raised in its block."""
    with pytest.raises(ZeroDivisionError), stagetrace.timeline("job"), stagetrace.stage("div"):
        1 / 0  # noqa: B018
    (tl,) = captured
    assert tl.stages[1].error.type == "ZeroDivisionError"


def test_one_stage_object_can_be_nested_and_shared_across_threads(captured):
    """A stage definition holds no per-use state: reuse, nesting and threads all work."""
    step = stagetrace.stage("step")
    assert stagetrace.stage("step") is step  # cached definition

    def worker() -> None:
        with stagetrace.timeline("t"):
            for _ in range(100):
                with step, step:
                    pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(captured) == 4
    for tl in captured:
        assert len(tl.stages) == 201
        outers = [s for s in tl.stages[1:] if s.parent == 0]
        assert len(outers) == 100
        assert all(s.attrs == {} for s in tl.stages)


def test_an_inner_stage_left_open_does_not_break_the_outer_one(captured):
    """Leaving a stage open inside another still closes the outer one at its own exit."""
    with stagetrace.timeline("job"):
        with stagetrace.stage("outer"):
            stagetrace.stage("forgotten").__enter__()
        with stagetrace.stage("next"):
            pass
    (tl,) = captured
    by = {s.name: s for s in tl.stages}
    assert by["next"].parent == 0
    assert "unfinished" not in by["outer"].attrs


def test_unknown_kind_is_a_clear_error():
    """A kind outside the vocabulary fails at definition time, naming the valid kinds."""
    with pytest.raises(ValueError, match=r"unknown stage kind 'sql'.*db\.query"):
        stagetrace.stage("x", kind="sql")


def test_generator_functions_are_refused_with_advice():
    """Decorating a generator would time only its creation, so it is refused clearly."""

    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        stagetrace.stage("g")(gen)


def test_annotate_adds_to_the_current_stage_only(captured):
    """annotate() merges attributes into the innermost open stage."""
    with stagetrace.timeline("job", tenant="acme"):
        with stagetrace.stage("s", a=1):
            stagetrace.annotate(b=2)
            stagetrace.annotate(a=3)
        with stagetrace.stage("s", a=1):
            pass
        stagetrace.annotate(rows=7)
    (tl,) = captured
    assert tl.stages[0].attrs == {"tenant": "acme", "rows": 7}
    assert tl.stages[1].attrs == {"a": 3, "b": 2}
    assert tl.stages[2].attrs == {"a": 1}  # a shared attrs dict is never mutated


def test_discard_drops_the_timeline_being_recorded_and_only_it(captured):
    """discard() inside a timeline drops that timeline (its open stages still close without
    error) while the next one is delivered; outside a timeline it returns False."""
    assert stagetrace.discard() is False
    with stagetrace.timeline("dropped"), stagetrace.stage("before"):
        assert stagetrace.discard() is True
        with stagetrace.stage("after"):
            pass
    with stagetrace.timeline("kept"):
        pass
    assert stagetrace.flush(timeout=10)
    assert [tl.stages[0].name for tl in captured] == ["kept"]
    assert stagetrace.current_timeline() is None


def test_attributes_are_made_json_safe(captured):
    """Non-JSON attribute values are stringified; huge strings are cut."""
    with (
        stagetrace.timeline("job"),
        stagetrace.stage("s", obj=object(), big="x" * 20000, nan=float("nan"), seq=(1, "a")),
    ):
        pass
    (tl,) = captured
    attrs = tl.stages[1].attrs
    assert attrs["obj"].startswith("<object object")
    assert len(attrs["big"]) == 4097  # max_attr_length (4096) and a marker
    assert attrs["nan"] == "nan"
    assert attrs["seq"] == [1, "a"]


def test_current_timeline_exposes_ids_inside_and_none_outside():
    """current_timeline() is a live view while recording and None elsewhere."""
    assert stagetrace.current_timeline() is None
    with stagetrace.capture() as got, stagetrace.timeline("job") as handle:
        cur = stagetrace.current_timeline()
        assert cur is not None and handle is not None
        assert cur.trace_id == handle.trace_id and len(cur.trace_id) == 32
        assert len(cur.span_id) == 16 and cur.protocol == "job"
        assert cur.request_id == cur.trace_id
        assert cur.elapsed_ns >= 0 and cur.stage_count == 1
    assert got[0].trace_id == cur.trace_id and got[0].span_id == cur.span_id
    assert stagetrace.current_timeline() is None


def test_timeline_inside_a_timeline_becomes_a_task_stage(captured):
    """A nested timeline() records a task stage in the outer timeline."""
    with stagetrace.timeline("outer"), stagetrace.timeline("inner", n=1):
        pass
    (tl,) = captured
    assert [(s.kind, s.name, s.attrs) for s in tl.stages] == [
        ("task", "outer", {}),
        ("task", "inner", {"n": 1}),
    ]


async def test_timeline_as_decorator_gives_one_timeline_per_call(captured):
    """@timeline on sync and async functions records each call as its own job."""

    @stagetrace.timeline("sync-job")
    def sync_job() -> int:
        return 1

    @stagetrace.timeline("async-job")
    async def async_job() -> int:
        return 2

    assert inspect.iscoroutinefunction(async_job)
    assert sync_job() + sync_job() + await async_job() == 4
    assert [t.name for t in captured] == ["sync-job", "sync-job", "async-job"]
    assert all(t.protocol == "job" and t.framework == "python" for t in captured)


def test_capture_sees_timelines_finished_in_other_threads():
    """capture() is process-wide: a timeline ended in another thread is collected."""
    with stagetrace.capture() as got:

        def run() -> None:
            with stagetrace.timeline("thread-job"):
                pass

        t = threading.Thread(target=run)
        t.start()
        t.join()
    assert [tl.name for tl in got] == ["thread-job"]
    with stagetrace.timeline("after"):
        pass
    assert len(got) == 1


def test_nested_captures_both_collect():
    """Two captures active at once each receive the timeline."""
    with stagetrace.capture() as outer:
        with stagetrace.capture() as inner, stagetrace.timeline("a"):
            pass
        with stagetrace.timeline("b"):
            pass
    assert [t.name for t in outer] == ["a", "b"]
    assert [t.name for t in inner] == ["a"]
