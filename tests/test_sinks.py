"""Built-in sinks: memory ring buffer, JSON lines file, console waterfall."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import stagetrace
from stagetrace.sinks import ConsoleSink, JsonlSink, MemorySink, render_waterfall

from .helpers import assert_golden, sample_timeline


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


def test_waterfall_plain_golden():
    """The plain-text waterfall of a fixed timeline matches its golden file."""
    assert_golden("waterfall.txt", render_waterfall(sample_timeline(), width=110))


def test_waterfall_color_golden():
    """Colour mode adds ANSI codes per kind and red for errors."""
    text = render_waterfall(sample_timeline(), width=110, color=True)
    assert "\x1b[35m" in text and "\x1b[31m" in text
    assert_golden("waterfall-color.txt", text)


def test_waterfall_ascii_golden():
    """Without Unicode the waterfall uses ASCII bars only."""
    text = render_waterfall(sample_timeline(), width=110, unicode=False)
    assert text.isascii()
    assert_golden("waterfall-ascii.txt", text)


def test_waterfall_shows_middleware_phases_depth_and_errors():
    """Middleware rows carry in/out, children are indented under parents, errors are flagged."""
    text = render_waterfall(sample_timeline(), width=140)
    rows = text.splitlines()
    session = next(r for r in rows if "SessionMiddleware" in r)
    assert "[in 0.20 / out 1.00]" in session
    row = next(r for r in rows if "books/_row.html" in r)
    lst = next(r for r in rows if "books/list.html" in r)
    assert row.index("template") > lst.index("template")
    assert "✗ TemplateSyntaxError" in row
    assert "2 more stages not kept" in text
    assert "! n_plus_one: 3 similar queries" in text


def test_console_sink_uses_color_only_on_a_terminal():
    """A plain stream gets no escape codes; color='always' forces them."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, tty = io.StringIO(), Tty()
    ConsoleSink(plain).emit(sample_timeline())
    ConsoleSink(tty, width=100).emit(sample_timeline())
    assert "\x1b[" not in plain.getvalue() and "SessionMiddleware" in plain.getvalue()
    assert "\x1b[" in tty.getvalue()
    forced = io.StringIO()
    ConsoleSink(forced, color="always").emit(sample_timeline())
    assert "\x1b[" in forced.getvalue()


def test_console_sink_falls_back_to_ascii_on_a_narrow_encoding():
    """A stream that cannot encode block characters gets ASCII bars, not an exception."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    ConsoleSink(stream).emit(sample_timeline())
    stream.flush()
    assert b"#" in raw.getvalue() and b"SessionMiddleware" in raw.getvalue()
