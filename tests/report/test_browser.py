"""The HTML report in a real headless Chromium: it loads without console errors or network
requests, draws each request's waterfall with the middleware onion, shows a clicked stage's
SQL, filters, and survives hostile data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stagetrace import Timeline, cli
from stagetrace.analyzers import sql_text
from stagetrace.sinks import read_jsonl
from tests.helpers import sample_timeline

pytestmark = pytest.mark.browser


def load(browser: Any, page: Path) -> None:
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.as_uri())
    assert browser.execute_script("return document.body.dataset.ready") == "true"


def console_errors(browser: Any) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def by_css(browser: Any, selector: str) -> list[Any]:
    return browser.find_elements("css selector", selector)


def timelines(*paths: Path) -> list[Timeline]:
    out: list[Timeline] = []
    for path in paths:
        with path.open(encoding="utf-8") as f:
            out.extend(t for t in read_jsonl(f) if isinstance(t, Timeline))
    return out


@pytest.fixture(scope="module")
def report(
    django_recording: Path, fastapi_recording: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    code = cli.main(["report", str(django_recording), str(fastapi_recording), "-o", str(out)])
    assert code == 0
    return out


def test_report_loads_draws_and_responds(
    browser: Any, report: Path, django_recording: Path, fastapi_recording: Path, tmp_path: Path
) -> None:
    """The examples' report: no console errors and no network request; every request listed;
    the N+1 request's waterfall has one row and one bar per stage, middleware rows split into
    in-phase, inner layers and out-phase; a click on a query shows its SQL; the finding
    highlights its queries; the filters narrow the list."""
    from selenium.webdriver.support.ui import Select

    recorded = timelines(django_recording, fastapi_recording)
    load(browser, report)
    assert console_errors(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert len(by_css(browser, "#list-body tr")) == len(recorded) == 48
    assert browser.find_element("id", "count").text == "48 of 48 requests"

    # the N+1 request, by route
    Select(browser.find_element("id", "f-route")).select_by_value("api/books/")
    rows = by_css(browser, "#list-body tr")
    assert len(rows) == 3
    assert browser.find_element("id", "count").text == "3 of 48 requests"
    rows[0].click()
    shown_ms = float(rows[0].find_elements("css selector", "td")[3].text)
    tl = next(
        t
        for t in recorded
        if t.route == "api/books/" and f"{t.duration_ns / 1e6:.2f}" == f"{shown_ms:.2f}"
    )
    wf_rows = by_css(browser, "#waterfall .wf-row")
    assert len(wf_rows) == len(tl.stages)
    assert sorted(int(r.get_attribute("data-stage-id")) for r in wf_rows) == [
        s.id for s in tl.stages
    ]
    assert len(by_css(browser, "#waterfall .wf-bar")) == len(tl.stages)
    # bars sit where the stages ran (percent of the request's duration)
    for row in wf_rows[:12]:
        st = tl.stages[int(row.get_attribute("data-stage-id"))]
        left = float(row.find_element("css selector", ".wf-bar").value_of_css_property("left")[:-2])
        track = row.find_element("css selector", ".wf-track").size["width"]
        assert abs(left - track * st.start_ns / tl.duration_ns) <= 1.5, st
    # the middleware onion
    onion = [s for s in tl.stages if s.kind == "middleware" and s.phases and s.phases["out"] > 0]
    assert onion
    for st in onion:
        row = browser.find_element("css selector", f'.wf-row[data-stage-id="{st.id}"]')
        for part in ("wf-in", "wf-inner", "wf-out"):
            assert len(row.find_elements("css selector", "." + part)) == 1, (st.name, part)
        label = row.find_element("css selector", ".wf-label").get_attribute("textContent")
        assert f"in {st.phases['in'] / 1e6:.2f} / out {st.phases['out'] / 1e6:.2f}" in label

    # click a query: its SQL in the details panel
    query = next(
        s for s in tl.stages if s.kind == "db.query" and "shop_author" in (sql_text(s) or "")
    )
    browser.find_element("css selector", f'.wf-row[data-stage-id="{query.id}"]').click()
    sql = browser.find_element("css selector", "#stage-detail pre.sql").text
    assert sql == sql_text(query)
    assert "db.query" in browser.find_element("css selector", "#stage-detail h3").text

    # the finding highlights its 20 queries
    finding = browser.find_element("css selector", "#detail-pane .findings .finding")
    assert "N+1: 20×" in finding.text
    finding.click()
    assert len(by_css(browser, "#waterfall .wf-row.hl")) == 20
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000

    # filters: status class, text, only with findings
    Select(browser.find_element("id", "f-route")).select_by_value("")
    Select(browser.find_element("id", "f-status")).select_by_value("4xx")
    four = sum(1 for t in recorded if t.status is not None and 400 <= t.status < 500)
    assert len(by_css(browser, "#list-body tr")) == four
    Select(browser.find_element("id", "f-status")).select_by_value("")
    browser.find_element("id", "f-text").send_keys("export.csv")
    assert len(by_css(browser, "#list-body tr")) == 3
    browser.find_element("id", "f-text").clear()
    browser.find_element("id", "f-findings").click()
    assert len(by_css(browser, "#list-body tr")) == 3
    # sorted by duration, slowest first
    Select(browser.find_element("id", "f-sort")).select_by_value("fastest")
    durations = [
        float(r.find_elements("css selector", "td")[3].text)
        for r in by_css(browser, "#list-body tr")
    ]
    assert durations == sorted(durations)
    assert console_errors(browser) == []


def test_hostile_data_is_shown_as_text(browser: Any, tmp_path: Path) -> None:
    """A path and SQL holding ``</script>``, markup and U+2028 are displayed literally; no
    script of theirs runs."""
    hostile = (
        "/x</script><script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>\u2028"
    )
    data = sample_timeline(path=hostile).to_dict()
    attrs = data["stages"][6]["attrs"]
    key = "db.query.text" if "db.query.text" in attrs else "db.statement"
    attrs[key] = "SELECT '<b>' </script><script>window.__pwned=3</script>"
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(data) + "\n", encoding="utf-8")
    page = tmp_path / "r.html"
    assert cli.main(["report", str(src), "-o", str(page)]) == 0
    load(browser, page)
    assert console_errors(browser) == []
    assert browser.execute_script("return window.__pwned === undefined")
    assert "/x</script><script>" in browser.find_element("css selector", ".req-head h2").text
    browser.find_element("css selector", '.wf-row[data-stage-id="6"]').click()
    assert browser.find_element("css selector", "#stage-detail pre.sql").text.startswith(
        "SELECT '<b>' </script>"
    )
    assert by_css(browser, "img") == []


def test_jobs_are_found_by_their_name(browser: Any, tmp_path: Path) -> None:
    """Job timelines (`stagetrace.timeline()`, Celery tasks) have no route: the list shows
    their name, and the route menu and the text filter find them by it, as ``show --route``
    and ``summary`` do, rather than lumping every job under "(no route)"."""
    import stagetrace

    with stagetrace.capture() as recorded:
        for name in ("nightly-report", "send-receipts", "nightly-report"):
            with stagetrace.timeline(name):
                pass
    src = tmp_path / "jobs.jsonl"
    src.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in recorded), encoding="utf-8")
    page = tmp_path / "jobs.html"
    assert cli.main(["report", str(src), "-o", str(page)]) == 0
    load(browser, page)
    routes = [o.get_attribute("value") for o in by_css(browser, "#f-route option")]
    assert routes == ["", "nightly-report", "send-receipts"]
    browser.execute_script(
        "var s = document.getElementById('f-route'); s.value = 'send-receipts';"
        "s.dispatchEvent(new Event('change'));"
    )
    assert [r.text for r in by_css(browser, "#list-body tr td:nth-child(2)")] == ["send-receipts"]
    browser.execute_script(
        "var s = document.getElementById('f-route'); s.value = '';"
        "s.dispatchEvent(new Event('change'));"
    )
    browser.find_element("id", "f-text").send_keys("nightly")
    assert browser.find_element("id", "count").text == "2 of 3 requests"
    assert console_errors(browser) == []


def test_a_long_route_stays_inside_the_request_list(browser: Any, tmp_path: Path) -> None:
    """A long route template (FastAPI's ``/api/v1/organizations/{organization_id}/...``, a
    Django regex route) in the route menu and the findings table wraps or is cut inside the
    request list: the list keeps its width, and the menu and the findings table are not drawn
    over the waterfall beside it (the findings' messages squeezed to a few letters a line)."""
    route = (
        "/api/v1/organizations/{organization_id}/projects/{project_id}/members/{member_id}"
        "/permissions"
    )
    data = sample_timeline(route=route, path="/api/v1/organizations/7/projects/3").to_dict()
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(data) + "\n", encoding="utf-8")
    page = tmp_path / "r.html"
    assert cli.main(["report", str(src), "-o", str(page)]) == 0
    load(browser, page)
    browser.find_element("css selector", "#overview summary").click()
    box = browser.execute_script(
        "function right(e) { return e.getBoundingClientRect().right; }"
        "var pane = document.getElementById('list-pane');"
        "return {pane: right(pane), width: pane.getBoundingClientRect().width,"
        " main: document.querySelector('main').getBoundingClientRect().width,"
        " overview: right(document.querySelector('table.overview')),"
        " route: right(document.getElementById('f-route'))};"
    )
    assert box["width"] <= 0.4 * box["main"], box  # the list keeps its 38 % column
    for part in ("overview", "route"):
        assert box[part] <= box["pane"] + 1, (part, box)
    assert console_errors(browser) == []


