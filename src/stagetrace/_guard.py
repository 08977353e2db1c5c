"""The internal-error guard: stagetrace's own failures never reach the host application.

Every place where stagetrace's code runs inside someone else's request wraps its side work in a
``try``/``except Exception`` that calls `report` (a ``try`` costs nothing on CPython 3.11+ until
something raises), or uses a `Guard` as a context manager where that reads better. `report`
counts the error under its site (``stats()["internal_errors"]`` and
``stats()["internal_errors_by_site"]``), marks the live timeline (its root gets
``stagetrace.internal_errors``), and logs the first error of each site once, with its traceback,
on the ``stagetrace`` logger. The application's own exceptions are never caught here: adapters
let them pass through untouched, as the same object.
"""

from __future__ import annotations

import logging
from types import TracebackType

from ._state import STATE

logger = logging.getLogger("stagetrace")

#: Called with the site name when an internal error is reported, to mark the live timeline.
#: Installed by the recorder (which alone knows what a live timeline is); None until then.
mark_timeline: list[object] = []


def report(site: str, exc: BaseException | None = None) -> None:
    """Count an internal error at `site`; log it (with traceback) the first time that site fails."""
    try:
        STATE.counters["internal_errors"] += 1
        STATE.errors_by_site[site] += 1
        for mark in mark_timeline:
            mark(site)  # type: ignore[operator]
        if site not in STATE.logged_sites:
            STATE.logged_sites.add(site)
            logger.warning(
                "stagetrace internal error in %s; the request went on (further errors at this "
                "site are only counted in stagetrace.stats())",
                site,
                exc_info=exc,
            )
    except Exception:  # pragma: no cover - the guard itself must never raise
        pass


class Guard:
    """``with Guard("site"):`` runs a block of stagetrace's side work; an `Exception` it raises is
    reported and swallowed. Create guards once (module level) and reuse them: they keep no
    per-use state, so one guard may be used by many threads at once."""

    __slots__ = ("site",)

    def __init__(self, site: str) -> None:
        self.site = site

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is not None and issubclass(exc_type, Exception):
            report(self.site, exc)
            return True
        return False
