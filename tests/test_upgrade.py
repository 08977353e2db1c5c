"""Upgrade safety: files written by the previous schema, `stagetrace/timeline@1`, stay readable.

`tests/fixtures/timelines-v1.jsonl` was recorded by the `@1` code itself (see
tests/fixtures/README.md). Every reader a user has for such a file — `read_jsonl`,
`Timeline.from_dict`, `stagetrace show`, `summary` and `report` — reads all of it, and writing a
timeline back upgrades it to the current schema.
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
LINES = [json.loads(line) for line in V1.read_text(encoding="utf-8").splitlines() if line]


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


def test_written_back_as_current_schema() -> None:
    """Reading a @1 document and writing it back gives a valid document of the current schema
    (the JSON Schema shipped with the package) that reads back equal."""
    schema = json.loads(resources.files("stagetrace").joinpath("timeline.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for data in LINES:
        tl = Timeline.from_dict(data)
        out = tl.to_dict()
        assert out["schema"] == stagetrace.SCHEMA
        validator.validate(out)
        assert Timeline.from_dict(out) == tl
        assert out["stages"] == data["stages"]


def test_a_v1_document_may_not_claim_later_kinds() -> None:
    """The compatibility rule of docs/schema.md: a @1 document with a kind added in @2 is an
    error naming the stage, not silently accepted."""
    data = json.loads(json.dumps(LINES[7]))
    data["stages"][3]["kind"] = "dependency"
    with pytest.raises(stagetrace.SchemaError, match=r"stages\[3\]: unknown stage kind"):
        Timeline.from_dict(data)
    data["schema"] = stagetrace.SCHEMA
    assert Timeline.from_dict(data).stages[3].kind == "dependency"


def test_unknown_fields_and_attributes_are_ignored() -> None:
    """Readers ignore what they do not know: an extra field and an extra attribute."""
    data = json.loads(json.dumps(LINES[0]))
    data["some_future_field"] = {"x": 1}
    data["stages"][0]["attrs"]["future.attribute"] = "y"
    tl = Timeline.from_dict(data)
    assert "some_future_field" not in tl.to_dict()
    assert tl.stages[0].attrs["future.attribute"] == "y"


def test_show_reads_v1() -> None:
    """`stagetrace show` prints a waterfall for each of the 15 timelines and exits 0."""
    proc = run_cli("show", str(V1))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.count(" → ") == 14  # the 14 requests; the job has no method → status
    assert "GET /api/books/ → 200" in proc.stdout
    assert "n_plus_one" in proc.stdout
    assert "nightly-report" in proc.stdout


def test_summary_reads_v1() -> None:
    """`stagetrace summary --json` counts all 15 timelines, their routes and the N+1."""
    proc = run_cli("summary", "--json", str(V1))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    text = json.dumps(out)
    assert out["timelines"] == 15
    assert "api/books/" in text and "/items/{item_id}" in text
    assert "n_plus_one" in text


def test_report_reads_v1(tmp_path: Path) -> None:
    """`stagetrace report` writes a page holding all 15 timelines."""
    page = tmp_path / "report.html"
    proc = run_cli("report", str(V1), "-o", str(page))
    assert proc.returncode == 0, proc.stderr
    html = page.read_text(encoding="utf-8")
    assert html.count('"trace_id"') == 15
    assert "/api/books/" in html
