"""``stagetrace summary``: tables and JSON from recorded files, bounded memory, and clear
one-line errors for bad input."""

from __future__ import annotations

import gzip
import json
import os
import pty
import random
import subprocess
import sys
from pathlib import Path

import pytest

from stagetrace import Timeline, _summary, cli
from stagetrace._summary import EXACT, Quantiles, Summary
from tests.helpers import sample_timeline


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_quantiles_are_exact_for_small_series() -> None:
    """Up to EXACT values, quantiles are the nearest-rank values themselves."""
    q = Quantiles()
    for v in range(1, 101):
        q.add(v * 1000)
    assert q.exact
    assert q.quantile(0.5) == 50_000
    assert q.quantile(0.95) == 95_000
    assert q.quantile(0.99) == 99_000
    assert q.quantile(1.0) == 100_000
    assert Quantiles().quantile(0.5) == 0


def test_quantiles_sketch_is_within_one_percent_in_bounded_memory() -> None:
    """Past EXACT values the sketch answers within 1 % of the true quantile, with a few hundred
    buckets for values spread from microseconds to minutes."""
    rng = random.Random(7)
    values = [int(rng.lognormvariate(15, 2.5)) for _ in range(50_000)]
    values += [0] * 100
    q = Quantiles()
    for v in values:
        q.add(v)
    assert not q.exact
    assert len(q._buckets) < 1500
    ordered = sorted(values)
    for p in (0.5, 0.9, 0.95, 0.99, 0.999):
        true = ordered[max(1, -(-int(p * len(values) * 1000) // 1000)) - 1]
        assert abs(q.quantile(p) - true) <= 0.01 * true + 1, p
    assert q.quantile(0.0001) == 0
    assert q.count == len(values)
    assert q.max == max(values)


def test_summary_of_the_example_recordings(
    django_recording: Path, fastapi_recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the example apps' files: every route with its request count and status mix, stage
    kinds, the N+1 statement on top of the query table, and the N+1 finding — in 80 columns."""
    code, out, err = run_cli(
        "summary", str(django_recording), str(fastapi_recording), capsys=capsys
    )
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("48 timelines from 2 files")
    assert any(line.startswith("GET api/books/ ") and " 3 " in line for line in lines)
    assert any(
        line.startswith("GET /items/{item_id}") and "2xx 50% 4xx 50%" in line for line in lines
    )
    assert any(
        line.startswith("POST /orders (no route)") and line.endswith("415") for line in lines
    )
    assert "Stage kinds (by self time)" in lines
    top = lines[lines.index("Top queries by total time") + 2]
    assert "shop_author" in top or "shop_book" in top
    findings = out[out.index("\nFindings\n") :]
    assert "n_plus_one" in findings and "N+1: 20×" in findings
    assert "GET api/books/" in findings


def test_summary_width_follows_option(
    django_recording: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--width 120 uses the room; --width 60 still fits."""
    for width in (60, 120):
        code, out, _ = run_cli(
            "summary", "--width", str(width), str(django_recording), capsys=capsys
        )
        assert code == 0
        assert max(len(line) for line in out.splitlines()) <= width
    wide = run_cli("summary", "--width", "120", str(django_recording), capsys=capsys)[1]
    assert max(len(line) for line in wide.splitlines()) > 80


def test_a_route_too_long_for_its_column_is_cut_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A route longer than the column (a long path that matched no route) is cut with ``…``
    where it stands, aligned with the others: not indented as if it continued a line above."""
    long_path = "/api/v1/organizations/acme/projects/website redesign/members/ada/permissions/"
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps(sample_timeline().to_dict())
        + "\n"
        + json.dumps(sample_timeline(route=None, path=long_path, status=404).to_dict())
        + "\n"
    )
    code, out, _ = run_cli("summary", "--width", "80", str(path), capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    table = lines[lines.index("Routes (by total time)") + 1 :]
    long_row = next(line for line in table if "/api/v1/" in line)
    assert long_row.startswith("GET /api/v1/organizations/"), long_row
    assert "…" in long_row
    assert len(long_row) <= 80


def test_the_header_counts_only_the_files_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ "from N files" counts the files timelines came from, not a missing one beside them."""
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(sample_timeline().to_dict()) + "\n")
    code, out, err = run_cli("summary", str(tmp_path / "gone.jsonl"), str(src), capsys=capsys)
    assert code == 1
    assert err == f"stagetrace: {tmp_path / 'gone.jsonl'}: no such file\n"
    assert out.startswith("1 timeline over "), out.splitlines()[0]
    code, out, _ = run_cli("summary", str(src), str(src), capsys=capsys)
    assert out.startswith("2 timelines from 2 files over "), out.splitlines()[0]


def test_summary_json(django_recording: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json gives the same numbers for machines."""
    code, out, _ = run_cli("summary", "--json", str(django_recording), capsys=capsys)
    assert code == 0
    data = json.loads(out)
    assert data["schema"] == "stagetrace/summary@1"
    assert data["timelines"] == 27
    assert data["files"] == [
        {"path": str(django_recording), "timelines": 27, "bad_lines": 0, "error": None}
    ]
    routes = {r["route"]: r for r in data["routes"]}
    books = routes["GET api/books/"]
    assert books["requests"] == 3
    assert books["statuses"] == {"200": 3}
    assert 0 < books["p50_ms"] <= books["p95_ms"] <= books["p99_ms"] <= books["max_ms"]
    assert routes["GET api/books/<int:pk>/"]["statuses"] == {"200": 3, "404": 3}
    kinds = {k["kind"]: k for k in data["kinds"]}
    assert kinds["db.query"]["stages"] == sum(q["count"] for q in data["queries"])
    assert abs(sum(k["share"] for k in data["kinds"]) - 1) < 0.01
    author = next(q for q in data["queries"] if q["count"] == 60)
    assert "shop_author" in author["fingerprint"]
    assert author["requests"] == 3
    assert author["routes"] == {"GET api/books/": 3}
    # a recorder that marks repeated identical queries adds duplicate_query findings too
    (finding,) = [f for f in data["findings"] if f["kind"] == "n_plus_one"]
    assert {f["kind"] for f in data["findings"]} <= {"n_plus_one", "duplicate_query"}
    assert finding["kind"] == "n_plus_one"
    assert finding["requests"] == 3
    assert finding["occurrences"] == 60
    assert finding["fingerprint"] == author["fingerprint"]


def test_recorded_findings_are_not_counted_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file recorded with the analyzers on keeps its findings; --no-analyze shows only them."""
    tl = sample_timeline()
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(tl.to_dict()) + "\n")
    data = json.loads(run_cli("summary", "--json", str(path), capsys=capsys)[1])
    assert [(f["kind"], f["requests"]) for f in data["findings"]] == [("n_plus_one", 1)]
    data = json.loads(run_cli("summary", "--json", "--no-analyze", str(path), capsys=capsys)[1])
    assert len(data["findings"]) == 1


def test_findings_of_statements_cut_to_one_text_stay_apart_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two N+1 findings whose statements were cut to the same recorded text (same
    fingerprint, different ``stagetrace.db.query.hash``) are two groups in ``--json``, each
    saying which statement it is by that hash (the groups used to look the same)."""
    data = sample_timeline().to_dict()
    fp = "SELECT column_number_0, column_number_1 …"
    data["findings"] = [
        {
            "kind": "n_plus_one",
            "message": f"N+1: {n}× {fp}",
            "stages": [],
            "attrs": {"fingerprint": fp, "count": n, "stagetrace.db.query.hash": h},
        }
        for n, h in ((6, "1111111111111111"), (5, "2222222222222222"))
    ]
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(data) + "\n")
    got = json.loads(run_cli("summary", "--json", str(path), capsys=capsys)[1])
    assert sorted((f["occurrences"], f["query_hash"]) for f in got["findings"]) == [
        (5, "2222222222222222"),
        (6, "1111111111111111"),
    ]


def test_bad_input_one_line_each_and_good_timelines_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing files, directories, bad JSON, non-timeline lines and a truncated gzip file each
    get one line on stderr and a non-zero exit; the good timelines are still summarized."""
    good = json.dumps(sample_timeline().to_dict())
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(f'{good}\nnot json\n{{"schema": "other"}}\n\n{good[:50]}\n{good}\n')
    zipped = tmp_path / "ok.jsonl.gz"
    zipped.write_bytes(gzip.compress((good + "\n").encode()))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress((good + "\n").encode() * 50)[:-20])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out, err = run_cli(
        "summary",
        str(mixed),
        str(tmp_path / "missing.jsonl"),
        str(tmp_path),
        str(zipped),
        str(truncated),
        str(empty),
        capsys=capsys,
    )
    assert code == 1
    problems = err.splitlines()
    assert len(problems) == 7, problems
    assert problems[0] == (
        f"stagetrace: {mixed}:2: not valid JSON (Expecting value: line 1 column 1 (char 0))"
    )
    assert problems[1] == (
        f"stagetrace: {mixed}:3: not a stagetrace timeline (unsupported schema 'other' "
        "(this version reads 'stagetrace/timeline@3', 'stagetrace/timeline@2' and "
        "'stagetrace/timeline@1'))"
    )
    assert problems[2].startswith(f"stagetrace: {mixed}:5: not valid JSON (")
    assert problems[3:] == [
        f"stagetrace: {tmp_path / 'missing.jsonl'}: no such file",
        f"stagetrace: {tmp_path}: is a directory, not a JSON lines file",
        f"stagetrace: {truncated}: reading stopped: Compressed file ended before the "
        "end-of-stream marker was reached",
        f"stagetrace: {empty}: no timelines in the file",
    ]
    # 2 from mixed, 1 from the gzip file, 49 from the truncated one before it broke off
    assert out.startswith("52 timelines from 3 files "), out.splitlines()[0]


def test_no_timelines_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing readable: the problems, then that there is nothing to summarize; exit 1."""
    code, out, err = run_cli("summary", str(tmp_path / "nope.jsonl"), capsys=capsys)
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"stagetrace: {tmp_path / 'nope.jsonl'}: no such file",
        "stagetrace: no timelines to summarize",
    ]


def test_never_a_traceback_from_the_real_command(tmp_path: Path) -> None:
    """Through the installed entry point, binary garbage gives one line per problem."""
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(os.urandom(2000).replace(b"\n", b"") + b"\n\xff\xfe{\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stagetrace", "summary", str(junk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert all(line.startswith("stagetrace: ") for line in proc.stderr.splitlines())


def test_progress_bar_only_on_a_terminal(django_recording: Path, tmp_path: Path) -> None:
    """stderr on a terminal shows a progress bar (then clears it); redirected, nothing."""
    big = tmp_path / "big.jsonl"
    big.write_bytes(django_recording.read_bytes() * 40)
    cmd = [sys.executable, "-m", "stagetrace", "summary", str(big)]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0
    assert plain.stderr == ""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            env={**os.environ, "COLUMNS": "80"},
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert proc.returncode == 0
    shown = b"".join(chunks).decode()
    assert "big.jsonl [" in shown and "% " in shown and " timelines" in shown
    assert shown.endswith("\r")  # the bar is cleared
    assert proc.stdout.startswith(b"1080 timelines")


def test_memory_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many timelines: latencies fold into the sketch; past MAX_KEYS routes, the rest are
    counted under (other)."""
    monkeypatch.setattr(_summary, "MAX_KEYS", 3)
    s = Summary()
    base = sample_timeline()
    data = base.to_dict()
    for i in range(EXACT + 500):
        s.add(Timeline.from_dict({**data, "route": f"r{i % 5}/", "duration_ns": 1_000_000 + i}))
    assert set(s.routes) == {"GET r0/", "GET r1/", "GET r2/", _summary.OTHER}
    assert s.routes[_summary.OTHER].durations.count == sum(
        1 for i in range(EXACT + 500) if i % 5 >= 3
    )
    assert not s.kinds["db.query"].durations.exact
    assert s.kinds["db.query"].stages == base.by_kind["db.query"].count * (EXACT + 500)
