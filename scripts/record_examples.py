"""Record timelines of the example apps into JSON lines files, with stagetrace's jsonl sink.

    python scripts/record_examples.py django OUT.jsonl [--repeat N]
    python scripts/record_examples.py fastapi OUT.jsonl [--repeat N]

Django: examples/django_site on a fresh SQLite file, migrated and seeded, requests through
Django's test client. FastAPI: examples/fastapi_app through Starlette's TestClient. Each app runs
in its own process (this one), since both configure process-wide state. The summary and report
tests run this into temporary directories; nothing it writes is committed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (method, path, body) requested once per round, in this order.
DJANGO_REQUESTS = [
    ("GET", "/books/", None),  # template page, select_related: one query
    ("GET", "/api/books/", None),  # the N+1: one query per book for its author
    ("GET", "/api/books/fast/", None),  # the same with select_related: one query
    ("GET", "/api/authors/", None),  # prefetch_related: two queries
    ("GET", "/api/books/1/", None),  # select_related
    ("GET", "/authors/2/", None),
    ("GET", "/export.csv", None),  # streaming
    ("GET", "/api/books/999/", None),  # 404 from the view
    ("GET", "/no-such-page/", None),  # 404 from URL resolution
]
FASTAPI_REQUESTS = [
    ("GET", "/items", None),
    ("GET", "/items/3", None),
    ("GET", "/items/999", None),  # 404
    ("GET", "/page", None),  # template with includes
    ("GET", "/stream", None),
    ("POST", "/orders", {"item_id": 2}),  # background task
    ("POST", "/orders", None),  # refused by a pure ASGI middleware (415)
]


def record_django(out: Path, repeat: int) -> int:
    site = ROOT / "examples" / "django_site"
    with tempfile.TemporaryDirectory(prefix="stagetrace-record-") as tmp:
        os.environ["BOOKSHOP_SQLITE"] = str(Path(tmp) / "bookshop.sqlite3")
        os.environ["DJANGO_SETTINGS_MODULE"] = "bookshop.settings"
        os.environ.pop("DATABASE_URL", None)
        os.environ["STAGETRACE_JSONL"] = str(out)
        sys.path.insert(0, str(site))
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections
        from django.test import Client

        import stagetrace

        quiet = io.StringIO()
        call_command("migrate", verbosity=0, stdout=quiet)
        call_command("seed", stdout=quiet)
        client = Client()
        count = 0
        for _ in range(repeat):
            for method, path, _body in DJANGO_REQUESTS:
                response = client.generic(method, path)
                if response.streaming:
                    b"".join(response.streaming_content)  # type: ignore[arg-type]
                response.close()
                count += 1
        stagetrace.flush(timeout=30)
        connections.close_all()
    return count


def record_fastapi(out: Path, repeat: int) -> int:
    os.environ["STAGETRACE_JSONL"] = str(out)
    sys.path.insert(0, str(ROOT / "examples" / "fastapi_app"))
    from app import app  # type: ignore[import-not-found]
    from starlette.testclient import TestClient

    import stagetrace

    count = 0
    with TestClient(app) as client:
        for _ in range(repeat):
            for method, path, body in FASTAPI_REQUESTS:
                if body is None:
                    client.request(method, path)
                else:
                    client.request(method, path, json=body)
                count += 1
    stagetrace.flush(timeout=30)
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", choices=("django", "fastapi"))
    parser.add_argument("out", type=Path, help="the JSON lines file to append to")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of requests (default 3)")
    args = parser.parse_args()
    out = args.out.resolve()
    record = record_django if args.app == "django" else record_fastapi
    count = record(out, args.repeat)
    print(f"{count} requests to the {args.app} example recorded in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
