"""A hand-written WSGI application (no framework) for the generic middleware's tests; also
served by gunicorn in `test_wsgi_middleware.py`."""

from __future__ import annotations

import os
from pathlib import Path

import stagetrace
from stagetrace.wsgi import StagetraceMiddleware

CLOSED: list[str] = []
RAISED: list[BaseException] = []
FILE = Path(__file__).with_name("apps.py")


class Body:
    """A response iterable with a close() of its own, as PEP 3333 allows."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __iter__(self):
        for i in range(3):
            with stagetrace.stage(f"chunk {i}"):
                yield b"x" * 10

    def close(self) -> None:
        with stagetrace.stage("cleanup"):
            CLOSED.append(self.path)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/boom":
        exc = RuntimeError("app failure")
        RAISED.append(exc)
        raise exc
    if path == "/file":
        size = FILE.stat().st_size
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
        wrapper = environ.get("wsgi.file_wrapper")
        f = open(FILE, "rb")  # noqa: SIM115 - the server closes it
        return wrapper(f) if wrapper else iter(lambda: f.read(4096), b"")
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"legacy ")
        return [b"and list"]
    if path == "/list":
        start_response("201 Created", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path == "/broken":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def broken():
            yield b"a"
            exc = ValueError("broken stream")
            RAISED.append(exc)
            raise exc

        return broken()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Body(path)


def make_application():
    """What gunicorn serves (``tests.wsgi.apps:make_application()``)."""
    return StagetraceMiddleware(app, service=os.environ.get("APP_SERVICE", "bare-wsgi"))
