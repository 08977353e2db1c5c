"""Flask adapter.

::

    import stagetrace.flask
    stagetrace.flask.instrument()          # every Flask app, built already or later
    # or: stagetrace.flask.instrument(app)

Records, per request, the WSGI gateway (until the server closes the response), URL matching
with the rule as the route, each ``before_request`` / ``after_request`` / teardown function as
a middleware stage, the view, error handlers, ``jsonify``, Jinja2 templates and outbound HTTP
calls. `uninstrument()` undoes it.
"""

from __future__ import annotations

try:
    import flask as _flask  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without Flask installed
    raise ImportError('stagetrace.flask needs Flask: pip install "stagetrace[flask]"') from exc

from ._install import instrument, is_instrumented, uninstrument

__all__ = ["instrument", "is_instrumented", "uninstrument"]
