"""Upgrade safety: files written by the earlier schemas, `stagetrace/timeline@1` and `@2`, stay
readable.

`tests/fixtures/timelines-v1.jsonl` and `timelines-v2.jsonl` were recorded by the `@1` and `@2`
code itself (see tests/fixtures/README.md). Every reader a user has for such a file —
`read_jsonl`, `Timeline.from_dict`, `stagetrace show`, `summary` and `report` — reads all of
it, and writing a timeline back upgrades it to the current schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

import stagetrace
from stagetrace import Timeline
from stagetrace.sinks import read_jsonl

V1 = Path(__file__).parent / "fixtures" / "timelines-v1.jsonl"
V2 = Path(__file__).parent / "fixtures" / "timelines-v2.jsonl"


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


LINES = _lines(V1)
LINES_V2 = _lines(V2)
#: Each fixture, its number of timelines, and of those the requests (the job has no status).
FIXTURES = [pytest.param(V1, 15, id="v1"), pytest.param(V2, 17, id="v2")]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stagetrace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120", "NO_COLOR": "1"},
    )


def test_fixture_is_the_previous_schema() -> None:
    """The fixture really is @1 (so this file tests something): every line says so, it covers
    Django, FastAPI and a job, and it has no stage kind that @1 did not know."""
    assert stagetrace.SCHEMA != "stagetrace/timeline@1"
    assert {d["schema"] for d in LINES} == {"stagetrace/timeline@1"}
    assert {d["framework"] for d in LINES} == {"django", "fastapi", "python"}
    assert not any(s["kind"] == "dependency" for d in LINES for s in d["stages"])
    assert len(LINES) == 15


def test_read_jsonl_reads_every_line() -> None:
    """`read_jsonl` yields a Timeline for each of the 15 lines and no BadLine."""
    with V1.open(encoding="utf-8") as f:
        items = list(read_jsonl(f))
    assert all(isinstance(t, Timeline) for t in items), [
        t for t in items if not isinstance(t, Timeline)
    ]
    assert len(items) == 15
    n_plus_one = items[1]
    assert n_plus_one.path == "/api/books/"
    assert n_plus_one.by_kind["db.query"].count == 21
    assert [f.kind for f in n_plus_one.findings].count("n_plus_one") == 1
    job = items[-1]
    assert job.protocol == "job"
    assert [(s.name, s.error.type) for s in job.stages if s.error] == [
        ("price basket", "ValueError")
    ]


def test_v2_fixture_is_the_previous_schema() -> None:
    """The second fixture really is @2: every line says so, none has the parent fields @3
    added, it covers Django, FastAPI (with @2's `dependency` stages) and a job."""
    assert {d["schema"] for d in LINES_V2} == {"stagetrace/timeline@2"}
    assert {d["framework"] for d in LINES_V2} == {"django", "fastapi", "python"}
    assert not any("parent_span_id" in d or "trace_flags" in d for d in LINES_V2)
    assert any(s["kind"] == "dependency" for d in LINES_V2 for s in d["stages"])
    assert len(LINES_V2) == 17


def test_read_jsonl_reads_every_v2_line() -> None:
    """`read_jsonl` yields a Timeline for each of the 17 lines, none with a parent."""
    with V2.open(encoding="utf-8") as f:
        items = list(read_jsonl(f))
    assert all(isinstance(t, Timeline) for t in items), [
        t for t in items if not isinstance(t, Timeline)
    ]
    assert len(items) == 17
    assert items[1].path == "/api/books/" and items[1].by_kind["db.query"].count == 21
    assert [f.kind for f in items[1].findings] == ["n_plus_one", "duplicate_query"]
    assert items[10].path == "/items/3" and items[10].by_kind["dependency"].count == 1
    assert {(t.parent_span_id, t.parent_is_remote, t.trace_flags, t.tracestate) for t in items} == {
        (None, False, 1, None)
    }


@pytest.mark.parametrize("lines", [LINES, LINES_V2], ids=["v1", "v2"])
def test_written_back_as_current_schema(lines: list[dict[str, object]]) -> None:
    """Reading an older document and writing it back gives a valid document of the current
    schema (the JSON Schema shipped with the package) that reads back equal, with the same
    stages and no parent."""
    schema = json.loads(resources.files("stagetrace").joinpath("timeline.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for data in lines:
        tl = Timeline.from_dict(data)
        out = tl.to_dict()
        assert out["schema"] == stagetrace.SCHEMA
        validator.validate(out)
        assert Timeline.from_dict(out) == tl
        assert out["stages"] == data["stages"]
        assert out["parent_span_id"] is None and out["parent_is_remote"] is False


def test_a_v1_document_may_not_claim_later_kinds() -> None:
    """The compatibility rule of docs/schema.md: a @1 document with a kind added in @2 is an
    error naming the stage, not silently accepted."""
    data = json.loads(json.dumps(LINES[7]))
    data["stages"][3]["kind"] = "dependency"
    with pytest.raises(stagetrace.SchemaError, match=r"stages\[3\]: unknown stage kind"):
        Timeline.from_dict(data)
    data["schema"] = "stagetrace/timeline@2"
    assert Timeline.from_dict(data).stages[3].kind == "dependency"


def test_unknown_fields_and_attributes_are_ignored() -> None:
    """Readers ignore what they do not know: an extra field and an extra attribute."""
    data = json.loads(json.dumps(LINES[0]))
    data["some_future_field"] = {"x": 1}
    data["stages"][0]["attrs"]["future.attribute"] = "y"
    tl = Timeline.from_dict(data)
    assert "some_future_field" not in tl.to_dict()
    assert tl.stages[0].attrs["future.attribute"] == "y"


@pytest.mark.parametrize(("path", "count"), FIXTURES)
def test_show_reads_older_files(path: Path, count: int) -> None:
    """`stagetrace show` prints a waterfall for each timeline of the file and exits 0."""
    proc = run_cli("show", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.count(" → ") == count - 1  # the requests; the job has no method → status
    assert "GET /api/books/ → 200" in proc.stdout
    assert "n_plus_one" in proc.stdout
    assert "nightly-report" in proc.stdout


@pytest.mark.parametrize(("path", "count"), FIXTURES)
def test_summary_reads_older_files(path: Path, count: int) -> None:
    """`stagetrace summary --json` counts all the file's timelines, their routes and the N+1."""
    proc = run_cli("summary", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    text = json.dumps(out)
    assert out["timelines"] == count
    assert "api/books/" in text and "/items/{item_id}" in text
    assert "n_plus_one" in text


@pytest.mark.parametrize(("path", "count"), FIXTURES)
def test_report_reads_older_files(tmp_path: Path, path: Path, count: int) -> None:
    """`stagetrace report` writes a page holding all the file's timelines."""
    page = tmp_path / "report.html"
    proc = run_cli("report", str(path), "-o", str(page))
    assert proc.returncode == 0, proc.stderr
    html = page.read_text(encoding="utf-8")
    assert html.count('"trace_id"') == count
    assert "/api/books/" in html
