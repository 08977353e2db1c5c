"""``stagetrace report``: one self-contained page, data embedded safely, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stagetrace import cli
from stagetrace.report import embed_json, render_html
from tests.helpers import sample_timeline

HOSTILE = "</script><script>window.__pwned = 1</script><!-- \u2028\u2029 & <b>"


def page_data(page: str) -> dict:
    (raw,) = re.findall(
        r'<script type="application/json" id="stagetrace-data">(.*?)</script>', page, re.S
    )
    return json.loads(raw)


def test_embed_json_cannot_close_the_script_element() -> None:
    """``</script>``, ``<!--``, ``&`` and U+2028/2029 never appear raw; the JSON reads back
    unchanged, lone surrogates included."""
    data = {"path": HOSTILE, "lone": "\ud800"}
    text = embed_json(data)
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in text
    assert text.isascii()
    assert json.loads(text) == data


def test_non_finite_numbers_in_a_recording_do_not_stop_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file written before the jsonl sink wrote them as strings holds bare ``NaN`` and
    ``Infinity`` tokens (Python reads them as floats): the page shows them as strings, where
    it used to stop with a ValueError traceback."""
    data = sample_timeline().to_dict()
    data["findings"][0]["attrs"]["ratio"] = float("nan")
    data["stages"][0]["attrs"]["up"] = float("-inf")
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(data) + "\n")
    assert "NaN" in src.read_text()
    out = tmp_path / "r.html"
    assert cli.main(["report", str(src), "-o", str(out)]) == 0
    (item,) = page_data(out.read_text(encoding="utf-8"))["timelines"]
    assert item["findings"][0]["attrs"]["ratio"] == "NaN"
    assert item["stages"][0][7]["up"] == "-Infinity"


