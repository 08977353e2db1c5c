"""The N+1 and duplicate-query analyzers, on timelines recorded through the public API and on
recordings of the example apps."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stagetrace
import stagetrace._state
from stagetrace import Finding, Timeline, analyzers
from stagetrace.sinks import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
AUTHOR_SQL = 'SELECT "shop_author"."id" FROM "shop_author" WHERE "shop_author"."id" = %s'


def query(sql: str, *, old_names: bool = False, **attrs: Any) -> stagetrace.StageScope:
    key = "db.statement" if old_names else "db.query.text"
    return stagetrace.stage("SELECT", kind="db.query", **{key: sql, **attrs})


def record(body: Any) -> Timeline:
    """Run `body` inside a job timeline and return the finished timeline, not analyzed (these
    tests run the analyzers themselves)."""
    stagetrace.configure(analyzers=[])
    with stagetrace.capture() as timelines, stagetrace.timeline("job"):
        body()
    (tl,) = timelines
    return tl


def loop(n: int, *, old_names: bool = False, site: dict[str, Any] | None = None) -> Iterator[None]:
    for i in range(n):
        extra = site if (site and i == 1) else {}
        with query(AUTHOR_SQL, old_names=old_names, **extra):
            yield


def n_plus_one_body(n: int, **kw: Any) -> Any:
    def body() -> None:
        with stagetrace.stage("shop.views.book_list", kind="view"):
            with query('SELECT * FROM "shop_book"'):
                pass
            for _ in loop(n, **kw):
                pass

    return body


SITE = {
    "code.file.path": "shop/views.py",
    "code.line.number": 12,
    "code.function.name": "book_list",
}


def test_n_plus_one_reports_one_finding_with_call_site() -> None:
    """30 queries of one shape from one call site: a single finding with the fingerprint,
    count, total time, call site and the ids of the 30 stages, and a readable message."""
    tl = record(n_plus_one_body(30, site=SITE))
    (f,) = analyzers.detect_n_plus_one(tl)
    assert f.kind == "n_plus_one"
    queries = [s for s in tl.of_kind("db.query") if "shop_author" in s.attrs["db.query.text"]]
    assert f.stages == tuple(s.id for s in queries)
    assert f.attrs["count"] == 30
    assert f.attrs["total_ns"] == sum(s.duration_ns for s in queries)
    assert f.attrs["fingerprint"] == analyzers.fingerprint(AUTHOR_SQL)
    assert f.attrs["call_site"] == "shop/views.py:12"
    assert f.attrs["code.function.name"] == "book_list"
    assert f.attrs["view"] == "shop.views.book_list"
    assert re.fullmatch(
        r"N\+1: 30× SELECT shop_author\.id FROM shop_author WHERE shop_author\.id = \? "
        r"at shop/views\.py:12 in book_list \(\d+\.\d+ ms\)",
        f.message,
    ), f.message


def test_n_plus_one_threshold() -> None:
    """Four repeats are not an N+1 at the default threshold of 5; five are; the factory sets
    another threshold."""
    assert analyzers.detect_n_plus_one(record(n_plus_one_body(4))) == []
    assert len(analyzers.detect_n_plus_one(record(n_plus_one_body(5)))) == 1
    tl = record(n_plus_one_body(9))
    assert analyzers.n_plus_one(threshold=10)(tl) == []
    assert len(analyzers.n_plus_one(threshold=3)(tl)) == 1
    assert analyzers.n_plus_one(min_total_ms=60_000)(tl) == []


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, "5", True, None])
def test_n_plus_one_refuses_bad_thresholds(bad: Any) -> None:
    """A threshold that is not an integer of at least 2 is refused with a clear message."""
    with pytest.raises(ValueError, match="threshold must be an integer of at least 2"):
        analyzers.n_plus_one(threshold=bad)


def test_n_plus_one_reads_the_old_attribute_name() -> None:
    """Timelines from today's recorder (``db.statement``) are analyzed like the new name."""
    (f,) = analyzers.detect_n_plus_one(record(n_plus_one_body(6, old_names=True)))
    assert f.attrs["count"] == 6


def test_n_plus_one_without_call_site_names_the_view_and_template() -> None:
    """Without ``code.*`` attributes the finding names the enclosing view; queries fired while
    a template rendered also name the template."""

    def body() -> None:
        with (
            stagetrace.stage("shop.views.book_list", kind="view"),
            stagetrace.stage("shop/book_list.html", kind="template"),
            stagetrace.stage("shop/_row.html", kind="template"),
        ):
            for _ in loop(5):
                pass

    (f,) = analyzers.detect_n_plus_one(record(body))
    assert f.attrs["template"] == "shop/_row.html"
    assert f.attrs["view"] == "shop.views.book_list"
    assert "call_site" not in f.attrs
    assert " in view shop.views.book_list, rendering shop/_row.html (" in f.message


