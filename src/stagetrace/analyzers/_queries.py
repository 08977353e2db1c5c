"""Query analyzers: N+1 patterns and duplicate queries within one timeline.

Both are plain callables taking a `stagetrace.Timeline` and returning `stagetrace.Finding`s, so
they can be passed to ``stagetrace.configure(analyzers=[...])`` as they are, or built with other
options by their factories.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .._model import Finding, Row, Stage, Timeline
from ._fingerprint import fingerprint, short_sql

__all__ = [
    "DuplicateQueries",
    "NPlusOne",
    "call_site",
    "duplicate_query",
    "n_plus_one",
    "sql_text",
]

#: Statements that manage transactions and sessions: a loop of ``atomic()`` blocks repeats
#: them, but they are not queries anyone could batch.
_CONTROL = frozenset(
    ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "START", "END", "SHOW")
)
_FIRST_WORD = re.compile(r"[A-Za-z]+")


def _is_control(fp: str) -> bool:
    """Whether a fingerprint is a transaction-control statement: its first word, whatever
    follows it (asyncpg sends ``BEGIN;``) and in any case (the fingerprint lower-cases words
    it does not know as keywords: ``start transaction``)."""
    m = _FIRST_WORD.match(fp)
    return m is not None and m.group().upper() in _CONTROL


def sql_text(stage: Stage) -> str | None:
    """The SQL text of a ``db.query`` stage: ``db.query.text``, or ``db.statement`` as written
    by stagetrace before the attribute names followed OpenTelemetry's current conventions."""
    return _text(stage.attrs)


def _text(attrs: Mapping[str, Any]) -> str | None:
    text = attrs.get("db.query.text")
    if type(text) is not str:
        text = attrs.get("db.statement")
        if type(text) is not str:
            return None
    if text.startswith("<") and text.endswith(">"):  # a composed SQL object, text not recorded
        return None
    return text


def call_site(attrs: Mapping[str, Any]) -> tuple[str, int | None, str | None] | None:
    """``(file, line, function)`` from a stage's ``code.*`` attributes, or None."""
    path = attrs.get("code.file.path")
    if type(path) is not str or not path:
        return None
    line = attrs.get("code.line.number")
    func = attrs.get("code.function.name")
    return (
        path,
        line if type(line) is int else None,
        func if type(func) is str and func else None,
    )


_short_paths: dict[tuple[str, str], str] = {}


def _short_path(path: str) -> str:
    """A path relative to the working directory when it is inside it (for messages). Cached:
    an N+1 loop names the same file in every request, and ``os.path.relpath`` costs about as
    much as the rest of the analysis of a query group."""
    if not os.path.isabs(path):
        return path
    try:
        key = (os.getcwd(), path)
    except OSError:  # the working directory was removed
        return path
    found = _short_paths.get(key)
    if found is None:
        try:
            rel = os.path.relpath(path, key[0])
        except ValueError:  # another drive on Windows
            rel = ".."
        found = path if rel.startswith("..") else rel
        if len(_short_paths) >= 1024:
            _short_paths.clear()
        _short_paths[key] = found
    return found


def _where(site: tuple[str, int | None, str | None] | None) -> str:
    if site is None:
        return ""
    path, line, func = site
    text = _short_path(path) + (f":{line}" if line is not None else "")
    return f"{text} in {func}" if func else text


def _ms(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:.1f} ms" if ms >= 0.95 else f"{ms:.2f} ms"


def _context(tl: Timeline, stage_id: int) -> tuple[str | None, str | None]:
    """The innermost enclosing ``template`` and ``view`` stage names of a stage."""
    template = view = None
    for kind, name in tl.lineage(stage_id):
        if template is None and kind == "template":
            template = name
        elif kind == "view":
            view = name
            break
    return template, view


# The analyzers read ``db.query`` stages as `Row`s — (id, name, duration_ns, attrs) — so that
# analyzing a timeline builds no `Stage` object (see `Timeline.rows`).
_ID: Final = 0
_NAME: Final = 1
_DURATION: Final = 2
_ATTRS: Final = 3


#: The query rows of the timeline analyzed last: both analyzers read the same rows, one after
#: the other. One slot, replaced as a whole (analysis may run on two threads at once).
_last: tuple[Timeline, list[Row]] | None = None


def _queries(tl: Timeline) -> list[Row]:
    global _last
    last = _last
    if last is not None and last[0] is tl:
        return last[1]
    rows = tl.rows("db.query")
    _last = (tl, rows)
    return rows


def forget_analyzed() -> None:
    """Drop the rows kept for the next analyzer (the pipeline calls it after analyzing a
    timeline, so no timeline stays referenced here)."""
    global _last
    _last = None


