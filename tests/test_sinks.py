"""Built-in sinks: memory ring buffer, JSON lines file, console waterfall."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import stagetrace
from stagetrace import Timeline
from stagetrace.sinks import ConsoleSink, JsonlSink, MemorySink, read_jsonl, render_waterfall

from . import waterfalls
from .helpers import assert_golden, doc_example, sample_timeline
from .waterfalls import Builder


def test_memory_sink_keeps_only_the_last_n():
    """The memory sink is a ring buffer of its size."""
    sink = MemorySink(3)
    for i in range(5):
        sink.emit(sample_timeline(request_id=str(i)))
    assert [t.request_id for t in sink.timelines()] == ["2", "3", "4"]
    assert len(sink) == 3


def test_recent_reads_the_configured_memory_sink():
    """stagetrace.recent() returns what the memory sink kept, after a flush."""
    stagetrace.configure(sinks=["memory"], memory_size=2)
    for name in ("a", "b", "c"):
        with stagetrace.timeline(name):
            pass
    assert stagetrace.flush(5)
    assert [t.name for t in stagetrace.recent()] == ["b", "c"]


def test_recent_right_after_a_request_includes_it(tmp_path):
    """``stagetrace.recent()`` right after a request (a Flask test client's, a page of your
    own tooling) includes it: it first waits, briefly, for the timelines finished before the
    call to reach the sinks, which the background worker delivers after the response. It
    returned nothing while a slower sink held the worker up, and without a flush in general
    raced the worker. It never waits for a sink's own flush (an exporter's collector)."""
    flask = pytest.importorskip("flask")
    import time

    import stagetrace.flask

    flushed: list[bool] = []

    class Slow:
        def emit(self, timeline: Timeline) -> None:
            time.sleep(0.2)

        def flush(self) -> None:
            flushed.append(True)

    app = flask.Flask(__name__)
    app.add_url_rule("/ping", "ping", lambda: "pong")
    stagetrace.flask.instrument(app)
    try:
        stagetrace.configure(sinks=[Slow(), "memory"])
        assert app.test_client().get("/ping").data == b"pong"
        assert [t.path for t in stagetrace.recent()] == ["/ping"]
        assert not flushed
    finally:
        stagetrace.flask.uninstrument()


def test_recent_called_by_a_sink_does_not_deliver_from_inside_it():
    """A sink (or analyzer) may call ``stagetrace.recent()`` — a dashboard of the latest
    requests. On the worker it must not deliver what is still queued from inside that sink's
    ``emit``: each sink then got timelines out of order, with its ``emit`` nested as deep as
    the queue was long (a sink holding its own lock would wait for itself)."""
    import threading
    import time

    order: list[str] = []
    inside = threading.local()
    nested: list[bool] = []

    class Dashboard:
        def emit(self, timeline: Timeline) -> None:
            nested.append(getattr(inside, "on", False))
            inside.on = True
            try:
                order.append(timeline.name)
                time.sleep(0.02)  # more timelines queue meanwhile
                stagetrace.recent()
            finally:
                inside.on = False

    stagetrace.configure(sinks=[Dashboard(), "memory"])
    for i in range(30):
        with stagetrace.timeline(f"job{i:02d}"):
            pass
        time.sleep(0.005)
    assert stagetrace.flush(10)
    assert order == sorted(order) and len(order) == 30
    assert not any(nested)
    assert [t.name for t in stagetrace.recent()] == order


def test_jsonl_sink_writes_one_parseable_timeline_per_line(tmp_path):
    """Each line is a complete timeline that round-trips through Timeline.from_dict."""
    path = tmp_path / "t.jsonl"
    stagetrace.configure(jsonl=str(path))
    for i in range(3):
        with stagetrace.timeline("job", i=i), stagetrace.stage("step"):
            pass
    assert stagetrace.flush(5)
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    back = [stagetrace.Timeline.from_dict(json.loads(line)) for line in lines]
    assert [t.stages[0].attrs["i"] for t in back] == [0, 1, 2]
    assert all(len(t.stages) == 2 for t in back)


def test_jsonl_sink_appends_and_reopens_after_rotation(tmp_path):
    """The file is appended to, and a rotated-away file is replaced by a fresh one."""
    path = tmp_path / "t.jsonl"
    path.write_text("")
    sink = JsonlSink(path)
    sink.emit(sample_timeline(request_id="1"))
    os.rename(path, tmp_path / "t.jsonl.1")
    sink.emit(sample_timeline(request_id="2"))
    sink.close()
    assert json.loads((tmp_path / "t.jsonl.1").read_text())["request_id"] == "1"
    assert json.loads(path.read_text())["request_id"] == "2"


def test_jsonl_sink_keeps_a_timeline_holding_text_that_is_not_utf8(tmp_path):
    """A lone surrogate (a file name from os.fsdecode, an environment value) anywhere in a
    timeline is written as U+FFFD: the timeline is kept, not dropped as a sink error."""
    name = os.fsdecode(b"write r\xe9port.csv")
    b = Builder(path="/caf\udce9")
    b.add("gateway", "WSGI", 0, 5, error=("ValueError", "bad \udce9"))
    b.add("custom", name, 1, 2, 0)
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path)
    sink.emit(b.build())
    sink.close()
    (back,) = read_jsonl(path)
    assert back.path == "/caf\ufffd" and back.stages[1].name == "write r\ufffdport.csv"
    assert back.stages[0].error.message == "bad \ufffd"


def test_console_sink_prints_a_timeline_holding_text_that_is_not_utf8():
    """A lone surrogate in a name is shown as ``?``: a stream that encodes strictly gets the
    waterfall, not a UnicodeEncodeError."""
    b = Builder(path="/caf\udce9")
    gw = b.add("gateway", "WSGI", 0, 5)
    b.add("view", os.fsdecode(b"app.r\xe9port"), 1, 1, gw)
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    ConsoleSink(stream, width=80).emit(b.build())
    stream.flush()
    assert b"GET /caf?" in raw.getvalue() and b"r?port" in raw.getvalue()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_takes_the_jsonl_file_lock_for_itself(tmp_path):
    """After fork() the child writes through its own open file: the parent holding the file's
    flock (mid-write) excludes the child, instead of both sharing one lock and interleaving."""
    import fcntl

    sink = JsonlSink(tmp_path / "t.jsonl")
    assert sink._fd is not None
    fcntl.flock(sink._fd, fcntl.LOCK_EX)  # the parent's worker, writing a line
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 3
            try:
                sink.after_fork()
                fd = sink._open()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    code = 1  # took a lock the parent holds
                except BlockingIOError:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        fcntl.flock(sink._fd, fcntl.LOCK_UN)
    assert os.waitstatus_to_exitcode(status) == 0
    sink.emit(sample_timeline(request_id="after"))
    sink.close()
    assert [t.request_id for t in read_jsonl(tmp_path / "t.jsonl")] == ["after"]


def test_a_forked_child_does_not_inherit_the_console_lock_held():
    """A fork while the parent's worker prints a waterfall copies its lock held; after_fork()
    gives the child a free one, or the child would never print (nor finish a flush)."""
    out = io.StringIO()
    sink = ConsoleSink(out, width=80)
    sink._lock.acquire()  # as the parent's worker holds it, mid-write, at the fork
    sink.after_fork()
    sink.emit(sample_timeline())
    assert "SessionMiddleware" in out.getvalue()


def test_jsonl_sink_writes_non_finite_numbers_as_strings(tmp_path):
    """JSON has no NaN or Infinity, and readers other than Python's refuse the bare tokens: an
    attribute that is one (an analyzer's 0/0 ratio) is written as the string ``"NaN"``,
    ``"Infinity"`` or ``"-Infinity"``."""
    nan, inf = float("nan"), float("inf")
    finding = {"kind": "ratio", "message": "m", "stages": [], "attrs": {"ratio": nan}}
    b = Builder(findings=[finding])
    b.add("gateway", "WSGI", 0, 5, attrs={"up": inf, "down": -inf, "ok": 0.5})
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path)
    sink.emit(b.build())
    sink.close()

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in the line")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["findings"][0]["attrs"] == {"ratio": "NaN"}
    assert data["stages"][0]["attrs"] == {"up": "Infinity", "down": "-Infinity", "ok": 0.5}


SHORT_WRITE = textwrap.dedent(
    """
    import os, resource, signal, sys
    from stagetrace.sinks import JsonlSink
    from tests.helpers import sample_timeline

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails (EFBIG)
    sink = JsonlSink(sys.argv[1])
    sink.emit(sample_timeline(request_id="first"))
    size = os.path.getsize(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # full after 100 bytes
    try:
        sink.emit(sample_timeline(request_id="second"))
    except OSError:
        pass
    else:
        sys.exit("the write did not fail")
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    sink.emit(sample_timeline(request_id="third"))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX file size limit")
def test_a_write_cut_short_leaves_no_half_line(tmp_path):
    """A disk that fills up mid-line (here: a file size limit) costs that timeline only: the
    part written is taken back, so the next timeline is a line of its own, readable."""
    path = tmp_path / "t.jsonl"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE, str(path)], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    items = list(read_jsonl(path))
    assert [getattr(t, "request_id", t) for t in items] == ["first", "third"]


WRITER = textwrap.dedent(
    """
    import sys, stagetrace
    stagetrace.configure(jsonl=sys.argv[1], queue_size=10000)
    for i in range(int(sys.argv[2])):
        with stagetrace.timeline("writer", pid_index=sys.argv[3], padding="x" * 9000):
            for _ in range(20):
                with stagetrace.stage("s"):
                    pass
    assert stagetrace.flush(30)
    """
)


def test_jsonl_lines_never_interleave_across_processes(tmp_path):
    """Four processes appending large lines to one file leave only whole lines."""
    path = tmp_path / "shared.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), "150", str(k)]) for k in range(4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    parsed = [json.loads(line) for line in lines[:-1]]
    assert len(parsed) == 600
    counts = {}
    for d in parsed:
        k = d["stages"][0]["attrs"]["pid_index"]
        counts[k] = counts.get(k, 0) + 1
        assert len(d["stages"]) == 21
    assert counts == {"0": 150, "1": 150, "2": 150, "3": 150}


# --- the console waterfall ------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")
EXAMPLES = {"doc-example": sample_timeline(), **waterfalls.all_examples()}


def plain(text: str) -> str:
    return ANSI.sub("", text)


def rows_of(text: str) -> list[str]:
    """The stage rows of a waterfall: the lines that start with the numbers columns."""
    return [line for line in plain(text).splitlines() if re.match(r"^ *\d+(\.\d+)?[smh]? ", line)]


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_waterfall_golden(name, width):
    """Each example timeline renders exactly as its golden file, at 80 and 120 columns."""
    assert_golden(f"waterfall-{name}-{width}.txt", render_waterfall(EXAMPLES[name], width=width))


@pytest.mark.parametrize("name", ["doc-example", "n-plus-one", "django-404"])
def test_waterfall_color_golden(name):
    """Colour adds ANSI codes per kind, red for errors and 5xx, and changes nothing else."""
    tl = EXAMPLES[name]
    text = render_waterfall(tl, width=80, color=True)
    assert "\x1b[35m" in text  # middleware
    assert plain(text) == render_waterfall(tl, width=80)
    assert_golden(f"waterfall-{name}-80-color.txt", text)


@pytest.mark.parametrize("name", ["doc-example", "n-plus-one", "starlette-500"])
def test_waterfall_ascii_golden(name):
    """Without Unicode the waterfall is pure ASCII (bars, markers, and recorded text alike)."""
    text = render_waterfall(EXAMPLES[name], width=80, unicode=False)
    assert text.isascii()
    assert_golden(f"waterfall-{name}-80-ascii.txt", text)


def test_waterfall_verbose_and_sql_golden():
    """-v adds full names and detail lines; --sql adds the SQL under each query."""
    assert_golden(
        "waterfall-starlette-500-80-verbose.txt",
        render_waterfall(EXAMPLES["starlette-500"], width=80, verbose=True),
    )
    assert_golden(
        "waterfall-n-plus-one-80-sql.txt",
        render_waterfall(EXAMPLES["n-plus-one"], width=80, sql=True),
    )


WIDTHS = [40, 53, 64, 80, 99, 100, 120, 200]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_no_line_is_wider_than_the_width(name, width):
    """Every line fits, in every mode: plain, colour (codes not counted), ASCII, -v, --sql."""
    tl = EXAMPLES[name]
    for options in (
        {},
        {"color": True},
        {"unicode": False},
        {"verbose": True},
        {"sql": True, "unicode": False},
    ):
        text = plain(render_waterfall(tl, width=width, **options))
        too_wide = [line for line in text.splitlines() if len(line) > width]
        assert not too_wide, (options, too_wide)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_error_marker_is_shown(name, width):
    """Each stage with an error keeps its ✗ marker on its row at every width, with the
    exception's class name wherever 80 columns or more leave room for it."""
    tl = EXAMPLES[name]
    errors = [s for s in tl.stages if s.error is not None]
    for verbose in (False, True):
        rows = rows_of(render_waterfall(tl, width=width, verbose=verbose))
        marked = [r for r in rows if "✗" in r]
        assert len(marked) == len(errors), (verbose, marked)
        if width >= 80:
            for st, row in zip(errors, marked, strict=True):
                assert "✗ " + st.error.type.rpartition(".")[2] in row


def test_the_404_keeps_its_marker_and_names_at_80_columns():
    """The issue's example: at 80 columns Http404 is still marked and names are readable."""
    text = render_waterfall(waterfalls.django_404(), width=80)
    assert "view PublisherDetailView.get ✗ Http404" in text
    assert "✗ Http404 in view PublisherDetailView.get: No Publisher matches" in text
    for name in ("SessionMiddleware", "AuthenticationMiddleware", "XFrameOptionsMiddleware"):
        assert f"mw {name} " in text
    assert "…iddleware" not in text and "compil…" not in text
    assert "compile SELECT shop.Publisher" in text and "sql SELECT shop_publisher" in text


def test_read_jsonl_takes_a_path_plain_or_compressed(tmp_path):
    """`read_jsonl` reads a file given by its path (str or PathLike, plain or gzip) as it reads
    a stream; a path given as a string was taken for a stream and read as one bad line per
    character."""
    import gzip

    lines = [json.dumps(sample_timeline(request_id=f"r{i}").to_dict()) for i in range(3)]
    plain = tmp_path / "t.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for source in (str(plain), plain, str(packed), packed):
        got = list(read_jsonl(source))
        assert [t.request_id for t in got] == ["r0", "r1", "r2"], source


def test_the_header_names_the_parent_span_of_a_joined_trace():
    """A timeline that continues a caller's trace says which span it hangs under (and whether
    that span is another service's); one that started its own trace says nothing of a parent."""
    data = doc_example()
    text = render_waterfall(Timeline.from_dict(data), width=120)
    assert "parent b7ad6b7169203331 (remote)" in text
    data["parent_is_remote"] = False
    assert "parent b7ad6b7169203331 (local)" in render_waterfall(Timeline.from_dict(data))
    data.update(parent_span_id=None, tracestate=None)
    assert "parent" not in render_waterfall(Timeline.from_dict(data), width=120).splitlines()[0]


def test_an_n_plus_one_collapses_and_fits_on_one_screen():
    """30 (or 300) repeated fetch -> compile + query subtrees are three rows with counts and
    totals; the whole waterfall stays within 40 lines at 80 columns."""
    for repeats in (30, 300):
        tl = waterfalls.n_plus_one(repeats)
        text = render_waterfall(tl, width=80)
        assert len(text.splitlines()) <= 40
        rows = rows_of(text)
        fetch = next(r for r in rows if f"{repeats}× fetch shop.Publisher" in r)
        assert f"{repeats} rows" in fetch
        assert any(f"{repeats}× compile SELECT shop.Publisher" in r for r in rows)
        assert any(f"{repeats}× sql SELECT shop_publisher" in r for r in rows)
        assert sum("Publisher" in r for r in rows) == 2  # the fetch and compile rows, once each
    group = [s for s in waterfalls.n_plus_one(30).stages if s.name == "shop.Publisher"]
    total = sum(s.duration_ns for s in group) / 1e6
    own = sum(s.self_ns for s in group) / 1e6
    row = next(
        r for r in rows_of(render_waterfall(waterfalls.n_plus_one(30), width=80)) if "30×" in r
    )
    assert row.split()[:3] == ["4.00", f"{total:.2f}", f"{own:.2f}"]


def test_verbose_shows_every_repeat():
    """-v expands the groups: one row per stage, no counts."""
    tl = waterfalls.n_plus_one(30)
    rows = rows_of(render_waterfall(tl, width=80, verbose=True))
    assert len(rows) == len(tl.stages)
    assert sum("fetch shop.Publisher" in r for r in rows) == 30
    assert not any("×" in r for r in rows)


def alternating(repeats: int) -> Timeline:
    """A view fetching each book's author, then its publisher: A B A B ..."""
    b = Builder()
    gw = b.add("gateway", "WSGI", 0, 10 + repeats)
    view = b.add("view", "shop.views.books", 0.1, 9 + repeats, gw)
    t = 0.2
    for _ in range(repeats):
        for model in ("shop.Author", "shop.Publisher"):
            b.add("orm.fetch", model, t, 0.4, view, attrs={"rows": 1})
            t += 0.5
    return b.build()


def test_alternating_repeats_collapse_into_one_row_each():
    """A repeating unit of two siblings (author, publisher) collapses too: one row per
    position of the unit; two repetitions alone are left unfolded."""
    rows = rows_of(render_waterfall(alternating(20), width=100))
    assert any(re.search(r"20× (orm\.)?fetch shop\.Author  20 rows", r) for r in rows)
    assert any(re.search(r"20× (orm\.)?fetch shop\.Publisher  20 rows", r) for r in rows)
    assert len(rows) == 4
    rows = rows_of(render_waterfall(alternating(2), width=80))
    assert len(rows) == 6 and not any("×" in r for r in rows)


def test_repeats_with_errors_collapse_and_keep_the_marker():
    """Identical failing calls collapse into one row that still carries the error."""
    b = Builder()
    gw = b.add("gateway", "WSGI", 0, 20)
    view = b.add("view", "shop.views.home", 0.1, 19, gw)
    for i in range(12):
        b.add(
            "cache",
            "default.get",
            1 + i,
            0.5,
            view,
            attrs={"cache.hit": False},
            error=("redis.exceptions.ConnectionError", "Connection refused"),
        )
    text = render_waterfall(b.build(), width=120)
    (row,) = [r for r in rows_of(text) if "cache" in r]
    assert "12× cache default.get ✗ ConnectionError" in row and "0/12 hits" in row
    assert "✗ ConnectionError in cache default.get (12×): Connection refused" in text


def test_deep_trees_keep_room_for_names():
    """Indentation is capped: a 24-deep job still shows the names, and a 1500-deep one
    renders at all (no recursion limit)."""
    text = render_waterfall(waterfalls.deep_nesting(), width=80)
    assert all("custom StatementSectionRenderer" in r for r in rows_of(text)[1:-1])
    assert "sql SELECT ledger_entry ✗ QueryCanceled" in text or "✗ QueryCanceled" in text
    deep = render_waterfall(waterfalls.deep_nesting(1500), width=80)
    assert len(rows_of(deep)) == 1502


def test_odd_timelines_still_render():
    """Schema-valid oddities read from a file (negative offsets, stages outliving the
    timeline, zero durations, empty names, huge counts) render within the width."""
    b = Builder(path="", method=None)
    gw = b.add("gateway", "", 0, 0)
    b.add("view", "", -5, 3, gw)
    b.add("custom", "x" * 500, 2, 10_000_000, gw, error=("E" * 300, "m" * 2000))
    for i in range(3):
        b.add("cache", "default.get", 1, 0, gw, attrs={"cache.hits": 10**12, "cache.keys": -1})
        b.add("db.query", "SELECT t", 1 + i, 0.1, gw, attrs={"db.query.text": 7, "db.rows": "x"})
    tl = b.build()
    for width in (40, 80, 300):
        for options in ({}, {"verbose": True}, {"sql": True, "color": True}):
            text = plain(render_waterfall(tl, width=width, **options))
            assert max(len(x) for x in text.splitlines()) <= width
            assert sum("✗" in r for r in rows_of(text)) == 1


def test_names_are_shortened_to_the_class_or_function():
    """Dotted paths show as their class or function by default, in full under -v."""
    tl = waterfalls.django_404()
    short = render_waterfall(tl, width=120)
    assert "SessionMiddleware" in short
    assert "django.contrib.sessions.middleware.SessionMiddleware" not in short
    assert "PublisherDetailView.get" in short and "shop.views.PublisherDetailView" not in short
    full = render_waterfall(tl, width=120, verbose=True)
    assert "django.contrib.sessions.middleware.SessionMiddleware" in full
    assert "shop.views.PublisherDetailView.get" in full


def test_details_on_the_rows():
    """Rows, cache hits and misses, outbound status and middleware phases are on the rows
    when there is room."""
    text = render_waterfall(waterfalls.starlette_500(), width=120)
    assert "cache default.get  miss" in text
    assert "http.client POST payments.example.com  → 502" in text
    text = render_waterfall(waterfalls.django_404(), width=120)
    assert "middleware SessionMiddleware  in 0.02 out 0.01" in text
    assert "orm.fetch shop.Publisher  0 rows" in text
    text = render_waterfall(waterfalls.background_task(), width=120)
    assert "default.get_many  2/3 hits" in text and "INSERT shop_order  1 row" in text
    b = Builder()  # a sync view under ASGI that waited 0.31 ms for its thread
    gw = b.add("gateway", "ASGI", 0, 5)
    b.add("view", "shop.views.home", 1, 3, gw, attrs={"asgi.thread_wait_ns": 310_000})
    assert "view home  thread wait 0.31" in render_waterfall(b.build(), width=80)


def test_sql_text_is_shortened_and_never_shows_parameter_values():
    """--sql shows the recorded text with whitespace collapsed and a long select list
    elided; parameter values, even when recorded, are never printed."""
    b = Builder()
    gw = b.add("gateway", "WSGI", 0, 5)
    b.add(
        "db.query",
        "SELECT auth_user",
        1,
        1,
        gw,
        attrs={
            "db.query.text": 'SELECT "auth_user"."id",\n  "auth_user"."password", "auth_user"."email"'
            ' FROM "auth_user" WHERE "auth_user"."email" = %s',
            "db.query.parameter.0": "alice@example.com",
        },
    )
    for options in ({"sql": True}, {"verbose": True}):
        text = render_waterfall(b.build(), width=100, **options)
        assert "SELECT … FROM auth_user WHERE auth_user.email = %s" in text
        assert "alice@example.com" not in text


def test_sql_recorded_under_the_old_attribute_name_is_shown():
    """Files written before the semantic-convention rename (db.statement, db.rows) still read."""
    b = Builder()
    gw = b.add("gateway", "WSGI", 0, 5)
    b.add(
        "db.query", "SELECT shop_book", 1, 1, gw, attrs={"db.statement": "SELECT 1", "db.rows": 4}
    )
    text = render_waterfall(b.build(), width=80, sql=True)
    assert "sql SELECT shop_book  4 rows" in text or "db.query SELECT shop_book  4 rows" in text
    assert "SELECT 1" in text


def test_header_shows_when_the_response_was_sent():
    """A timeline that outlived its response (a background task) says when it was sent."""
    text = render_waterfall(waterfalls.background_task(), width=80)
    assert text.startswith("POST /orders → 201  53.10 ms (response sent at 2.00 ms)")
    for tl in (waterfalls.django_404(), waterfalls.starlette_500()):  # sent at the end: quiet
        assert "response sent" not in render_waterfall(tl, width=80)


def test_findings_are_listed_under_the_waterfall():
    """Findings are wrapped to the width under the rows; their stages are tagged where room."""
    text = render_waterfall(waterfalls.n_plus_one(), width=80)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  ! n_plus_one: "))
    assert lines[start + 1].startswith("    ") and "books_by_publisher" in lines[start + 1]
    wide = render_waterfall(waterfalls.n_plus_one(), width=120)
    assert any(
        "sql SELECT shop_publisher  ! n_plus_one" in r
        or "db.query SELECT shop_publisher  ! n_plus_one" in r
        for r in rows_of(wide)
    )


def test_control_characters_from_requests_never_reach_the_terminal():
    """An escape sequence in a request path or error message is printed harmlessly."""
    b = Builder(path="/x\x1b[2J\x1b]0;pwned\x07/")
    gw = b.add("gateway", "WSGI", 0, 5, error=("ValueError", "bad\x1b[31m input\r\n"))
    b.add("view", "app.x\x1b[1m", 1, 1, gw)
    text = render_waterfall(b.build(), width=80)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "GET /x?[2J?]0;pwned?/" in text


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_bidi_controls_from_requests_never_reach_the_terminal():
    """A Unicode bidi override in a path (``/invoice-%E2%80%AEfdp.exe``) would make a terminal
    show the rest of the line reversed, ``/invoice-exe.pdf``: each bidi control is printed as
    ``?``, in the title, names, error messages and findings, verbose or not."""
    finding = {"kind": "x\u202e\x1b[2J", "message": "m \u2067y", "stages": [1], "attrs": {}}
    b = Builder(path="/invoice-\u202efdp.exe", findings=[finding])
    gw = b.add("gateway", "WSGI", 0, 5, error=("ValueError", "bad \u2066input"))
    b.add("view", "app.views.\u200fx", 1, 1, gw)
    for verbose in (False, True):
        text = render_waterfall(b.build(), width=120, verbose=verbose)
        assert not set(text) & set(BIDI) and "\x1b" not in text
        assert "GET /invoice-?fdp.exe" in text
    every = Builder(path=BIDI)
    every.add("gateway", "WSGI", 0, 5)
    assert render_waterfall(every.build(), width=80).startswith("GET " + "?" * len(BIDI) + " ")


def test_middleware_bars_are_thin_while_inner_layers_run():
    """A middleware bar is solid for its own phases and thin in between."""
    row = next(r for r in rows_of(render_waterfall(sample_timeline(), width=80)) if "Session" in r)
    assert re.search("█─+█", row)


def test_console_sink_uses_color_only_on_a_terminal(monkeypatch):
    """A plain stream gets no escape codes; a terminal does; NO_COLOR and FORCE_COLOR win
    over the stream; color='always' forces them."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    plain_stream, tty = io.StringIO(), Tty()
    ConsoleSink(plain_stream).emit(sample_timeline())
    ConsoleSink(tty, width=100).emit(sample_timeline())
    assert "\x1b[" not in plain_stream.getvalue() and "SessionMiddleware" in plain_stream.getvalue()
    assert "\x1b[" in tty.getvalue()
    forced = io.StringIO()
    ConsoleSink(forced, color="always").emit(sample_timeline())
    assert "\x1b[" in forced.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    ConsoleSink(tty).emit(sample_timeline())
    assert "\x1b[" not in tty.getvalue()
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    piped = io.StringIO()
    ConsoleSink(piped).emit(sample_timeline())
    assert "\x1b[" in piped.getvalue()


def test_console_sink_follows_the_terminal_width(monkeypatch):
    """Without a width the sink follows COLUMNS (the terminal); width= overrides it."""
    monkeypatch.setenv("COLUMNS", "72")
    out = io.StringIO()
    ConsoleSink(out).emit(waterfalls.django_404())
    widths = [len(line) for line in out.getvalue().splitlines()]
    assert max(widths) == 72
    out = io.StringIO()
    ConsoleSink(out, width=100).emit(waterfalls.django_404())
    assert max(len(line) for line in out.getvalue().splitlines()) == 100


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_console_sink_follows_the_size_of_its_own_terminal(monkeypatch):
    """On a real terminal (a pty sized 66 columns, no COLUMNS) the sink renders at its size,
    in colour."""
    import fcntl
    import pty
    import struct
    import termios

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 66, 0, 0))
        with open(follower, "w", encoding="utf-8", closefd=False) as tty:
            ConsoleSink(tty).emit(waterfalls.django_404())
        chunks = []
        while True:
            data = os.read(leader, 65536)
            chunks.append(data)
            if len(data) < 65536:
                break
    finally:
        os.close(follower)
        os.close(leader)
    text = b"".join(chunks).decode("utf-8").replace("\r\n", "\n")
    assert "\x1b[" in text
    assert max(len(line) for line in plain(text).splitlines()) == 66


def test_console_sink_verbose_and_sql_options():
    """verbose=True expands repeats; sql=True adds the SQL text under the queries."""
    out = io.StringIO()
    ConsoleSink(out, width=80, verbose=True).emit(waterfalls.n_plus_one())
    assert out.getvalue().count("fetch shop.Publisher") == 30
    out = io.StringIO()
    ConsoleSink(out, width=80, sql=True).emit(waterfalls.n_plus_one())
    text = " ".join(out.getvalue().split())  # the SQL line may wrap
    assert "30× " in text
    assert "SELECT … FROM shop_publisher WHERE shop_publisher.id = %s LIMIT 21" in text


def test_console_sink_falls_back_to_ascii_on_a_narrow_encoding():
    """A stream that cannot encode block characters gets ASCII bars, not an exception."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    ConsoleSink(stream, width=80).emit(waterfalls.django_404())
    stream.flush()
    assert b"#" in raw.getvalue() and b"SessionMiddleware" in raw.getvalue()
    assert b"! Http404" in raw.getvalue()


def test_console_sink_prints_through_the_pipeline(capsys):
    """configure(sinks=["console"]) prints each finished timeline's waterfall on stderr."""
    stagetrace.configure(sinks=["console"])
    with stagetrace.timeline("nightly"), stagetrace.stage("load rows"):
        pass
    assert stagetrace.flush(5)
    err = capsys.readouterr().err
    assert err.startswith("nightly  ") and "custom load rows" in err


def test_a_multiline_error_message_reads_as_words_in_the_waterfall(captured):
    """Line breaks in an error's message are spaces in the waterfall, not ``?``; other control
    characters stay escaped."""
    from stagetrace.sinks import render_waterfall

    with pytest.raises(ValueError), stagetrace.timeline("job"):
        raise ValueError("1 validation error:\n  pin\n\tnot an int \x1b[31m")
    for verbose in (False, True):
        text = render_waterfall(captured[0], width=120, verbose=verbose)
        assert "1 validation error: pin not an int ?[31m" in text
        assert "error:?" not in text and "\x1b" not in text
