"""The documentation's code is real: every ```python block of README.md and docs/*.md runs, each
in a fresh interpreter from the repository root, unless the line before it says why it cannot
(``<!-- snippet: not-run (why) -->``); the configuration page's option table is the one the code
defines; and every relative link in the docs points at a file that exists.

``UPDATE_DOCS=1 python -m pytest tests/test_docs.py`` rewrites the option table from the code.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!-- snippet: not-run \((.+)\) -->$")
TIMEOUT = 120


DOCTEST = """\
import doctest, sys
test = doctest.DocTestParser().get_doctest({code!r}, {{}}, {where!r}, {where!r}, 0)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
runner.run(test, out=sys.stderr.write)
sys.exit(1 if runner.failures else 0)
"""


class Snippet(NamedTuple):
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The ```python blocks of one Markdown file, with the not-run reason given before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: unclosed block")
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            m = NOT_RUN.match(lines[k].strip()) if k >= 0 else None
            out.append(Snippet(path, start + 1, "\n".join(lines[start + 1 : j]) + "\n", m and m[1]))
            i = j + 1
        else:
            i += 1
    return out


ALL = [s for p in DOCS for s in snippets(p)]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STAGETRACE_", "OTEL_"))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.mark.parametrize("snippet", [s for s in ALL if not s.skip_reason], ids=lambda s: s.where)
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    """The block runs to the end without an error in a fresh interpreter (the repository root
    as working directory); a failure names the file and the line of the block."""
    script = tmp_path / "snippet.py"
    if snippet.code.lstrip().startswith(">>>"):
        # An interactive session: run it as a doctest, so the outputs shown are checked too.
        script.write_text(DOCTEST.format(code=snippet.code, where=snippet.where), "utf-8")
    else:
        # Line numbers in a traceback point into the Markdown file: pad the block to its place.
        script.write_text("\n" * snippet.line + snippet.code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        pytest.fail(f"{snippet.where}: the snippet failed (exit {proc.returncode})\n{tail}")


def test_every_doc_has_its_snippets_found() -> None:
    """The collector sees the blocks (a broken fence pattern would silently test nothing), and
    each not-run block says why."""
    assert len(ALL) >= 10
    assert all(s.skip_reason is None or s.skip_reason.strip() for s in ALL)
    assert any(s.path.name == "README.md" for s in ALL)


def test_collector_reads_fences_and_markers(tmp_path: Path) -> None:
    """A block's line is its opening fence; the marker applies to the next block only."""
    md = tmp_path / "x.md"
    md.write_text(
        "# t\n\n<!-- snippet: not-run (needs a server) -->\n```python\nx = 1\n```\n\n"
        "```python\nraise SystemExit(3)\n```\n```sh\nls\n```\n"
    )
    found = snippets(md)
    assert [(s.line, s.skip_reason) for s in found] == [(4, "needs a server"), (8, None)]
    assert found[1].code == "raise SystemExit(3)\n"


#: Pages written on parallel branches (OpenTelemetry export and context, the guarantees, the
#: benchmark tables): links to them are checked once they exist.
ELSEWHERE = {"export.md", "opentelemetry.md", "guarantees.md", "performance.md"}
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link in the README and docs/ names a file that exists (pages moved into
    docs/ left no dangling link behind)."""
    missing = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for target, _anchor in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue
            file = path.parent / target
            if not file.exists() and not (file.parent == ROOT / "docs" and file.name in ELSEWHERE):
                missing.append(f"{path.relative_to(ROOT)}:{n}: {target}")
    assert not missing, "\n".join(missing)


# --- the configuration page's option table ---------------------------------------------------

CONFIG_DOC = ROOT / "docs" / "configuration.md"
TABLE_START = "<!-- options-table: generated from stagetrace._options.OPTIONS -->"
TABLE_END = "<!-- /options-table -->"

#: Defaults that are not a plain value of `Settings`.
_DEFAULT_TEXT = {
    "sinks": "none (`console` under Django `DEBUG`; `jsonl` when a path is set)",
    "jsonl": "unset",
    "service": "`OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, "
    "else `unknown_service`",
    "analyzers": "N+1 and duplicate queries",
    "http_known_methods": "`OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`, else the conventions' "
    "(RFC 9110's, `PATCH`, `QUERY`)",
}
#: Options that only `configure()` (or framework settings) can set: their values are objects.
_NO_ENV = {"analyzers", "tracer_provider", "meter_provider"}


def _default(name: str) -> str:
    from stagetrace._options import Settings

    if name in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[name]
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    if name not in fields:
        return "—"
    value = fields[name].default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value is None:
        return "unset"
    if value == ():
        return "none"
    return f"`{value}`"


def options_table() -> str:
    """The Markdown table of every option, from `OPTIONS` (order, descriptions) and `Settings`
    (defaults)."""
    from stagetrace._options import OPTIONS

    rows = ["| option | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, opt in OPTIONS.items():
        env = "— (`configure()` only)" if name in _NO_ENV else f"`STAGETRACE_{name.upper()}`"
        rows.append(f"| `{name}` | {env} | {_default(name)} | {opt.doc} |")
    return "\n".join(rows)


def test_configuration_page_lists_every_option() -> None:
    """docs/configuration.md's table is exactly the one generated from the code: every option,
    its environment variable, its default and its description (UPDATE_DOCS=1 rewrites it)."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    expected = "\n" + options_table() + "\n"
    if os.environ.get("UPDATE_DOCS") and text[start:end] != expected:
        CONFIG_DOC.write_text(text[:start] + expected + text[end:], encoding="utf-8")
        text = CONFIG_DOC.read_text(encoding="utf-8")
        start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    assert text[start:end] == expected, (
        "docs/configuration.md's option table differs from the code; "
        "rewrite it with UPDATE_DOCS=1 python -m pytest tests/test_docs.py"
    )


def test_option_table_defaults_come_from_settings() -> None:
    """Each default the table shows is the `Settings` field of that option as resolved with
    nothing configured (the few described in words are the ones whose value is computed)."""
    from stagetrace._options import OPTIONS, Settings, resolve, settings_from

    resolved = settings_from(resolve({}, {}, "settings", {}), ())
    for name in OPTIONS:
        if name in _DEFAULT_TEXT:
            continue
        value = getattr(resolved, name)
        shown = _default(name)
        if isinstance(value, bool):
            assert shown == f"`{str(value).lower()}`", name
        elif value in (None, ()):
            assert shown in ("unset", "none"), name
        else:
            assert shown == f"`{value}`", name
    assert Settings().max_stages == 2000
