"""Findings for timelines recorded without the query analyzers."""

from __future__ import annotations

from .._model import Timeline
from ..analyzers import DEFAULT

_KINDS = ("n_plus_one", "duplicate_query")


def ensure_analyzed(tl: Timeline) -> Timeline:
    """`tl` with the default query analyzers' findings added, unless it already has findings
    of those kinds (files recorded with the analyzers on are left as they are)."""
    if any(f.kind in _KINDS for f in tl.findings):
        return tl
    found = []
    for analyzer in DEFAULT:
        found.extend(analyzer(tl))
    return tl.with_findings(found)