def test_n_plus_one_ignores_transaction_control_and_distinct_statements() -> None:
    """Savepoints of a loop of atomic blocks, and distinct statements, are not N+1s."""

    def body() -> None:
        for i in range(8):
            with query(f'SAVEPOINT "s1_x{i}"'), query(f"SELECT * FROM t{i} WHERE id = 1"):
                pass
            with query(f'RELEASE SAVEPOINT "s1_x{i}"'):
                pass

    assert analyzers.detect_n_plus_one(record(body)) == []


def test_analyzers_skip_timelines_with_few_queries_without_grouping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With fewer queries than the threshold (read from the per-kind summary) no stage is
    grouped or fingerprinted."""
    from stagetrace.analyzers import _queries

    def fail(tl: Timeline) -> Any:
        raise AssertionError("stages were grouped")

    tl = record(n_plus_one_body(3))
    monkeypatch.setattr(_queries, "_group_queries", fail)
    monkeypatch.setattr(_queries, "_duplicate_groups", fail)
    assert analyzers.detect_n_plus_one(tl) == []
    assert analyzers.duplicate_query(threshold=5)(tl) == []
    with pytest.raises(AssertionError, match="grouped"):
        analyzers.n_plus_one(threshold=3)(tl)


def test_duplicate_query_groups_by_first_execution() -> None:
    """Queries marked ``stagetrace.duplicate_of`` (pointing at the first or at the previous
    identical query) are reported once per original, with every execution's stage id."""
    ids: dict[str, int] = {}

    def body() -> None:
        for i in range(3):
            attrs = {} if i == 0 else {"stagetrace.duplicate_of": ids["a"] + (i - 1)}
            with query("SELECT * FROM cfg WHERE k = %s", **attrs):
                cur = stagetrace.current_timeline()
                assert cur is not None
                ids.setdefault("a", cur.stage_count - 1)
        with query("SELECT * FROM once WHERE k = %s"):
            pass

    tl = record(body)
    (f,) = analyzers.detect_duplicate_queries(tl)
    assert f.kind == "duplicate_query"
    assert f.attrs["count"] == 3
    first = ids["a"]
    assert f.stages == (first, first + 1, first + 2)
    assert f.message.startswith("duplicate query: 3× SELECT * FROM cfg WHERE k = ? with the same")
    assert analyzers.duplicate_query(threshold=4)(tl) == []


def test_analyzers_run_in_the_pipeline_and_findings_are_exported() -> None:
    """By default (no `analyzers` configured) both analyzers run in the pipeline and attach
    findings that survive `to_dict` and `from_dict` (what the jsonl sink writes and `summary`
    reads)."""
    stagetrace.reset()
    with stagetrace.capture() as timelines, stagetrace.timeline("job"):
        n_plus_one_body(6)()
    (tl,) = timelines
    assert [f.kind for f in tl.findings] == ["n_plus_one"]
    again = Timeline.from_dict(tl.to_dict())
    assert again.findings == tl.findings


def test_log_findings_once_per_route_and_fingerprint(caplog: pytest.LogCaptureFixture) -> None:
    """The same pattern on the same route is logged once per process, at WARNING on logger
    ``stagetrace.findings``; another route, or a forgotten log, logs again."""
    analyzers.reset_logged()
    tl = record(n_plus_one_body(6))
    tl = tl.with_findings(analyzers.detect_n_plus_one(tl))
    with caplog.at_level(logging.WARNING, logger="stagetrace"):
        assert analyzers.log_findings(tl) == 1
        assert analyzers.log_findings(tl) == 0
        other = {**tl.to_dict(), "protocol": "http", "route": "other/", "method": "GET"}
        assert analyzers.log_findings(Timeline.from_dict(other)) == 1
        analyzers.reset_logged()
        assert analyzers.log_findings(tl) == 1
    records = [r for r in caplog.records if r.name == "stagetrace.findings"]
    assert len(records) == 3
    assert all(r.levelno == logging.WARNING for r in records)
    assert "N+1: 6×" in records[0].getMessage()
    analyzers.reset_logged()


