"""The one guard for internal errors.

stagetrace runs inside other people's requests. Any exception our own code raises there is
caught, counted under ``internal_errors`` (see `stagetrace.stats()`), logged once per site at
debug level, and swallowed; the host application's own exceptions are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

from . import _config

logger = logging.getLogger("stagetrace")

P = ParamSpec("P")
R = TypeVar("R")

_reported: set[str] = set()


def report(where: str, exc: BaseException | None = None) -> None:
    """Count an internal error at `where`; log it the first time that site fails."""
    _config.count("internal_errors")
    if where not in _reported:
        _reported.add(where)
        logger.debug(
            "stagetrace internal error in %s (further ones only counted)", where, exc_info=exc
        )


@contextmanager
def guard(where: str) -> Iterator[None]:
    """Run a block of stagetrace's own code; an exception in it is reported, not raised."""
    try:
        yield
    except Exception as exc:
        report(where, exc)


def guarded(where: str, default: R) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator form of `guard` for functions that return a value: `default` on failure."""

    def deco(func: Callable[P, R]) -> Callable[P, R]:
        @wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                report(where, exc)
                return default

        return wrapper

    return deco
