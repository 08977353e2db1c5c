"""The stagetrace command line: show and demo, their filters, widths and handling of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from stagetrace.cli import main

from . import waterfalls
from .helpers import sample_timeline


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def line(**overrides) -> str:
    return json.dumps(sample_timeline(**overrides).to_dict())


@pytest.fixture
def mixed(tmp_path):
    """A file as a user would have: Django routes (no leading slash) and Starlette routes."""
    path = tmp_path / "t.jsonl"
    timelines = [
        sample_timeline(request_id="r0", route="albums/", path="/albums/"),
        sample_timeline(request_id="r1", route="albums/<int:pk>/", path="/albums/1/"),
        sample_timeline(request_id="r2", route="albums/", path="/albums/"),
        sample_timeline(request_id="r3", route="albums/<int:pk>/", path="/albums/2/", status=404),
        sample_timeline(request_id="r4", route="/items/{item_id}", path="/items/9", status=500),
        sample_timeline(request_id="r5", route="albums/", path="/albums/", duration_ns=90_000_000),
    ]
    write_jsonl(path, [json.dumps(t.to_dict()) for t in timelines])
    return path


def shown(out: str) -> list[str]:
    """The request ids in the headers of the waterfalls printed."""
    return re.findall(r"  request (\S+)", out)


def test_show_prints_a_waterfall_per_timeline(tmp_path, capsys):
    """`stagetrace show FILE` renders every timeline in the file."""
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [line(), line()])
    assert main(["show", str(path), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.count("GET /books/ → 200") == 2
    assert "SessionMiddleware" in out


def test_summary_prints_requests_text_harmlessly(tmp_path, capsys):
    """A path (no route matched) with an escape sequence or a bidi override is printed by
    `summary` as the waterfall prints it, with ``?``, never raw to the terminal."""
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [line(route=None, path="/x\x1b[2J\u202efdp.exe")])
    assert main(["summary", str(path), "--width", "200"]) == 0
    out = capsys.readouterr().out
    assert "GET /x?[2J?fdp.exe (no route)" in out
    assert "\x1b" not in out and "\u202e" not in out


def test_last_applies_after_the_filters(mixed, capsys):
    """--route R --last 1 shows the newest timeline OF THAT ROUTE (it printed nothing when
    --last was applied first)."""
    assert main(["show", str(mixed), "--route", "albums/<int:pk>/", "--last", "1"]) == 0
    assert shown(capsys.readouterr().out) == ["r3"]
    assert main(["show", str(mixed), "--last", "2"]) == 0
    assert shown(capsys.readouterr().out) == ["r4", "r5"]
    assert main(["show", str(mixed), "--route", "albums/", "--last", "5"]) == 0
    assert shown(capsys.readouterr().out) == ["r0", "r2", "r5"]


def test_last_is_the_newest_by_start_time(tmp_path, capsys):
    """--last N shows the N that started last, oldest of them first, whatever the order of
    the lines: ``cat app.jsonl*`` puts the current file before the rotated one, and
    several processes append a timeline when it ends, not when it started."""
    t0 = 1_795_000_000_000_000_000
    current = [line(request_id=f"new{i}", start_unix_nano=t0 + 60_000_000_000 + i) for i in (0, 1)]
    rotated = [line(request_id=f"old{i}", start_unix_nano=t0 + i) for i in (0, 1, 2)]
    path = tmp_path / "both.jsonl"
    write_jsonl(path, current + rotated)  # as `cat app.jsonl app.jsonl.1` gives them
    assert main(["show", str(path), "--last", "3"]) == 0
    assert shown(capsys.readouterr().out) == ["old2", "new0", "new1"]


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", ""])
def test_a_bad_last_is_refused(mixed, capsys, value):
    """--last takes a whole number from 1 up; anything else is one line on stderr, exit 2."""
    with pytest.raises(SystemExit) as exc:
        main(["show", str(mixed), "--last", value])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err
    assert err.startswith("stagetrace show: error: argument --last: expected a whole number")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--status", "6xx"], "--status"),
        (["--status", "40"], "--status"),
        (["--min-ms", "-3"], "--min-ms"),
        (["--min-ms", "nan"], "--min-ms"),
        (["--width", "10"], "--width"),
        (["--width", "wide"], "--width"),
        (["--color", "sometimes"], "--color"),
    ],
)
def test_bad_option_values_are_refused(mixed, capsys, args, option):
    """Every bad value is refused before anything is read: one line naming the option."""
    with pytest.raises(SystemExit) as exc:
        main(["show", str(mixed), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"argument {option}" in err


def test_route_matches_with_or_without_the_leading_slash(mixed, capsys):
    """Django templates have no leading slash, Starlette's have one: either spelling matches."""
    assert main(["show", str(mixed), "--route", "/albums/"]) == 0
    assert shown(capsys.readouterr().out) == ["r0", "r2", "r5"]
    assert main(["show", str(mixed), "--route", "items/{item_id}"]) == 0
    assert shown(capsys.readouterr().out) == ["r4"]
    assert main(["show", str(mixed), "--route", "albums/*"]) == 0
    assert shown(capsys.readouterr().out) == ["r0", "r1", "r2", "r3", "r5"]