def test_page_is_self_contained(tmp_path: Path) -> None:
    """No URL to load anything from: no src/href attributes, no @import or url() in CSS, and
    a Content-Security-Policy that allows only the page's own inline script and style."""
    page = render_html([sample_timeline(path=HOSTILE)])
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page
    (csp,) = re.findall(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert "default-src 'none'" in csp
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    # the hostile path is inside the data only, escaped
    assert "window.__pwned" in page and "</script><script>window" not in page
    assert page_data(page)["timelines"][0]["path"] == HOSTILE


def test_bidi_controls_are_replaced_in_the_page() -> None:
    """A bidi override in a path (``/invoice-\\u202efdp.exe``) would show the rest of the
    text reversed (``/invoice-exe.pdf``) however it is escaped: the page's data has each bidi
    control as U+FFFD, the rest unchanged, an escaped backslash before a ``u202e`` too."""
    bidi = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    tl = sample_timeline(path="/invoice-\u202efdp.exe", route="a\\u202e" + bidi)
    page = render_html([tl])
    (item,) = page_data(page)["timelines"]
    assert item["path"] == "/invoice-\ufffdfdp.exe"
    assert item["route"] == "a\\u202e" + "\ufffd" * len(bidi)


def test_page_data_describes_every_stage() -> None:
    """Each stage is in the page: kind, timing, attributes, error, middleware phases."""
    tl = sample_timeline()
    data = page_data(render_html([tl]))
    (item,) = data["timelines"]
    assert len(item["stages"]) == len(tl.stages)
    for st, row in zip(tl.stages, item["stages"], strict=True):
        assert row[0] == st.id and row[1] == st.parent
        assert data["kinds"][row[2]] == st.kind
        assert row[3:7] == [st.name, st.start_ns, st.duration_ns, st.self_ns]
        if st.kind == "middleware":
            assert row[9] == [st.phases["in"], st.phases["out"]]
    assert item["findings"][0]["kind"] == "n_plus_one"


def test_report_command(
    django_recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command writes the page with every recorded timeline and the N+1 findings found
    by the analyzers; --limit keeps the newest N."""
    out = tmp_path / "report.html"
    assert cli.main(["report", str(django_recording), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"stagetrace: wrote {out} (27 requests, ")
    data = page_data(out.read_text(encoding="utf-8"))
    assert len(data["timelines"]) == 27
    n1 = [t for t in data["timelines"] if t["route"] == "api/books/"]
    assert len(n1) == 3
    assert all(t["findings"][0]["kind"] == "n_plus_one" for t in n1)
    assert cli.main(["report", str(django_recording), "-o", str(out), "--limit", "5"]) == 0
    data = page_data(out.read_text(encoding="utf-8"))
    assert data["total"] == 27 and len(data["timelines"]) == 5
    assert "(the newest 5 of 27)" in out.read_text(encoding="utf-8")


def test_limit_keeps_the_newest_by_start_time(tmp_path: Path) -> None:
    """--limit N keeps the N requests that started last, whatever the order of the lines:
    ``stagetrace report app.jsonl*`` reads the current file before the rotated one, and kept
    the rotated file's old requests."""
    t0 = 1_795_000_000_000_000_000
    current = tmp_path / "app.jsonl"
    rotated = tmp_path / "app.jsonl.1"
    current.write_text(
        "".join(
            json.dumps(sample_timeline(request_id=f"new{i}", start_unix_nano=t0 + 60 * 10**9 + i)
                       .to_dict()) + "\n"
            for i in (0, 1)
        )
    )  # fmt: skip
    rotated.write_text(
        "".join(
            json.dumps(sample_timeline(request_id=f"old{i}", start_unix_nano=t0 + i).to_dict())
            + "\n"
            for i in (0, 1, 2)
        )
    )
    out = tmp_path / "r.html"
    assert cli.main(["report", str(current), str(rotated), "-o", str(out), "--limit", "3"]) == 0
    data = page_data(out.read_text(encoding="utf-8"))
    assert [t["request_id"] for t in data["timelines"]] == ["old2", "new0", "new1"]


def test_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad lines and missing files: one line each, exit 1, the good timelines still written;
    nothing readable: nothing written; an output directory that does not exist: refused."""
    good = json.dumps(sample_timeline().to_dict())
    src = tmp_path / "t.jsonl"
    src.write_text(f"{good}\n{{broken\n")
    out = tmp_path / "r.html"
    assert cli.main(["report", str(src), str(tmp_path / "gone.jsonl"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"stagetrace: {src}:2: not valid JSON (")
    assert err[1] == f"stagetrace: {tmp_path / 'gone.jsonl'}: no such file"
    assert err[2].startswith(f"stagetrace: wrote {out} (1 requests")
    assert len(page_data(out.read_text())["timelines"]) == 1

    out2 = tmp_path / "r2.html"
    assert cli.main(["report", str(tmp_path / "gone.jsonl"), "-o", str(out2)]) == 1
    assert not out2.exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        "stagetrace: no timelines to report; nothing written"
    )
    nowhere = tmp_path / "no" / "r.html"
    assert cli.main(["report", str(src), "-o", str(nowhere)]) == 2
    assert capsys.readouterr().err == (
        f"stagetrace: {nowhere}: directory {nowhere.parent} does not exist\n"
    )


def test_the_page_names_only_the_files_its_requests_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that gave no timeline (missing, or only bad lines) is reported on standard
    error, and not named in the page's header as one the requests came from."""
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(sample_timeline().to_dict()) + "\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{broken\n")
    out = tmp_path / "r.html"
    gone = tmp_path / "gone.jsonl"
    assert cli.main(["report", str(gone), str(src), str(broken), "-o", str(out)]) == 1
    capsys.readouterr()
    page = out.read_text(encoding="utf-8")
    assert f'<span class="meta">1 request from {src}</span>' in page


def test_a_file_name_that_is_not_utf8_does_not_stop_the_report(tmp_path: Path) -> None:
    """A file name in another encoding (a Latin-1 name reaches Python as a lone surrogate) and
    such a ``--title`` are shown with U+FFFD in the page, where the page used to fail to be
    written with a UnicodeEncodeError traceback."""
    import os

    src = tmp_path / os.fsdecode(b"r\xe9sultats.jsonl")
    src.write_text(json.dumps(sample_timeline().to_dict()) + "\n")
    out = tmp_path / "r.html"
    title = os.fsdecode(b"caf\xe9")
    assert cli.main(["report", str(src), "-o", str(out), "--title", title]) == 0
    page = out.read_text(encoding="utf-8")
    assert "r\ufffdsultats.jsonl" in page and "<title>caf\ufffd</title>" in page


def test_report_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``-o -`` prints the page."""
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(sample_timeline().to_dict()) + "\n")
    assert cli.main(["report", str(src), "-o", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!DOCTYPE html>")
    assert out.rstrip().endswith("</html>")