def test_dev_page_variant_loads(browser: Any, django_recording: Path, tmp_path: Path) -> None:
    """The page as the Django dev page serves it (a notice, a reload button, newest first)
    loads without console errors and lists the newest request first."""
    from stagetrace.report import render_html

    recorded = timelines(django_recording)
    page = tmp_path / "dev.html"
    page.write_text(
        render_html(recorded, notice="a notice", reload_button=True, sort="newest"),
        encoding="utf-8",
    )
    load(browser, page)
    assert console_errors(browser) == []
    assert browser.find_element("id", "notice").text == "a notice"
    assert browser.find_element("id", "f-sort").get_attribute("value") == "newest"
    newest = max(recorded, key=lambda t: t.start_unix_nano)
    first = by_css(browser, "#list-body tr")[0]
    assert newest.path in first.text
    assert browser.find_element("css selector", ".req-head h2").text.startswith(
        f"{newest.method} {newest.path}"
    )


def _page_of(tmp_path: Path, datas: list[dict]) -> Path:
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in datas), encoding="utf-8")
    page = tmp_path / "r.html"
    assert cli.main(["report", str(src), "-o", str(page)]) == 0
    return page


def _request(path: str, status: int | None, errors: dict[int, tuple[str, str]]) -> dict:
    """The sample timeline at `path` with `status`, exceptions on the stages of `errors` only."""
    data = sample_timeline(path=path, status=status, request_id=path, findings=[]).to_dict()
    for st in data["stages"]:
        err = errors.get(st["id"])
        st["error"] = None if err is None else {"type": err[0], "message": err[1]}
    return data


