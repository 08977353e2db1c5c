"""The contracts between stagetrace's pipeline and the code you plug into it.

Sinks and analyzers are plain objects passed to `stagetrace.configure(sinks=..., analyzers=...)`;
there is no registry. Both run on the background worker thread, after the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._model import Finding, Timeline

__all__ = ["Analyzer", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """Receives each finished, analyzed timeline.

    `emit` runs on stagetrace's background worker, one timeline at a time, never on the request
    path; an exception it raises is counted (``sink_errors`` in `stagetrace.stats()`) and logged
    once. A sink may also define ``flush()`` (called by `stagetrace.flush()`; a ``flush`` whose
    first parameter is ``timeout`` gets what is left of the caller's deadline), ``close()``
    (called once it is no longer used: by a ``configure()`` without it, or `stagetrace.reset()`;
    `stagetrace.shutdown()` leaves it open, as recording goes on), and ``after_fork()`` (called
    in a child process after ``os.fork()``, e.g. to reopen files or sockets).
    """

    def emit(self, timeline: Timeline) -> None: ...


class Analyzer(Protocol):
    """Reads a frozen timeline and returns findings (or None) to attach to it."""

    def __call__(self, timeline: Timeline) -> Iterable[Finding] | None: ...
