"""Generic ASGI adapter: wrap any ASGI 3 application once.

::

    from stagetrace.asgi import StagetraceMiddleware
    app = StagetraceMiddleware(app)

Every HTTP request and websocket connection then yields a timeline (see `._gateway` for what
the gateway records). Lifespan passes through untouched. Works with any framework; for
Starlette and FastAPI, `stagetrace.starlette.instrument()` adds middleware, route, endpoint,
serialization, template and background-task stages.
"""

from __future__ import annotations

from typing import Any

from .. import _runtime, dbapi, httpclients
from .. import sqlalchemy as _sqlalchemy
from . import _gateway
from ._gateway import ASGIApp, Receive, Scope, Send, serve

__all__ = ["StagetraceMiddleware"]


class StagetraceMiddleware:
    """Records a stage timeline for every request and websocket connection of `app`.

    `framework` names the framework in the timelines (default ``"asgi"``). `http_clients`
    (default true) also records outbound calls made with httpx and requests as
    ``http.client`` stages; `sql` (default true) records SQLAlchemy's work and the sqlite3,
    psycopg and asyncpg drivers' queries (`stagetrace.sqlalchemy`, `stagetrace.dbapi`). Any
    other keyword is a stagetrace option, applied with
    `stagetrace.configure()` when the middleware is created; the configuration is resolved
    then, so a bad value fails at start-up, never inside a request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        framework: str = "asgi",
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "app" in scope and _gateway.app_decided(scope):  # (a server sets no "app")
            await self.app(scope, receive, send)
            return
        await serve(self.app, scope, receive, send, self.framework)