ERROR_REQUESTS = [
    _request("/ok/", 200, {}),
    _request(
        "/books/999/", 404, {4: ("django.http.response.Http404", "No Book matches the query.")}
    ),
    _request("/denied/", 403, {}),
    _request("/caught/", 200, {8: ("django.template.TemplateSyntaxError", "bad tag")}),
    _request("/boom/", 500, {4: ("ValueError", "invalid literal for int() with base 10")}),
    _request("/lost/", None, {0: ("RuntimeError", "worker lost mid-request"), 4: ("X", "y")}),
]


def _paths(browser: Any) -> list[str]:
    """The paths of the requests listed (``GET /path`` in the request column)."""
    return sorted(c.text.split(" ", 1)[1] for c in by_css(browser, "#list-body tr td:nth-child(2)"))


def test_errors_filter_is_5xx_and_failed_requests_not_4xx(browser: Any, tmp_path: Path) -> None:
    """The status menu's "errors" are what stagetrace calls errors elsewhere (the OpenTelemetry
    mapping's server span, after the conventions): a 5xx, or an exception that ended the request
    (on its root stage). A 404 from a view's Http404 (an exception the framework turned into the
    answer) is the client's, under 4xx, as is a 403; an exception the app caught is no error of
    the request. The 404 used to be listed among the errors."""
    from selenium.webdriver.support.ui import Select

    load(browser, _page_of(tmp_path, ERROR_REQUESTS))
    status = Select(browser.find_element("id", "f-status"))
    status.select_by_value("error")
    assert _paths(browser) == ["/boom/", "/lost/"]
    status.select_by_value("4xx")
    assert _paths(browser) == ["/books/999/", "/denied/"]
    status.select_by_value("5xx")
    assert _paths(browser) == ["/boom/"]
    assert console_errors(browser) == []


