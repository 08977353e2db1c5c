"""The core's reliability promises: shared scopes never orphan a timeline, and nothing a
finished timeline holds belongs to the application."""

from __future__ import annotations

import gc
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import stagetrace
from stagetrace import Stage, Timeline


def test_a_shared_timeline_scope_used_by_two_threads_at_once(captured):
    """`JOB = stagetrace.timeline("job")` entered by two pool threads at once: one thread's exit
    used to end the other's timeline and leave its own open and current, after which most later
    jobs on that pool were lost."""
    JOB = stagetrace.timeline("job")
    both_inside = threading.Barrier(2)

    def run(i: int) -> str | None:
        with JOB:
            both_inside.wait(5)
            with stagetrace.stage(f"work {i}"):
                pass
        current = stagetrace.current_timeline()
        return None if current is None else current.trace_id

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(run, range(2))) == [None, None]
        assert list(pool.map(lambda i: run_single(JOB, i), range(6))) == [None] * 6
    assert len(captured) == 8
    assert all(t.protocol == "job" and len(t.stages) == 2 for t in captured)
    assert all("unfinished" not in s.attrs for t in captured for s in t.stages)
    assert sorted(t.stages[1].name for t in captured[:2]) == ["work 0", "work 1"]


def run_single(job: stagetrace.TimelineScope, i: int) -> str | None:
    with job, stagetrace.stage(f"work {i}"):
        pass
    current = stagetrace.current_timeline()
    return None if current is None else current.trace_id


def test_a_timeline_scope_nested_in_itself_ends_the_outer_at_the_outer_exit(captured):
    """Re-entrant use: the inner `with JOB` is a task stage; it used to end the outer timeline."""
    JOB = stagetrace.timeline("job")
    with JOB:
        with JOB:
            pass
        with stagetrace.stage("after the inner one"):
            pass
        assert stagetrace.current_timeline() is not None
    assert stagetrace.current_timeline() is None
    (tl,) = captured
    assert [(s.kind, s.name, s.parent) for s in tl.stages] == [
        ("task", "job", None),
        ("task", "job", 0),
        ("custom", "after the inner one", 0),
    ]


_PLAIN = (str, int, float, bool, type(None), list, dict, tuple)


def _reachable_foreign(root: object) -> list[str]:
    """Objects reachable from `root` that are neither plain data nor stagetrace's own."""
    seen: set[int] = set()
    stack = [root]
    foreign = []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (types.ModuleType, type)):
            continue
        mod = getattr(type(obj), "__module__", "") or ""
        if isinstance(obj, (types.FunctionType, types.CellType, types.MethodType)):
            fmod = getattr(obj, "__module__", "") or ""
            if isinstance(obj, types.FunctionType) and not fmod.startswith("stagetrace"):
                foreign.append(repr(obj))
                continue
        elif type(obj) in _PLAIN or mod.startswith("stagetrace") or isinstance(obj, (Stage,)):
            pass
        else:
            foreign.append(f"{type(obj).__module__}.{type(obj).__qualname__}")
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend(c.cell_contents for c in obj.__closure__ or ())
        else:
            stack.extend(gc.get_referents(obj))
    return foreign


def test_a_finished_timeline_references_nothing_of_the_application(captured):
    """Deferred names and attributes are computed and non-plain values stringified when the
    timeline ends; what is queued holds plain data and stagetrace's own objects only."""

    class AppObject:
        def __str__(self) -> str:
            return "an app object"

    obj = AppObject()
    with stagetrace.timeline("job", owner=obj), stagetrace.stage("s", thing=obj, things=[obj, 1]):
        stagetrace.annotate(more=obj)
    (tl,) = captured
    assert isinstance(tl, Timeline)
    assert _reachable_foreign(tl) == []
    assert tl.stages[1].attrs == {
        "thing": "an app object",
        "things": ["an app object", 1],
        "more": "an app object",
    }


def test_a_timeline_kept_by_the_memory_sink_does_not_keep_an_old_configuration_alive():
    """A request's timeline in the memory sink, not read yet (its request attributes still
    to be parsed), holds plain values only: once stagetrace is configured anew, the earlier
    configuration — and through it its sinks — can be freed."""
    import io
    import weakref

    from stagetrace import _runtime
    from stagetrace.wsgi import StagetraceMiddleware

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    stagetrace.configure(sinks=["memory"])
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/x",
        "QUERY_STRING": "q=1",
        "SERVER_NAME": "h",
        "SERVER_PORT": "80",
        "HTTP_HOST": "h",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    body = StagetraceMiddleware(app)(environ, lambda *a: None)
    list(body)
    body.close()
    del body
    stagetrace.flush()
    (tl,) = stagetrace.recent()
    old = weakref.ref(_runtime.active())
    stagetrace.reset()
    stagetrace.configure(sinks=[])
    gc.collect()
    assert old() is None
    attrs = tl.stages[0].attrs  # parsed now, from what the timeline kept
    assert attrs["http.request.method"] == "GET" and attrs["url.query"] == "q=REDACTED"
