"""Celery adapter.

::

    import stagetrace.celery
    stagetrace.celery.instrument()     # in the web process and in the worker (celery.py)

Sending a task from inside a timeline (a request) records the enqueue as a ``task`` stage and
carries its W3C trace context in the message; in the worker each execution of a task is a
timeline of its own (``protocol: "job"``) in the same trace, its parent span the enqueue
stage. `uninstrument()` undoes it.
"""

from __future__ import annotations

try:
    import celery as _celery  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without Celery installed
    raise ImportError('stagetrace.celery needs Celery: pip install "stagetrace[celery]"') from exc

from ._install import instrument, is_instrumented, uninstrument

__all__ = ["instrument", "is_instrumented", "uninstrument"]