#: Recorded on a query whose text was cut at ``max_sql_length``: a hash of the whole
#: statement's fingerprint. Two statements cut to the same text are told apart by it.
_HASH: Final = "stagetrace.db.query.hash"


def _statement(attrs: Mapping[str, Any], fp: str) -> Any:
    """What identifies a query's statement: its fingerprint, and for a text that was cut the
    hash of the whole statement's."""
    h = attrs.get(_HASH)
    return fp if type(h) is not str else (fp, h)


def _group_queries(tl: Timeline) -> dict[Any, tuple[str, list[Row]]]:
    """Queries by statement (`_statement`), each group with its fingerprint."""
    groups: dict[Any, tuple[str, list[Row]]] = {}
    for row in _queries(tl):
        attrs = row[_ATTRS]
        text = _text(attrs)
        if text is None:
            continue
        fp = fingerprint(text)
        key = _statement(attrs, fp)
        group = groups.get(key)
        if group is None:
            groups[key] = (fp, [row])
        else:
            group[1].append(row)
    return groups


def _query_count(tl: Timeline) -> int:
    return tl.count("db.query")


def _finding_attrs(tl: Timeline, fp: str, stages: Sequence[Row]) -> tuple[dict[str, Any], str, int]:
    """Attributes shared by both findings, a readable location, and the total time."""
    total = sum(s[_DURATION] for s in stages)
    site = None
    sites: list[str] = []
    for s in stages:
        found = call_site(s[_ATTRS])
        if found is not None:
            where = _where(found)
            if where not in sites:
                sites.append(where)
            if site is None:
                site = found
    template, view = _context(tl, stages[0][_ID])
    attrs: dict[str, Any] = {"fingerprint": fp, "count": len(stages), "total_ns": total}
    h = stages[0][_ATTRS].get(_HASH)
    if type(h) is str:  # one of several statements this fingerprint (of a cut text) stands for
        attrs[_HASH] = h
    if site is not None:
        path, line, func = site
        attrs["code.file.path"] = path
        if line is not None:
            attrs["code.line.number"] = line
        if func is not None:
            attrs["code.function.name"] = func
        attrs["call_site"] = f"{path}:{line}" if line is not None else path
        if len(sites) > 1:
            attrs["call_sites"] = sites[:10]
        location = f"at {_where(site)}"
    elif view is not None:
        location = f"in view {view}"
    elif template is not None:
        location = f"in template {template}"
    else:
        location = ""
    if template is not None:
        attrs["template"] = template
        if site is not None or view is not None:
            location += f", rendering {template}"
    if view is not None:
        attrs["view"] = view
    first = stages[0][_ATTRS]
    db_system = first.get("db.system.name", first.get("db.system"))
    if type(db_system) is str:
        attrs["db.system.name"] = db_system
    return attrs, location, total


class NPlusOne:
    """Finds N+1 query patterns: the same statement, up to its values (see
    `stagetrace.analyzers.fingerprint`), run at least `threshold` times in one timeline.

    One finding per fingerprint (and ``stagetrace.db.query.hash``, for statements whose recorded
    text was cut), ``kind="n_plus_one"``, with attributes ``fingerprint``, ``count``,
    ``total_ns``, that hash if any, the call site (``code.file.path``, ``code.line.number``,
    ``code.function.name`` and ``call_site`` as ``file:line``) when the recorder captured it,
    ``template`` when the queries ran while a template rendered, ``view``; its ``stages`` are
    the ids of the queries. Transaction-control statements (``BEGIN``, ``SAVEPOINT``, ...) are
    never reported.
    """

    __slots__ = ("min_total_ns", "threshold")

    def __init__(self, threshold: int = 5, *, min_total_ms: float = 0.0) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
            raise ValueError(
                f"n_plus_one threshold must be an integer of at least 2, not {threshold!r}"
            )
        if (
            isinstance(min_total_ms, bool)
            or not isinstance(min_total_ms, (int, float))
            or not (min_total_ms >= 0)
        ):
            raise ValueError(f"n_plus_one min_total_ms must be a number >= 0, not {min_total_ms!r}")
        self.threshold = threshold
        self.min_total_ns = int(min_total_ms * 1e6)

    def __call__(self, timeline: Timeline) -> list[Finding]:
        if _query_count(timeline) < self.threshold:
            return []
        found = []
        for fp, stages in _group_queries(timeline).values():
            if len(stages) < self.threshold or _is_control(fp):
                continue
            attrs, location, total = _finding_attrs(timeline, fp, stages)
            if total < self.min_total_ns:
                continue
            message = f"N+1: {len(stages)}× {short_sql(fp)}"
            if location:
                message += f" {location}"
            message += f" ({_ms(total)})"
            found.append(Finding("n_plus_one", message, tuple(s[_ID] for s in stages), attrs))
        return found

    def __repr__(self) -> str:
        return f"n_plus_one(threshold={self.threshold})"


