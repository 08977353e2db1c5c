"""Test helpers shared by several modules."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from stagetrace import Timeline

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
SCHEMA_DOC = HERE.parent / "docs" / "schema.md"


def wsgi_environ(path: str = "/", **extra: object) -> dict[str, object]:
    """A GET of `path` as a WSGI server passes it to the application; `extra` adds or replaces
    keys (``**{"wsgi.file_wrapper": ...}``, ``HTTP_*`` headers)."""
    env: dict[str, object] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    env.update(extra)
    return env


def doc_example() -> dict:
    """The complete example timeline of docs/schema.md (its only JSON block)."""
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    (block,) = re.findall(r"```json\n(.*?)```", text, re.S)
    return json.loads(block)


def sample_timeline(**overrides: object) -> Timeline:
    """The documented example timeline (a Django request), for renderer and CLI tests."""
    data = doc_example()
    data.update(overrides)
    return Timeline.from_dict(data)


def assert_golden(name: str, text: str) -> None:
    """Compare `text` with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"output differs from golden file {name}"


class UnhashableParam:
    """A query parameter whose ``__hash__`` raises (not a TypeError), as an application's own
    value object may; sqlite3 binds it as 7 while `unhashable_param` is active."""

    def __hash__(self) -> int:
        raise ValueError("no hash")


@contextlib.contextmanager
def unhashable_param() -> Iterator[UnhashableParam]:
    """An `UnhashableParam` that sqlite3 can bind (its adapter registered for the block)."""
    sqlite3.register_adapter(UnhashableParam, lambda _: 7)
    try:
        yield UnhashableParam()
    finally:
        del sqlite3.adapters[(UnhashableParam, sqlite3.PrepareProtocol)]
