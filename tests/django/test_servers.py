"""End to end: the example site under a real gunicorn (WSGI) and a real uvicorn (ASGI) on
loopback, timelines written by the JSON lines sink in the server process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..servers import ROOT, free_port, read_timelines, serve

requests = pytest.importorskip("requests")

SITE = ROOT / "examples" / "django_site"


@pytest.fixture(scope="module")
def site_db(tmp_path_factory) -> str:
    """The example's SQLite database, migrated and seeded."""
    db = tmp_path_factory.mktemp("site") / "bookshop.sqlite3"
    env = {**os.environ, "BOOKSHOP_SQLITE": str(db), "DJANGO_SETTINGS_MODULE": "bookshop.settings"}
    for cmd in (["migrate", "-v0"], ["seed"]):
        subprocess.run(
            [sys.executable, "manage.py", *cmd],
            cwd=SITE,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    return str(db)


def stages(tl: dict, kind: str) -> list[dict]:
    return [s for s in tl["stages"] if s["kind"] == kind]


def check_site_timelines(by_path: dict[str, dict], gateway: str) -> None:
    api = by_path["/api/books/"]
    assert api["framework"] == "django" and api["service"] == "bookshop"
    assert api["route"] == "api/books/" and api["status"] == 200
    assert api["request_id"] == "e2e-api"
    assert api["stages"][0]["kind"] == "gateway" and api["stages"][0]["name"] == gateway
    assert len(stages(api, "middleware")) >= 7
    for mw in stages(api, "middleware"):
        if not mw["name"].endswith("process_view"):
            assert mw["phases"]["in"] > 0 and mw["phases"]["out"] > 0
    assert len(stages(api, "db.query")) == 21  # 1 + 20 authors: the N+1
    assert len(stages(api, "orm.compile")) == 21
    assert stages(api, "serialize")[0]["name"] == "JsonResponse"
    assert stages(api, "view")[0]["name"] == "shop.views.api_books"

    page = by_path["/books/"]
    templates = {s["name"]: s for s in stages(page, "template")}
    assert templates["shop/base.html"]["parent"] == templates["shop/book_list.html"]["id"]
    rows = [s for s in stages(page, "template") if s["name"] == "shop/_book_row.html"]
    assert len(rows) == 20 and all(r["parent"] == templates["shop/base.html"]["id"] for r in rows)

    export = by_path["/export.csv"]
    (write,) = stages(export, "response.write")
    assert write["duration_ns"] >= 40_000_000  # 20 rows x 2 ms, produced while sending
    assert export["duration_ns"] >= write["start_ns"] + write["duration_ns"]
    assert export["stages"][0]["attrs"]["http.response.status_code"] == 200

    missing = by_path["/nowhere/"]
    assert missing["status"] == 404 and missing["route"] is None
    assert stages(missing, "route")[0]["error"]["type"] == "django.urls.exceptions.Resolver404"


def exercise(base: str) -> None:
    with requests.Session() as s:
        assert s.get(f"{base}/api/books/", headers={"X-Request-ID": "e2e-api"}).status_code == 200
        assert s.get(f"{base}/books/").status_code == 200
        r = s.get(f"{base}/export.csv", stream=True)
        body = b"".join(r.iter_content(256))
        assert body.count(b"\n") == 21
        assert s.get(f"{base}/nowhere/").status_code == 404


def test_gunicorn_wsgi_end_to_end(site_db, tmp_path):
    """gunicorn (sync workers) serving the example: full timelines, streaming until the end."""
    pytest.importorskip("gunicorn")
    port = free_port()
    jsonl = tmp_path / "gunicorn.jsonl"
    env = {
        "BOOKSHOP_SQLITE": site_db,
        "STAGETRACE_JSONL": str(jsonl),
        "DJANGO_SETTINGS_MODULE": "bookshop.settings",
    }
    args = [
        "gunicorn",
        "--workers",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(SITE),
        "bookshop.wsgi:application",
    ]
    with serve(args, env, tmp_path / "gunicorn.log", port) as base:
        exercise(base)
        timelines = read_timelines(jsonl, 4)
    check_site_timelines({t["path"]: t for t in timelines}, "WSGI")


def test_uvicorn_asgi_end_to_end(site_db, tmp_path):
    """uvicorn serving the example through Django's ASGI handler."""
    pytest.importorskip("uvicorn")
    port = free_port()
    jsonl = tmp_path / "uvicorn.jsonl"
    env = {
        "BOOKSHOP_SQLITE": site_db,
        "STAGETRACE_JSONL": str(jsonl),
        "DJANGO_SETTINGS_MODULE": "bookshop.settings",
    }
    args = [
        "uvicorn",
        "--app-dir",
        str(SITE),
        "--port",
        str(port),
        "--no-access-log",
        "bookshop.asgi:application",
    ]
    with serve(args, env, tmp_path / "uvicorn.log", port) as base:
        exercise(base)
        timelines = read_timelines(jsonl, 4)
    by_path = {t["path"]: t for t in timelines}
    check_site_timelines(by_path, "ASGI")
    api = by_path["/api/books/"]
    assert api["stages"][0]["attrs"]["http.response.first_byte_ns"] > 0
    view = stages(api, "view")[0]
    assert view["attrs"]["asgi.thread_wait_ns"] >= 0  # a sync view under ASGI