def test_text_filter_finds_error_messages(browser: Any, tmp_path: Path) -> None:
    """Part of an exception's type or message recorded on a stage finds its request (case
    ignored), as a path or a finding's message does; it used to find nothing."""
    load(browser, _page_of(tmp_path, ERROR_REQUESTS))
    box = browser.find_element("id", "f-text")
    for text, paths in (
        ("no book matches", ["/books/999/"]),
        ("Http404", ["/books/999/"]),
        ("invalid literal", ["/boom/"]),
        ("TemplateSyntaxError bad tag", ["/caught/"]),
        ("worker lost", ["/lost/"]),
    ):
        box.clear()
        box.send_keys(text)
        assert _paths(browser) == paths, text
    assert console_errors(browser) == []


@pytest.mark.parametrize("days", [1, 2])
def test_request_list_fits_its_pane_without_sideways_scrolling(
    browser: Any, tmp_path: Path, days: int
) -> None:
    """Long paths are cut with … inside the request list, which no longer scrolls sideways:
    at 1400 and 1280 px (it did, the path cells taking their full width) and narrower, where the
    request column keeps room to read; the findings badge stays in view at the cell's end.
    Requests of one day show the time of day (the date heads the column); of several, the date
    wraps above it in a narrow list."""
    long = "/api/v1/organizations/7/projects/3/members/99/permissions/" + "x" * 80
    day = 86_400 * 10**9
    datas = [
        sample_timeline(path=long, request_id="a", duration_ns=123_456_789_000).to_dict(),
        sample_timeline(
            path="/books/", request_id="b", start_unix_nano=1764000000000000000 + (days - 1) * day
        ).to_dict(),
    ]
    page = _page_of(tmp_path, datas)
    try:
        for width in (1400, 1280, 1920, 1024, 800):
            browser.set_window_size(width, 900)
            load(browser, page)
            box = browser.execute_script(
                "var wrap = document.getElementById('list-wrap');"
                "var rows = document.querySelectorAll('#list-body tr');"
                "var cell = rows[0].querySelector('td:nth-child(2)');"
                "var badge = cell.querySelector('.badge').getBoundingClientRect();"
                "var c = cell.getBoundingClientRect();"
                "return {scroll: wrap.scrollWidth, client: wrap.clientWidth,"
                " page: document.documentElement.scrollWidth, inner: window.innerWidth,"
                " cell: c.width, badge_in: badge.right <= c.right + 0.5 && badge.width > 0,"
                " times: Array.from(rows).map(function (r) { return r.cells[0].textContent; }),"
                " head: (document.getElementById('th-time') || {}).textContent};"
            )
            assert box["scroll"] <= box["client"], (width, box)
            assert box["page"] <= box["inner"], (width, box)
            assert box["cell"] >= (140 if width >= 1280 else 100), (width, box)
            assert box["badge_in"], (width, box)
            if days == 1:
                assert box["times"] == ["16:00:00.000Z"] * 2, box
                assert box["head"] == "time (UTC)2025-11-24", box
            else:
                assert box["times"] == ["2025-11-24 16:00:00.000Z", "2025-11-25 16:00:00.000Z"]
                assert box["head"] == "time (UTC)", box
            assert console_errors(browser) == []
    finally:
        browser.set_window_size(1400, 900)


def test_findings_table_tells_cut_statements_apart_and_counts_requests(
    browser: Any, tmp_path: Path
) -> None:
    """The findings table groups a pattern by kind, route, fingerprint and — for statements
    whose recorded text was cut — ``stagetrace.db.query.hash``, as the summary and the logs
    do; and it counts requests: two findings of one pattern in one request are one request.
    Two statements cut to the same text used to be one pattern, and counted twice."""
    fp = "SELECT column_number_0, column_number_1 …"

    def finding(hash_: str) -> dict:
        attrs = {"fingerprint": fp, "count": 6, "stagetrace.db.query.hash": hash_}
        return {"kind": "n_plus_one", "message": f"N+1: 6× {fp}", "stages": [], "attrs": attrs}

    two = sample_timeline(path="/a/", request_id="a", findings=[]).to_dict()
    two["findings"] = [finding("1111111111111111"), finding("2222222222222222")]
    again = sample_timeline(path="/b/", request_id="b", findings=[]).to_dict()
    again["findings"] = [finding("1111111111111111"), finding("1111111111111111")]
    load(browser, _page_of(tmp_path, [two, again]))
    browser.find_element("css selector", "#overview summary").click()
    counts = sorted(c.text for c in by_css(browser, "table.overview tr td:first-child"))
    assert counts == ["1×", "2×"], counts
    assert console_errors(browser) == []
