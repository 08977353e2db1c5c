"""``stagetrace demo``: the Django example site (examples/django_site) on SQLite, a few
requests through Django's test client, and their waterfalls."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

from . import _api
from .sinks._console import render_waterfall

REQUESTS = [
    ("/books/", "a template page: extends, an include per row, one query"),
    ("/api/books/", "a JSON API with an N+1: one query per book for its author"),
    ("/authors/2/", "a page with an annotated query and a related list"),
    ("/export.csv", "a streaming CSV export: the timeline lasts until the last chunk"),
    ("/api/books/999/", "a 404 from the view"),
]


class DemoError(Exception):
    pass


def example_dir() -> Path:
    """Where the example site is: inside the installed package, or in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here / "_examples" / "django_site",
        here.parents[1] / "examples" / "django_site",
    ):
        if (candidate / "manage.py").is_file():
            return candidate
    raise DemoError("the example site is missing from this installation")


class _NotFindings(logging.Filter):
    """Lets through every log record but the analyzers' findings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "log_findings"


def run_demo(out: IO[str], *, color: bool, width: int) -> int:
    try:
        import django
    except ImportError:
        raise DemoError('the demo needs Django: pip install "stagetrace[django]"') from None
    site = example_dir()
    with tempfile.TemporaryDirectory(prefix="stagetrace-demo-") as tmp:
        os.environ["BOOKSHOP_SQLITE"] = str(Path(tmp) / "bookshop.sqlite3")
        os.environ["DJANGO_SETTINGS_MODULE"] = "bookshop.settings"
        os.environ.pop("DATABASE_URL", None)
        sys.path.insert(0, str(site))
        django.setup()
        from django.core.management import call_command
        from django.test import Client

        quiet = io.StringIO()
        call_command("migrate", verbosity=0, stdout=quiet)
        call_command("seed", stdout=quiet)
        client = Client()
        # The waterfalls show the findings: their log lines would only come first, out of place.
        quiet_findings = _NotFindings()
        logging.getLogger("stagetrace.findings").addFilter(quiet_findings)
        try:
            with _api.capture() as timelines:
                for path, _ in REQUESTS:
                    response = client.get(path)
                    if response.streaming:
                        b"".join(response.streaming_content)
                    response.close()
        finally:
            logging.getLogger("stagetrace.findings").removeFilter(quiet_findings)
        from django.db import connections

        connections.close_all()
    out.write(
        f"stagetrace demo: the bookshop example (examples/django_site), Django "
        f"{django.get_version()} on SQLite, {len(REQUESTS)} requests through Django's test "
        "client.\nEach row is a stage: start, duration and self time in ms, then a bar on the "
        "request's time axis.\n"
    )
    for tl, (path, what) in zip(timelines, REQUESTS, strict=False):
        out.write(f"\n# {path}: {what}\n")
        out.write(render_waterfall(tl, width=width, color=color))
    out.write(
        '\nYour own project: add "stagetrace.django" to INSTALLED_APPS and set '
        "STAGETRACE_SINKS=console (or STAGETRACE_JSONL=timelines.jsonl).\n"
    )
    return 0
