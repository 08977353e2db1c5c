"""Where internal errors go.

stagetrace runs inside other people's requests. Any exception our own code raises there is
caught, counted under ``internal_errors`` (see `stagetrace.stats()`), logged once per site at
debug level, and swallowed; the host application's own exceptions are never touched.
"""

from __future__ import annotations

import logging

from . import _config

logger = logging.getLogger("stagetrace")

_reported: set[str] = set()


def report(where: str, exc: BaseException | None = None) -> None:
    """Count an internal error at `where`; log it the first time that site fails."""
    _config.count("internal_errors")
    if where not in _reported:
        _reported.add(where)
        logger.debug(
            "stagetrace internal error in %s (further ones only counted)", where, exc_info=exc
        )
