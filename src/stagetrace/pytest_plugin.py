"""pytest plugin: the ``stagetrace_capture`` fixture, with assertions on the timelines the test's
requests produced.

::

    def test_book_list(client, stagetrace_capture):
        client.get("/books/")
        stagetrace_capture.assert_max_queries(3)
        stagetrace_capture.assert_no_n_plus_one()
        stagetrace_capture.assert_stage_budget("template", max_ms=50)

Installed with stagetrace (entry point ``pytest11``). Loading it changes nothing for tests that
do not ask for the fixture: no autouse fixture, no hooks, and it imports no web framework.
A failed assertion shows the offending request's waterfall and, for N+1 patterns, the call site.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from . import Finding, Stage, Timeline

__all__ = ["StagetraceCapture", "stagetrace_capture"]

#: Width of the waterfalls in failure messages.
WATERFALL_WIDTH = 110
#: At most this many waterfalls in one failure message.
MAX_WATERFALLS = 3

_NOT_RECORDED = (
    "no timeline was recorded during this test, so there is nothing to check: is the app "
    'instrumented ("stagetrace.django" in INSTALLED_APPS, stagetrace.starlette.instrument(), '
    "stagetrace.flask.instrument(), or the ASGI or WSGI middleware) and recording enabled?"
)


def _not_recorded() -> str:
    """Why no timeline may have been recorded: `_NOT_RECORDED`, and the settings that leave
    requests out when they do (a sample rate a test run inherited from production's
    environment makes tests fail at random)."""
    from . import settings

    current = settings()
    why = [_NOT_RECORDED]
    if current.enabled and current.sample_rate < 1:
        why.append(
            f"Only some requests are recorded: the sample_rate option "
            f"(STAGETRACE_SAMPLE_RATE) is {current.sample_rate:g}."
        )
    if current.enabled and current.exclude_paths:
        why.append(
            "Requests whose path matches the exclude_paths option (STAGETRACE_EXCLUDE_PATHS) "
            f"are not recorded: {', '.join(current.exclude_paths)}."
        )
    return " ".join(why)


class StagetraceCapture:
    """The timelines that finished while it was active (as `stagetrace.capture()` collects
    them: from every thread, already analyzed), and assertions about them.

    Use the ``stagetrace_capture`` fixture, or this class as a context manager where fixtures
    are not at hand::

        with StagetraceCapture() as captured:
            client.get("/books/")
        captured.assert_max_queries(1)
    """

    #: How long an assertion waits, at most, for requests still finishing on another thread.
    SETTLE_TIMEOUT = 2.0

    def __init__(self) -> None:
        self.timelines: list[Timeline] = []
        self._cm: Any = None
        self._since = 0

    # --- collecting -----------------------------------------------------------------------

    def __enter__(self) -> StagetraceCapture:
        from . import capture

        self._since = time.time_ns()
        self._cm = capture()
        self.timelines = self._cm.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(exc_type, exc, tb)

    def __len__(self) -> int:
        self._settle()
        return len(self.timelines)

    def __iter__(self) -> Iterator[Timeline]:
        self._settle()
        return iter(list(self.timelines))

    def __getitem__(self, index: int) -> Timeline:
        self._settle()
        return self.timelines[index]

    def _settle(self) -> None:
        """Wait, at most `SETTLE_TIMEOUT` seconds, for the requests that began since the
        capture did and are still finishing on another thread: a live server (pytest-django's
        ``live_server``, a server thread of the test's own) ends a request's timeline just
        after its client has the whole response, and an assertion made right then saw nothing
        of it — or passed without its queries."""
        from . import _recorder
        from ._state import STATE

        me = threading.get_ident()
        deadline = time.monotonic() + self.SETTLE_TIMEOUT
        while True:
            waiting = False
            for tl in list(STATE.in_flight):
                try:
                    if tl.wall0 < self._since:
                        continue
                    root = _recorder.root_of(tl)
                    if root is not None and _recorder.root_attrs(root).get("thread.id") != me:
                        waiting = True  # (one of this thread's own cannot end meanwhile)
                        break
                except Exception:  # it ended meanwhile
                    continue
            if not waiting or time.monotonic() >= deadline:
                return
            time.sleep(0.002)

    def clear(self) -> None:
        """Forget the timelines collected so far (e.g. after the test's setup requests)."""
        self.timelines.clear()

    def _select(self, route: str | None) -> list[Timeline]:
        __tracebackhide__ = True
        self._settle()
        timelines = list(self.timelines)
        if route is not None:
            # as `stagetrace show --route`: a leading or trailing "/" never matters (Django's
            # route templates have none in front, Starlette's none behind)
            wanted = route.strip("/")
            timelines = [
                t
                for t in timelines
                if any(v.strip("/") == wanted for v in (_route(t), t.path) if v)
            ]
            if not timelines:
                seen = sorted({_route(t) or t.path or t.name for t in self.timelines})
                raise AssertionError(
                    f"no timeline of route {route!r} was recorded during this test "
                    f"(recorded: {', '.join(seen) or 'none'})"
                )
        elif not timelines:
            raise AssertionError(_not_recorded())
        return timelines

    @staticmethod
    def query_count(timeline: Timeline) -> int:
        """The SQL statements a timeline ran (stages beyond ``max_stages`` included)."""
        summary = timeline.by_kind.get("db.query")
        return summary.count if summary is not None else 0

    # --- assertions -----------------------------------------------------------------------

    def assert_max_queries(self, n: int, *, route: str | None = None) -> None:
        """Fail when the requests of this test (or of one `route`) ran more than `n` SQL
        statements in total."""
        __tracebackhide__ = True
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a whole number of SQL queries >= 0, not {n!r}")
        timelines = self._select(route)
        total = sum(self.query_count(t) for t in timelines)
        if total <= n:
            return
        what = "SQL query" if n == 1 else "SQL queries"
        lines = [f"expected at most {n} {what}, {total} ran in {_requests(timelines)}:"]
        lines.extend(
            f"  {self.query_count(t):>5}  {_title(t)}"
            for t in sorted(timelines, key=self.query_count, reverse=True)[:10]
        )
        worst = max(timelines, key=self.query_count)
        repeated = _repeated_queries(worst)
        if repeated:
            lines.append(f"most repeated statements in {_title(worst)}:")
            lines.extend(f"  {count:>5}× {text}" for count, text in repeated)
        lines.extend(_waterfalls([worst]))
        raise AssertionError("\n".join(lines))

    def assert_no_n_plus_one(self, *, threshold: int = 5, route: str | None = None) -> None:
        """Fail when a request of this test ran one statement shape (its SQL fingerprint) at
        least `threshold` times: an N+1 pattern. The message names the call site when the
        recorder captured it, else the view or template."""
        __tracebackhide__ = True
        from .analyzers import n_plus_one

        analyzer = n_plus_one(threshold)
        bad: list[tuple[Timeline, list[Finding]]] = []
        for tl in self._select(route):
            # Recorded findings count only when they reach this assertion's threshold: they
            # were found with the analyzers' own (5, or the project's n_plus_one_threshold).
            found = {
                _fp(f): f
                for f in tl.findings
                if f.kind == "n_plus_one" and _repeats(f) >= threshold
            }
            for f in analyzer(tl):
                found.setdefault(_fp(f), f)
            if found:
                bad.append((tl, list(found.values())))
        if not bad:
            return
        count = sum(len(fs) for _, fs in bad)
        lines = [f"{count} N+1 query pattern{'s' if count != 1 else ''} found:"]
        for tl, findings in bad:
            for f in findings:
                lines.append(f"  {_title(tl)}: {f.message}")
                site = f.attrs.get("call_site")
                if site:
                    lines.append(f"    call site: {site}")
                template = f.attrs.get("template")
                if template:
                    lines.append(f"    while rendering: {template}")
        lines.extend(_waterfalls([tl for tl, _ in bad]))
        raise AssertionError("\n".join(lines))

    def assert_stage_budget(self, kind: str, max_ms: float, *, route: str | None = None) -> None:
        """Fail when a request of this test spent more than `max_ms` milliseconds in stages of
        `kind` (``"db.query"``, ``"template"``, ``"view"``, ...). Nested stages of the same
        kind (a template's includes) count once: the time inside the outermost ones."""
        __tracebackhide__ = True
        from . import KINDS

        if kind not in KINDS:
            raise ValueError(f"unknown stage kind {kind!r}; use one of: {', '.join(KINDS)}")
        if isinstance(max_ms, bool) or not isinstance(max_ms, (int, float)) or not max_ms >= 0:
            raise ValueError(f"max_ms must be a number of milliseconds >= 0, not {max_ms!r}")
        over: list[tuple[Timeline, int, list[Stage]]] = []
        for tl in self._select(route):
            spent, outer = _time_in(tl, kind)
            if spent > max_ms * 1e6:
                over.append((tl, spent, outer))
        if not over:
            return
        lines = [f"stage budget exceeded: at most {max_ms:g} ms in {kind!r} stages per request"]
        for tl, spent, outer in over:
            lines.append(f"  {_title(tl)}: {spent / 1e6:.2f} ms in {len(outer)} {kind} stage(s)")
            lines.extend(
                f"    {s.duration_ns / 1e6:8.2f} ms  {s.name}"
                for s in sorted(outer, key=lambda s: s.duration_ns, reverse=True)[:5]
            )
        lines.extend(_waterfalls([tl for tl, _, _ in over]))
        raise AssertionError("\n".join(lines))

    def __repr__(self) -> str:
        return f"<StagetraceCapture {len(self.timelines)} timelines>"


def _fp(f: Finding) -> str:
    from .analyzers._log import finding_key

    return finding_key(f)


def _repeats(f: Finding) -> float:
    """How many times a finding's statement ran: its ``count``, or infinity for a finding of
    an analyzer of your own that does not say (it is kept, whatever the threshold)."""
    count = f.attrs.get("count")
    return count if type(count) is int else float("inf")


def _route(tl: Timeline) -> str | None:
    """What ``route=`` names: the route template, or a job's name (a Celery task has no
    route), as ``stagetrace show --route`` reads it."""
    return tl.name if tl.protocol == "job" else tl.route


def _title(tl: Timeline) -> str:
    if tl.protocol == "job" or not tl.path:
        title = tl.name
    else:
        title = f"{tl.method} {tl.path}" if tl.method else tl.path
    return title if tl.status is None else f"{title} -> {tl.status}"


def _requests(timelines: list[Timeline]) -> str:
    return "1 request" if len(timelines) == 1 else f"{len(timelines)} requests"


def _repeated_queries(tl: Timeline) -> list[tuple[int, str]]:
    from .analyzers import fingerprint, short_sql, sql_text

    counts: dict[str, int] = {}
    for st in tl.stages:
        if st.kind == "db.query":
            text = sql_text(st)
            if text is not None:
                fp = fingerprint(text)
                counts[fp] = counts.get(fp, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
    return [(c, short_sql(fp, 90)) for fp, c in ranked[:5] if c > 1]


def _time_in(tl: Timeline, kind: str) -> tuple[int, list[Stage]]:
    """Time inside the outermost stages of `kind` (nested ones counted once), and those."""
    inside: set[int] = set()  # stages of `kind` and everything below them
    outer: list[Stage] = []
    for st in tl.stages:  # parents precede their children
        if st.kind != kind:
            if st.parent in inside:
                inside.add(st.id)
            continue
        inside.add(st.id)
        if st.parent is None or st.parent not in inside:
            outer.append(st)
    return sum(s.duration_ns for s in outer), outer


def _waterfalls(timelines: list[Timeline]) -> list[str]:
    from .sinks import render_waterfall

    lines: list[str] = []
    for tl in timelines[:MAX_WATERFALLS]:
        lines.append("")
        lines.append(render_waterfall(tl, width=WATERFALL_WIDTH, color=False).rstrip("\n"))
    if len(timelines) > MAX_WATERFALLS:
        lines.append(f"(and {len(timelines) - MAX_WATERFALLS} more requests)")
    return lines


@pytest.fixture
def stagetrace_capture() -> Iterator[StagetraceCapture]:
    """The timelines finished during the test (from any thread), with `assert_max_queries`,
    `assert_no_n_plus_one` and `assert_stage_budget`."""
    with StagetraceCapture() as captured:
        yield captured