def test_findings_can_be_silenced_apart_from_internal_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Raising ``stagetrace.findings``'s level keeps findings out of the application's logs
    while stagetrace's own warnings (an internal error) still reach them."""
    from stagetrace import _guard

    analyzers.reset_logged()
    tl = record(n_plus_one_body(6))
    tl = tl.with_findings(analyzers.detect_n_plus_one(tl))
    findings_logger = logging.getLogger("stagetrace.findings")
    findings_logger.setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.WARNING, logger="stagetrace"):
            analyzers.log_findings(tl)
            _guard.report("tests.silenced-findings", RuntimeError("boom"))
    finally:
        findings_logger.setLevel(logging.NOTSET)
        analyzers.reset_logged()
    assert [r.name for r in caplog.records] == ["stagetrace"]
    assert "tests.silenced-findings" in caplog.records[0].getMessage()


def test_log_findings_is_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past MAX_KEYS distinct patterns, one line says so and nothing more is remembered."""
    from stagetrace.analyzers import _log

    analyzers.reset_logged()
    monkeypatch.setattr(_log, "MAX_KEYS", 2)
    base = record(lambda: None)
    with caplog.at_level(logging.WARNING, logger="stagetrace"):
        for i in range(5):
            f = Finding("n_plus_one", f"m{i}", (), {"fingerprint": f"fp{i}"})
            analyzers.log_findings(base.with_findings([f]))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "further new ones are not logged" in messages[2]
    assert len(stagetrace._state.STATE.logged_findings) == 2
    analyzers.reset_logged()


# --- the example apps --------------------------------------------------------------------


def example_findings(path: Path) -> dict[str, list[list[Finding]]]:
    out: dict[str, list[list[Finding]]] = {}
    with path.open(encoding="utf-8") as stream:
        for tl in read_jsonl(stream):
            assert isinstance(tl, Timeline), tl
            found = analyzers.detect_n_plus_one(tl)
            out.setdefault(tl.path or "", []).append(found)
    return out


def test_example_n_plus_one_view_yields_exactly_one_finding(django_recording: Path) -> None:
    """The bookshop's N+1 view (/api/books/) gives one n_plus_one finding per request; its
    select_related version (/api/books/fast/), the prefetch_related one (/api/authors/), the
    other select_related pages (/books/, /api/books/1/) and the other views give none."""
    found = example_findings(django_recording)
    for findings in found["/api/books/"]:
        (f,) = findings
        assert "shop_author" in f.attrs["fingerprint"]
        assert f.attrs["count"] >= 5
    for path, runs in found.items():
        if path != "/api/books/":
            assert all(r == [] for r in runs), (path, runs)
    assert {"/books/", "/api/books/1/", "/authors/2/", "/api/books/fast/", "/api/authors/"} <= set(
        found
    )


def test_example_n_plus_one_names_the_loop_file_and_line(django_recording: Path) -> None:
    """The finding names the line of examples/django_site/shop/views.py whose loop touches
    ``b.author`` — the first frame in the user's code."""
    views = ROOT / "examples" / "django_site" / "shop" / "views.py"
    line = next(
        i for i, text in enumerate(views.read_text().splitlines(), 1) if "b.author.name" in text
    )
    (f,) = example_findings(django_recording)["/api/books/"][0]
    assert str(f.attrs["code.file.path"]).endswith("shop/views.py")
    assert f.attrs["code.line.number"] == line
    # Python 3.11 names the comprehension's own frame; 3.12 inlines comprehensions
    assert str(f.attrs["code.function.name"]).startswith("api_books")
    assert f"shop/views.py:{line}" in f.message


def test_fastapi_example_has_no_query_findings(fastapi_recording: Path) -> None:
    """The FastAPI example runs no SQL: its recording yields no findings."""
    for runs in example_findings(fastapi_recording).values():
        assert all(r == [] for r in runs)


def test_call_site_function_names_agree_across_pythons():
    """The call site's function is named the same on every supported Python: 3.10 has no
    `co_qualname`, so a comprehension in a view used to be just `<listcomp>` there."""
    import sys

    from stagetrace._sql import _frame_function

    def api_books():
        return [_frame_function(sys._getframe()) for _ in range(1)]

    def nested():
        return [[_frame_function(sys._getframe()) for _ in range(1)] for _ in range(1)]

    if sys.version_info < (3, 12):
        assert api_books()[0].endswith("api_books.<locals>.<listcomp>")
        assert nested()[0][0].endswith("nested.<locals>.<listcomp>.<listcomp>")
    else:  # comprehensions are inlined (PEP 709): the function's own frame is the call site
        assert api_books()[0].endswith("<locals>.api_books")
    assert _frame_function(sys._getframe()) == "test_call_site_function_names_agree_across_pythons"