def test_route_selects_a_job_by_the_name_summary_lists_it_under(tmp_path, capsys):
    """A job timeline (a Celery task, ``stagetrace.timeline("reports.nightly")``) has no route
    and no path: ``summary`` lists it under its name, and ``show --route NAME`` selects it by
    that name, a glob too (it matched nothing, so a task could not be picked out)."""
    import stagetrace

    path = tmp_path / "t.jsonl"
    stagetrace.configure(jsonl=str(path))
    for name in ("reports.nightly", "reports.weekly"):
        with stagetrace.timeline(name), stagetrace.stage("render"):
            pass
    stagetrace.flush()
    with path.open("a") as f:
        f.write(line(request_id="r0") + "\n")
    assert main(["summary", str(path)]) == 0
    assert "reports.nightly" in capsys.readouterr().out
    assert main(["show", str(path), "--route", "reports.nightly", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "reports.nightly" in out and "reports.weekly" not in out and "GET" not in out
    assert main(["show", str(path), "--route", "reports.*", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "reports.nightly" in out and "reports.weekly" in out and "GET" not in out


def test_route_matches_with_or_without_the_trailing_slash(mixed, capsys):
    """Most Django templates end in a slash, Starlette's do not: ``--route albums`` finds
    ``albums/`` (it matched nothing), ``--route /items/{item_id}/`` finds ``/items/{item_id}``."""
    assert main(["show", str(mixed), "--route", "albums"]) == 0
    assert shown(capsys.readouterr().out) == ["r0", "r2", "r5"]
    assert main(["show", str(mixed), "--route", "/items/{item_id}/"]) == 0
    assert shown(capsys.readouterr().out) == ["r4"]


def test_path_status_and_duration_filters(mixed, capsys):
    """--path matches the request path (globs with *), --status a code or class, --min-ms the
    duration; all given filters must match."""
    assert main(["show", str(mixed), "--path", "/albums/2/"]) == 0
    assert shown(capsys.readouterr().out) == ["r3"]
    assert main(["show", str(mixed), "--status", "4xx,500"]) == 0
    assert shown(capsys.readouterr().out) == ["r3", "r4"]
    assert main(["show", str(mixed), "--min-ms", "50"]) == 0
    assert shown(capsys.readouterr().out) == ["r5"]
    assert main(["show", str(mixed), "--path", "/albums/*", "--status", "200"]) == 0
    assert shown(capsys.readouterr().out) == ["r0", "r1", "r2", "r5"]


def test_nothing_matched_is_said_and_exits_1(mixed, capsys):
    """A filter that matches nothing prints nothing on stdout, one line on stderr, exit 1,
    and hints at --path when the value was a path."""
    assert main(["show", str(mixed), "--route", "/artists/"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"stagetrace: no timeline matched --route /artists/ (of 6 in {mixed})\n"
    assert main(["show", str(mixed), "--route", "/albums/2/"]) == 1
    assert "1 has that path (use --path)" in capsys.readouterr().err


def test_path_hint_only_when_the_path_would_match(mixed, capsys):
    """The --path hint is given only when --path would find what --route did not: not for a
    route that matched but was left out by another filter (the hint would send the user to a
    filter that finds nothing either), nor for a path the other filters rule out."""
    assert main(["show", str(mixed), "--route", "albums", "--min-ms", "1000"]) == 1
    assert capsys.readouterr().err == (
        f"stagetrace: no timeline matched --route albums --min-ms 1000.0 (of 6 in {mixed})\n"
    )
    assert main(["show", str(mixed), "--route", "/albums/2/", "--status", "5xx"]) == 1
    assert "use --path" not in capsys.readouterr().err
    assert main(["show", str(mixed), "--route", "/albums/2/", "--status", "4xx"]) == 1
    assert "1 has that path (use --path)" in capsys.readouterr().err


def test_a_line_with_a_malformed_summary_or_finding_is_one_bad_line(tmp_path):
    """A line whose ``summary.by_kind`` entry or finding is not an object (a hand-edited or
    corrupted file) is one bad line on standard error; the good lines after it are still
    read, by every command, with no traceback."""
    good = json.loads(line())
    by_kind = json.loads(line())
    by_kind["summary"]["by_kind"]["view"] = True
    finding = json.loads(line())
    finding["findings"].append("n_plus_one")
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [json.dumps(d) for d in (by_kind, finding, good)])
    html = tmp_path / "r.html"
    for args in (["show"], ["summary"], ["report", "-o", str(html)]):
        cmd = [sys.executable, "-m", "stagetrace", *args, str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 1
        problems = [p for p in done.stderr.splitlines() if not p.startswith("stagetrace: wrote")]
        assert problems == [
            f"stagetrace: {path}:1: not a stagetrace timeline "
            "(summary.by_kind.view: expected an object)",
            f"stagetrace: {path}:2: not a stagetrace timeline (finding: expected an object)",
        ]
    assert html.exists()


@pytest.mark.parametrize("compression", ["xz", "bz2"])
def test_a_file_compressed_with_another_tool_is_one_clear_line(tmp_path, compression):
    """A rotated file compressed with xz or bzip2 (logrotate's ``compresscmd``) is said to be
    so in one line, not reported as a screenful of "not valid JSON" lines."""
    import bz2
    import lzma

    data = "".join(line() + "\n" for _ in range(40)).encode()
    packed = lzma.compress(data) if compression == "xz" else bz2.compress(data)
    path = tmp_path / f"app.jsonl.1.{compression}"
    path.write_bytes(packed)
    name = "xz" if compression == "xz" else "bzip2"
    for args in (["show"], ["summary"], ["report", "-o", str(tmp_path / "r.html")]):
        cmd = [sys.executable, "-m", "stagetrace", *args, str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.splitlines()[0] == (
            f"stagetrace: {path}:1: compressed with {name}, which stagetrace does not read "
            "(gzip it, or decompress it into standard input: -)"
        ), done.stderr
        assert "not valid JSON" not in done.stderr


def test_show_follows_the_terminal_width(mixed):
    """Without --width, show follows COLUMNS (the terminal) like the demo; --width wins."""
    env = {**os.environ, "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "stagetrace", "show", str(mixed)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=True)
    assert max(len(x) for x in out.stdout.splitlines()) == 80
    out = subprocess.run(
        [*cmd, "--width", "100"], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    assert max(len(x) for x in out.stdout.splitlines()) == 100


@pytest.mark.parametrize("command", ["show", "summary"])
def test_output_that_cannot_take_unicode_gets_ascii(tmp_path, command):
    """Standard output in an encoding without the waterfall's glyphs (``PYTHONIOENCODING=ascii``,
    a Latin-1 terminal) gets ASCII bars and ``?`` for what it lacks, as the console sink does,
    not a UnicodeEncodeError traceback."""
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [line(route=None, path="/caf\u00e9/\u65e5\u672c")])
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "100"}
    cmd = [sys.executable, "-m", "stagetrace", command, str(path)]
    out = subprocess.run(cmd, capture_output=True, env=env, timeout=60)
    assert out.returncode == 0 and b"Traceback" not in out.stderr, out.stderr
    assert b"GET /caf?/?? " in out.stdout


def test_show_verbose_and_sql(tmp_path, capsys):
    """-v expands collapsed repeats; --sql adds the SQL text under the queries."""
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [json.dumps(waterfalls.n_plus_one().to_dict())])
    assert main(["show", str(path), "--width", "80"]) == 0
    assert "30× fetch shop.Publisher" in capsys.readouterr().out
    assert main(["show", str(path), "--width", "80", "-v"]) == 0
    assert capsys.readouterr().out.count("fetch shop.Publisher") == 30
    assert main(["show", str(path), "--width", "80", "--sql"]) == 0
    assert "SELECT … FROM shop_publisher WHERE" in capsys.readouterr().out


def test_missing_file_is_one_line_and_exit_1(tmp_path, capsys):
    """A missing file gives a single line on stderr, no traceback."""
    assert main(["show", str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "no such file" in err and "Traceback" not in err


def test_corrupt_lines_are_reported_and_good_ones_still_shown(tmp_path, capsys):
    """Bad lines name their line number; good timelines are still printed; exit is non-zero."""
    good = line()
    wrong_schema = json.dumps({**sample_timeline().to_dict(), "schema": "other@9"})
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [good, "{not json", wrong_schema, good[: len(good) // 2]])
    assert main(["show", str(path), "--color", "never"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("GET /books/") == 1
    errors = captured.err.strip().splitlines()
    assert errors[0].startswith(f"stagetrace: {path}:2: not valid JSON")
    assert errors[1].startswith(f"stagetrace: {path}:3: not a stagetrace timeline")
    assert "unsupported schema 'other@9'" in errors[1]
    assert errors[2].startswith(f"stagetrace: {path}:4: not valid JSON")


def test_bad_lines_with_filters_still_show_the_matches(tmp_path, capsys):
    """Filters apply to the good timelines; the bad lines are still reported, exit 1."""
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [line(request_id="a", route="x/"), "{", line(request_id="b", route="y/")])
    assert main(["show", str(path), "--route", "y/"]) == 1
    captured = capsys.readouterr()
    assert shown(captured.out) == ["b"]
    assert captured.err.startswith(f"stagetrace: {path}:2: not valid JSON")
    assert captured.err.count("\n") == 1


def test_show_reads_a_gzip_compressed_file(mixed, tmp_path, capsys):
    """A file compressed with gzip (told by its content, whatever its name) shows the same as
    the plain one — the page says every command reads them; `show` printed one "not valid JSON"
    per line."""
    import gzip

    assert main(["show", str(mixed), "--color", "never"]) == 0
    plain = capsys.readouterr().out
    for name in ("t.jsonl.gz", "rotated.jsonl"):
        packed = tmp_path / name
        packed.write_bytes(gzip.compress(mixed.read_bytes()))
        assert main(["show", str(packed), "--color", "never"]) == 0
        captured = capsys.readouterr()
        assert captured.out == plain and captured.err == ""


def test_a_truncated_gzip_file_shows_what_it_holds_and_says_where_it_ends(mixed, tmp_path, capsys):
    """A compressed file cut short (a copy interrupted, a disk filled up): the complete
    timelines before the cut are shown, the end is one line on standard error, exit 1."""
    import gzip

    data = gzip.compress(mixed.read_bytes() * 50)  # 300 timelines
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert main(["show", str(cut), "--color", "never"]) == 1
    captured = capsys.readouterr()
    assert 6 <= len(shown(captured.out)) < 300
    assert "ends early or is corrupt" in captured.err and "Traceback" not in captured.err


def test_a_directory_or_empty_file_is_an_error(tmp_path, capsys):
    """A directory or an empty file is one line on stderr and exit 1."""
    assert main(["show", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["show", str(tmp_path / "empty.jsonl")]) == 1
    assert "no timelines" in capsys.readouterr().err


def test_binary_garbage_does_not_crash(tmp_path, capsys):
    """Bytes that are not text are a bad line, not a traceback."""
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    assert main(["show", str(path)]) == 1
    assert "line" not in capsys.readouterr().out


def test_standard_input(mixed):
    """`show -` reads standard input."""
    proc = subprocess.run(
        [sys.executable, "-m", "stagetrace", "show", "-", "--route", "/items/{item_id}"],
        input=mixed.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and shown(proc.stdout) == ["r4"]


@pytest.mark.parametrize("command", ["show", "summary"])
def test_standard_input_compressed(mixed, command):
    """`zcat`-less pipes: a gzip-compressed file on standard input is read as the same file
    given by path is (told by its first bytes), by `show -` and `summary -`."""
    import gzip

    packed = gzip.compress(mixed.read_bytes())
    args = [sys.executable, "-m", "stagetrace", command, "-"]
    if command == "show":
        args += ["--route", "/items/{item_id}"]
    proc = subprocess.run(args, input=packed, capture_output=True, timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"not valid JSON" not in proc.stderr
    if command == "show":
        assert shown(out) == ["r4"]
    else:
        assert "/items/{item_id}" in out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes: POSIX")
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("command", ["show", "summary", "report"])
def test_a_named_pipe_is_read_as_a_file(mixed, tmp_path, command, packed):
    """A named pipe given as the file — ``stagetrace summary <(zcat app.jsonl.gz)`` in a
    shell, a FIFO: the file was opened once to peek at its first bytes and again to read it, or
    seeked back, so `show` found "no timelines" (what the peek had read was gone with it) and
    `summary` and `report` failed with "not seekable"."""
    import gzip
    import threading

    # more than 256 lines (the progress is updated every 256: a pipe has no position)
    data = mixed.read_bytes() * 50
    if packed:
        data = gzip.compress(data)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:  # blocks until the reader opens it
            f.write(data[:1])  # the first byte alone, as a slow writer's
            f.flush()
            time.sleep(0.3)
            f.write(data[1:])

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    out = tmp_path / "report.html"
    args = [sys.executable, "-m", "stagetrace", command, str(fifo)]
    args += ["-o", str(out)] if command == "report" else []
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    writer.join(10)
    assert proc.returncode == 0, proc.stderr
    assert "not valid JSON" not in proc.stderr and "stopped" not in proc.stderr, proc.stderr
    if command == "show":
        assert shown(proc.stdout) == ["r0", "r1", "r2", "r3", "r4", "r5"] * 50
    elif command == "summary":
        assert proc.stdout.startswith("300 timelines") and "/items/{item_id}" in proc.stdout
    else:
        assert "(300 requests" in proc.stderr + proc.stdout and out.stat().st_size > 0


@pytest.mark.parametrize("command", ["show", "summary"])
def test_reading_standard_input_leaves_it_open(mixed, monkeypatch, command):
    """Called in-process (an embedding tool, a REPL), `show -` and `summary -` leave standard
    input open: the text wrapper they read it through used to close its buffer when it was
    collected."""
    import gc
    import io

    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(mixed.read_bytes())))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main([command, "-"]) == 0
    gc.collect()
    assert not stdin.buffer.closed


def test_a_closed_pipe_is_quiet(mixed):
    """`stagetrace show FILE | head -1` ends without an error message."""
    big = mixed.parent / "big.jsonl"
    big.write_text(mixed.read_text() * 200)
    proc = subprocess.run(
        f"{sys.executable} -m stagetrace show {big} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.startswith("GET /albums/") and proc.stderr == ""


def test_console_script_runs_as_module(tmp_path):
    """`python -m stagetrace show` works and reports errors without a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "stagetrace", "show", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"stagetrace: {tmp_path / 'x'}: no such file"


def test_demo_follows_the_terminal_width():
    """The demo's waterfalls follow COLUMNS, as show does."""
    pytest.importorskip("django")
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "stagetrace", "demo", "--color", "never"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.split("\n# ")[1:]
    assert len(blocks) == 5
    for block in blocks:
        waterfall = block.split("\n", 1)[1].split("\nYour own project")[0]
        assert max(len(x) for x in waterfall.splitlines()) <= 80
    assert "20× fetch shop.Author" in proc.stdout  # the N+1 collapsed
    # the N+1 is shown in its waterfall, not logged first, out of place (piped output too)
    assert "n_plus_one" in proc.stdout and "N+1" not in proc.stderr


def _queries_timeline(repeats: dict[str, int], *, analyzed: bool) -> str:
    """One JSON line: a job running each statement of `repeats` that many times, recorded with
    the default analyzers on (its findings in the line) or off."""
    import stagetrace

    stagetrace.reset()
    if not analyzed:
        stagetrace.configure(analyzers=[])
    with stagetrace.capture() as timelines, stagetrace.timeline("job"):
        for sql, n in repeats.items():
            for _ in range(n):
                with stagetrace.stage("SELECT", kind="db.query", **{"db.query.text": sql}):
                    pass
    (tl,) = timelines
    return json.dumps(tl.to_dict())


def test_summary_threshold_applies_to_timelines_analyzed_when_recorded(tmp_path, capsys):
    """`summary --threshold N` is the N+1 threshold of the summary, also for timelines that
    carry the findings of the analyzers they were recorded with: 7 repeats recorded as an N+1
    at the default 5 are none at 10, and 3 repeats (none at 5) are one at 3. It used to keep
    the recorded findings and apply N only to timelines recorded without analyzers."""
    author = 'SELECT * FROM "author" WHERE "id" = %s'
    book = 'SELECT * FROM "book" WHERE "id" = %s'
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [_queries_timeline({author: 7, book: 3}, analyzed=True)])
    assert '"n_plus_one"' in path.read_text()  # recorded with its finding

    def n_plus_one(*extra: str) -> list[dict]:
        capsys.readouterr()
        assert main(["summary", str(path), "--json", *extra]) == 0
        found = json.loads(capsys.readouterr().out)["findings"]
        return sorted((f for f in found if f["kind"] == "n_plus_one"), key=lambda f: f["message"])

    (default,) = n_plus_one()
    assert "7×" in default["message"]
    assert n_plus_one("--threshold", "10") == []
    assert [f["occurrences"] for f in n_plus_one("--threshold", "3")] == [3, 7]


def test_summary_threshold_with_no_analyze_is_refused(tmp_path, capsys):
    """`--threshold` with `--no-analyze` (only the recorded findings) would do nothing: refused
    with one line, exit 2, before anything is read."""
    assert main(["summary", str(tmp_path / "gone.jsonl"), "--no-analyze", "--threshold", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threshold" in err and "--no-analyze" in err


def _run_on(command, paths, tmp_path):
    if command == "show":
        (path,) = paths
        return main(["show", path, "--color", "never"])
    extra = ["-o", str(tmp_path / "r.html")] if command == "report" else []
    return main([command, *paths, *extra])


@pytest.mark.parametrize("command", ["show", "summary", "report"])
@pytest.mark.parametrize("bad", ["not a directory", "symlink loop"])
def test_a_path_that_cannot_be_opened_is_one_line_naming_it(command, bad, mixed, tmp_path, capsys):
    """A path that cannot be opened for a reason other than a missing file or a directory (a
    file taken for a directory, a symlink loop) is one line naming it, exit 1, among other
    inputs too; `show` used to end with an OSError traceback."""
    if bad == "not a directory":
        path = str(mixed / "t.jsonl")
    else:
        path = str(tmp_path / "loop")
        os.symlink(path, path)
    paths = [path] if command == "show" else [str(mixed), path]
    assert _run_on(command, paths, tmp_path) == 1
    err = [e for e in capsys.readouterr().err.splitlines() if "wrote" not in e]
    assert [e for e in err if path in e] == [
        f"stagetrace: {path}: cannot be read "
        + (
            "(Not a directory)"
            if bad == "not a directory"
            else "(Too many levels of symbolic links)"
        )
    ], err


@pytest.mark.parametrize("command", ["show", "summary", "report"])
def test_a_blank_or_multiline_path_is_named_visibly_on_one_line(command, mixed, tmp_path, capsys):
    """An empty argument (`stagetrace summary $UNSET a.jsonl`) was reported as
    "stagetrace: : no such file", naming nothing, and a name with a line break split the
    one-line message in two; both are named quoted, with escapes."""
    for path, shown in (("", "''"), ("a\nb.jsonl", "'a\\nb.jsonl'"), (" x", "' x'")):
        paths = [path] if command == "show" else [str(mixed), path]
        assert _run_on(command, paths, tmp_path) == 1
        err = [e for e in capsys.readouterr().err.splitlines() if "wrote" not in e]
        assert err[-1 if command == "show" else 0] == f"stagetrace: {shown}: no such file", err
        assert "b.jsonl" not in "\n".join(e for e in err if "no such file" not in e)


@pytest.mark.parametrize("command", ["show", "summary", "report"])
def test_a_closed_standard_input_is_one_line(command, mixed, tmp_path, monkeypatch, capsys):
    """`-` with standard input closed (`stagetrace show - <&-`): one line naming <stdin>, exit
    1, where a TypeError traceback ended the command."""
    monkeypatch.setattr(sys, "stdin", None)
    paths = ["-"] if command == "show" else [str(mixed), "-"]
    assert _run_on(command, paths, tmp_path) == 1
    err = [e for e in capsys.readouterr().err.splitlines() if "wrote" not in e]
    assert err == ["stagetrace: <stdin>: standard input is closed"]
