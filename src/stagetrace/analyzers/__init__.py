"""Analyzers: plain callables that read a finished `stagetrace.Timeline` and return
`stagetrace.Finding`s, run by the pipeline after the request (``analyzers=[...]``).

- `n_plus_one` (factory) / `detect_n_plus_one` (default instance, threshold 5): the same
  statement fingerprint run at least `threshold` times in one timeline.
- `duplicate_query` (factory) / `detect_duplicate_queries` (default instance): the same
  statement with the same parameters run more than once.
- `fingerprint`: the normalized form of a SQL statement that both group by.
- `log_findings`: logs each finding once per route and fingerprint per process.

::

    import stagetrace
    from stagetrace import analyzers

    stagetrace.configure(analyzers=[analyzers.n_plus_one(threshold=10, min_total_ms=5)])
"""

from __future__ import annotations

from ._fingerprint import fingerprint, short_sql
from ._log import log_findings, reset_logged
from ._queries import (
    DuplicateQueries,
    NPlusOne,
    call_site,
    duplicate_query,
    n_plus_one,
    sql_text,
)

__all__ = [
    "DEFAULT",
    "DuplicateQueries",
    "NPlusOne",
    "call_site",
    "defaults",
    "detect_duplicate_queries",
    "detect_n_plus_one",
    "duplicate_query",
    "fingerprint",
    "log_findings",
    "n_plus_one",
    "reset_logged",
    "short_sql",
    "sql_text",
]

#: The N+1 analyzer with its default options (threshold 5).
detect_n_plus_one = n_plus_one()
#: The duplicate-query analyzer with its default options (any repeat).
detect_duplicate_queries = duplicate_query()
#: The analyzers stagetrace runs by default.
DEFAULT = (detect_n_plus_one, detect_duplicate_queries)


def defaults(n_plus_one_threshold: int = 5) -> tuple[NPlusOne, DuplicateQueries]:
    """The default analyzers, with the N+1 threshold given (for the ``n_plus_one_threshold``
    option)."""
    if n_plus_one_threshold == 5:
        return DEFAULT
    return (n_plus_one(n_plus_one_threshold), detect_duplicate_queries)