def test_duplicate_queries_of_one_statement_are_one_finding() -> None:
    """An N+1 over a foreign key whose ids repeat runs each id's query several times: one
    duplicate_query finding for the statement (with the number of parameter sets), not one per
    id — ten of them used to push the waterfall off the page."""
    first: dict[int, int] = {}

    def body() -> None:
        for i in range(12):
            key = i % 4
            attrs = {"stagetrace.duplicate_of": first[key]} if key in first else {}
            with query("SELECT * FROM author WHERE id = %s", **attrs):
                cur = stagetrace.current_timeline()
                assert cur is not None
                first.setdefault(key, cur.stage_count - 1)

    tl = record(body)
    (f,) = analyzers.detect_duplicate_queries(tl)
    assert f.attrs["count"] == 12 and f.attrs["parameter_sets"] == 4
    assert len(f.stages) == 12 and list(f.stages) == sorted(f.stages)
    assert f.message.startswith("duplicate queries: 12× SELECT * FROM author WHERE id = ?, 4 sets")


def _mixed_body() -> None:
    """An N+1 under a template inside a view, plus duplicates with two parameter sets."""
    with stagetrace.stage("shop.views.book_list", kind="view"):
        with stagetrace.stage("books.html", kind="template"):
            for _ in loop(6, site=SITE):
                pass
        first: list[int] = []
        for i in range(3):  # the same query three times, marked as the recorder marks them
            attrs = {"stagetrace.duplicate_of": first[0] + i - 1} if first else {}
            with query("SELECT * FROM cfg WHERE k = %s", **attrs):
                cur = stagetrace.current_timeline()
                assert cur is not None
                first = first or [cur.stage_count - 1]


def test_analysis_reads_rows_without_building_stages_and_finds_the_same() -> None:
    """The analyzers read a lazy timeline's ``db.query`` stages as rows (no `Stage` built):
    their findings are exactly those of the same timeline with every stage built, and
    `Timeline.rows` / `Timeline.lineage` agree with `stages` / `ancestors`."""
    lazy = record(_mixed_body)
    built = record(_mixed_body)
    built.stages  # noqa: B018 - build every stage: the analyzers then read Stage objects
    both = [analyzers.n_plus_one(threshold=5), analyzers.duplicate_query()]
    lazy_found = [f for a in both for f in a(lazy)]
    built_found = [f for a in both for f in a(built)]
    assert lazy._stages is None  # the analysis built no stage
    assert [f.kind for f in lazy_found] == ["n_plus_one", "duplicate_query"]
    assert [(f.kind, f.stages, f.attrs["count"]) for f in lazy_found] == [
        (f.kind, f.stages, f.attrs["count"]) for f in built_found
    ]
    n1 = lazy_found[0]
    assert n1.attrs["template"] == "books.html" and n1.attrs["view"] == "shop.views.book_list"
    assert n1.attrs["code.file.path"] == "shop/views.py"
    rows = lazy.rows("db.query")
    assert [(i, name, attrs) for i, name, _, attrs in rows] == [
        (s.id, s.name, s.attrs) for s in lazy.stages if s.kind == "db.query"
    ]
    assert [d for _, _, d, _ in rows] == [s.duration_ns for s in lazy.of_kind("db.query")]
    assert list(record(_mixed_body).lineage(rows[0][0])) == [
        (s.kind, s.name) for s in lazy.ancestors(lazy.stage(rows[0][0]))
    ]


def test_queries_cut_to_the_same_text_are_grouped_by_their_statement_hash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Queries whose recorded text was cut carry ``stagetrace.db.query.hash`` (of the whole
    statement): the analyzers group by it, so two statements cut to one text are two N+1
    patterns, each finding with its hash; without the attribute (short texts, older
    recordings) grouping is by fingerprint alone, as before."""
    cut = 'SELECT "shop_author"."id", "shop_author"."name" FROM "shop_a…'

    def body() -> None:
        for h in ("a" * 16, "b" * 16):
            for _ in range(5):
                with query(cut, **{"stagetrace.db.query.hash": h}):
                    pass
        for _ in range(5):
            with query(cut):
                pass

    tl = record(body)
    found = analyzers.n_plus_one()(tl)
    assert sorted(f.attrs.get("stagetrace.db.query.hash", "-") for f in found) == [
        "-",
        "a" * 16,
        "b" * 16,
    ]
    assert all(f.attrs["count"] == 5 for f in found)
    assert len({f.attrs["fingerprint"] for f in found}) == 1
    analyzers.reset_logged()  # each is logged: the hash is part of what is logged once
    try:
        with caplog.at_level(logging.WARNING, logger="stagetrace"):
            assert analyzers.log_findings(tl.with_findings(found)) == 3
    finally:
        analyzers.reset_logged()
    assert len([r for r in caplog.records if r.name == "stagetrace.findings"]) == 3
