"""Generic WSGI adapter: wrap any WSGI application once.

::

    from stagetrace.wsgi import StagetraceMiddleware
    application = StagetraceMiddleware(application)

Every request then yields a timeline that lasts until the server closes the response (see
`._gateway` for what the gateway records). Works with any WSGI framework; for Flask,
`stagetrace.flask.instrument()` adds route, view, before/after-request, template,
serialization and error-handler stages, and Django's own adapter needs no middleware at all.
"""

from __future__ import annotations

from typing import Any

from .. import _runtime, dbapi, httpclients
from .. import sqlalchemy as _sqlalchemy
from ._gateway import Environ, StartResponse, WSGIApp, serve

__all__ = ["StagetraceMiddleware"]


class StagetraceMiddleware:
    """Records a stage timeline for every request of the WSGI application `app`.

    `framework` names the framework in the timelines (default ``"wsgi"``). `http_clients`
    (default true) also records outbound calls made with httpx and requests as
    ``http.client`` stages; `sql` (default true) records SQLAlchemy's work and the sqlite3,
    psycopg and asyncpg drivers' queries (`stagetrace.sqlalchemy`, `stagetrace.dbapi`). Any
    other keyword is a stagetrace option, applied with
    `stagetrace.configure()` when the middleware is created; the configuration is resolved
    then, so a bad value fails at start-up, never inside a request.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        framework: str = "wsgi",
        http_clients: bool = True,
        sql: bool = True,
        **options: Any,
    ) -> None:
        self.app = app
        self.framework = framework
        if options:
            _runtime.configure(**options)
        else:
            _runtime.settings()
        if http_clients:
            httpclients.install()
        if sql:
            _sqlalchemy.install()
            dbapi.install()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Any:
        return serve(self.app, environ, start_response, self.framework)
