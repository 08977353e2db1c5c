"""The stagetrace command line: show and demo, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

from stagetrace.cli import main

from .helpers import sample_timeline


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_show_prints_a_waterfall_per_timeline(tmp_path, capsys):
    """`stagetrace show FILE` renders every timeline in the file."""
    good = json.dumps(sample_timeline().to_dict())
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [good, good])
    assert main(["show", str(path), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.count("GET /books/ → 200") == 2
    assert "SessionMiddleware" in out


def test_show_last_and_route_filter(tmp_path, capsys):
    """--last N keeps the newest N; --route keeps one route."""
    lines = [
        json.dumps(sample_timeline(request_id=str(i), route=f"r{i % 2}").to_dict())
        for i in range(5)
    ]
    path = tmp_path / "t.jsonl"
    write_jsonl(path, lines)
    assert main(["show", str(path), "--last", "2", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "request 3" in out and "request 4" in out and "request 2" not in out
    assert main(["show", str(path), "--route", "r1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert out.count(" → 200") == 2


def test_missing_file_is_one_line_and_exit_1(tmp_path, capsys):
    """A missing file gives a single line on stderr, no traceback."""
    assert main(["show", str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "no such file" in err and "Traceback" not in err


def test_corrupt_lines_are_reported_and_good_ones_still_shown(tmp_path, capsys):
    """Bad lines name their line number; good timelines are still printed; exit is non-zero."""
    good = json.dumps(sample_timeline().to_dict())
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


def test_a_directory_or_empty_file_is_an_error(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["show", str(tmp_path / "empty.jsonl")]) == 1
    assert "no timelines" in capsys.readouterr().err


def test_binary_garbage_does_not_crash(tmp_path, capsys):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    assert main(["show", str(path)]) == 1
    assert "line" not in capsys.readouterr().out


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
