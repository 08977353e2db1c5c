"""The apps under test and how requests are driven into them, in-process.

* Django: the shop in ``djangoshop/``, served through Django's ``WSGIHandler`` with a fresh
  environ dict per request; the body is iterated and the response closed, as a WSGI server does.
* FastAPI: the repository's example (``examples/fastapi_app/app.py``) plus one trivial route,
  called straight as an ASGI app (no server, no test client).

Each driver serves `n` requests of one path and returns the wall time of each, taken on the
request thread around the whole exchange.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from ._tracers import Tracer

ROOT = Path(__file__).resolve().parents[2]
FASTAPI_EXAMPLE = ROOT / "examples" / "fastapi_app"

#: (app, endpoint label, path) — what the side-by-side table shows.
ENDPOINTS: dict[str, list[tuple[str, str]]] = {
    "django": [
        ("trivial view", "/ping/"),
        ("N+1 JSON, 11 queries", "/api/products/"),
        ("template + include, 1 query", "/products/"),
        ("streaming CSV, 1 query", "/export.csv"),
    ],
    "fastapi": [
        ("trivial route", "/ping"),
        ("dependency + response model", "/items/3"),
        ("template page (Jinja2)", "/page"),
    ],
}

HEADERS = {
    "host": "shop.example",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench/1.0",
    "accept": "text/html,application/json;q=0.9,*/*;q=0.8",
    "accept-language": "en-GB,en;q=0.8",
}


def framework_of(app: str) -> str:
    return "fastapi" if app == "fastapi" else "django"


# --- Django -----------------------------------------------------------------------------------


def setup_django() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.overhead.djangoshop.settings"
    import django

    django.setup()


def prepare_django_db() -> None:
    """Create the tables and seed the shop (run once per database, in its own process)."""
    setup_django()
    from django.core.management import call_command

    from .djangoshop.views import seed

    call_command("migrate", verbosity=0, stdout=io.StringIO())
    seed()


def _start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
    return _discard


def _discard(data: bytes) -> None:
    pass


class DjangoDriver:
    def __init__(self, tracer: Tracer) -> None:
        setup_django()
        tracer.after_setup()
        from django.core.handlers.wsgi import WSGIHandler

        self.handler = WSGIHandler()  # built after every tracer instrumented Django
        self.base = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "shop.example",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in HEADERS.items():
            self.base["HTTP_" + name.upper().replace("-", "_")] = value

    def run(self, path: str, n: int) -> list[int]:
        handler, base, out = self.handler, self.base, []
        for _ in range(n):
            environ = dict(base)
            environ["PATH_INFO"] = path
            environ["wsgi.input"] = io.BytesIO()
            t0 = perf_counter_ns()
            response = handler(environ, _start_response)
            for _chunk in response:
                pass
            response.close()
            out.append(perf_counter_ns() - t0)
        return out


# --- FastAPI ----------------------------------------------------------------------------------


def load_fastapi_example(stagetrace_on: bool) -> Any:
    """Import the FastAPI example and add a trivial route. The example instruments stagetrace
    at import; for the other configurations that call is skipped, so no patch is ever made."""
    import stagetrace.starlette

    instrument = stagetrace.starlette.instrument
    if not stagetrace_on:
        stagetrace.starlette.instrument = lambda *a, **k: None  # type: ignore[assignment]
    sys.path.insert(0, str(FASTAPI_EXAMPLE))
    try:
        import app as example
    finally:
        stagetrace.starlette.instrument = instrument  # type: ignore[assignment]
    from fastapi.responses import PlainTextResponse

    async def ping() -> str:
        return "ok"

    example.app.add_api_route("/ping", ping, response_class=PlainTextResponse)
    return example.app


class FastAPIDriver:
    def __init__(self, tracer: Tracer) -> None:
        self.app = load_fastapi_example(tracer.stagetrace_on)
        tracer.after_setup(self.app)
        self.loop = asyncio.new_event_loop()
        self.headers = [(k.encode(), v.encode()) for k, v in HEADERS.items()]

    def run(self, path: str, n: int) -> list[int]:
        return self.loop.run_until_complete(self._run(path, n))

    async def _run(self, path: str, n: int) -> list[int]:
        app, headers, out = self.app, self.headers, []
        path_only, _, query = path.partition("?")

        async def send(message: dict[str, Any]) -> None:
            pass

        for _ in range(n):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path_only,
                "raw_path": path_only.encode(),
                "query_string": query.encode(),
                "root_path": "",
                "client": ("127.0.0.1", 40000),
                "server": ("shop.example", 80),
                "headers": list(headers),
                "state": {},
            }
            messages = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive(messages: list[dict[str, Any]] = messages) -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.sleep(3600)  # a real server blocks until the client goes
                return {"type": "http.disconnect"}

            t0 = perf_counter_ns()
            await app(scope, receive, send)
            out.append(perf_counter_ns() - t0)
        return out


def make_driver(app: str, tracer: Tracer) -> DjangoDriver | FastAPIDriver:
    return FastAPIDriver(tracer) if app == "fastapi" else DjangoDriver(tracer)