class DuplicateQueries:
    """Finds the same statement run again with the same parameters in one timeline: stages the
    recorder marked with ``stagetrace.duplicate_of`` (the id of the earlier, identical query;
    parameters are compared by hash, never stored).

    One finding per statement (fingerprint, and hash for a cut text) whose identical
    executions — same parameters — number at least ``threshold`` for some set of parameters,
    ``kind="duplicate_query"``, with ``fingerprint``, ``count`` (those executions, the first of
    each set included), ``parameter_sets`` (when more than one set repeats), ``total_ns``, the
    call site when captured, and the stage ids. Transaction-control statements (``BEGIN``,
    ``COMMIT``, ...), the same in every transaction, are never reported.
    """

    __slots__ = ("threshold",)

    def __init__(self, threshold: int = 2) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
            raise ValueError(
                f"duplicate_query threshold must be an integer of at least 2, not {threshold!r}"
            )
        self.threshold = threshold

    def __call__(self, timeline: Timeline) -> list[Finding]:
        if _query_count(timeline) < self.threshold:
            return []
        # One finding per statement: an N+1 over a foreign key whose ids repeat has one group
        # of identical queries per id, and a finding each would bury the page in them.
        by_statement: dict[Any, tuple[str, list[list[Row]]]] = {}
        for group in _duplicate_groups(timeline):
            if len(group) < self.threshold:
                continue
            first = group[0][_ATTRS]
            text = _text(first)
            fp = fingerprint(text) if text is not None else group[0][_NAME]
            if _is_control(fp):  # a second transaction's BEGIN and COMMIT
                continue
            by_statement.setdefault(_statement(first, fp), (fp, []))[1].append(group)
        found = []
        for fp, groups in by_statement.values():
            stages = sorted((s for g in groups for s in g), key=lambda s: s[_ID])
            attrs, location, total = _finding_attrs(timeline, fp, stages)
            if len(groups) == 1:
                message = (
                    f"duplicate query: {len(stages)}× {short_sql(fp)} with the same parameters"
                )
            else:
                attrs["parameter_sets"] = len(groups)
                message = (
                    f"duplicate queries: {len(stages)}× {short_sql(fp)}, "
                    f"{len(groups)} sets of parameters each run more than once"
                )
            if location:
                message += f" {location}"
            message += f" ({_ms(total)})"
            found.append(Finding("duplicate_query", message, tuple(s[_ID] for s in stages), attrs))
        return found

    def __repr__(self) -> str:
        return f"duplicate_query(threshold={self.threshold})"


def _duplicate_groups(timeline: Timeline) -> list[list[Row]]:
    """Queries marked ``stagetrace.duplicate_of``, grouped with their first execution."""
    queries = _queries(timeline)
    by_id = {row[_ID]: row for row in queries}
    n = len(queries)
    groups: dict[int, list[Row]] = {}
    for row in queries:
        dup = row[_ATTRS].get("stagetrace.duplicate_of")
        if type(dup) is not int or not 0 <= dup < row[_ID] or dup not in by_id:
            continue
        root = dup
        seen = 0
        while seen < n:  # follow chains to the first execution
            nxt = by_id[root][_ATTRS].get("stagetrace.duplicate_of")
            if type(nxt) is not int or not 0 <= nxt < root or nxt not in by_id:
                break
            root = nxt
            seen += 1
        group = groups.get(root)
        if group is None:
            groups[root] = [by_id[root], row]
        else:
            group.append(row)
    return list(groups.values())


def n_plus_one(threshold: int = 5, *, min_total_ms: float = 0.0) -> NPlusOne:
    """An N+1 analyzer: a finding for every statement fingerprint run at least `threshold`
    times in one timeline (and, with `min_total_ms`, taking at least that long in total).

    ::

        stagetrace.configure(analyzers=[stagetrace.analyzers.n_plus_one(threshold=10)])
    """
    return NPlusOne(threshold, min_total_ms=min_total_ms)


def duplicate_query(threshold: int = 2) -> DuplicateQueries:
    """A duplicate-query analyzer: a finding for every query run `threshold` or more times
    with the same SQL and the same parameters in one timeline."""
    return DuplicateQueries(threshold)
