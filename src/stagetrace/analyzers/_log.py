"""Logging findings once per route and fingerprint per process."""

from __future__ import annotations

import logging

from .._model import Finding, Timeline
from .._state import STATE

__all__ = ["finding_key", "log_findings", "reset_logged"]

#: A child of ``stagetrace``: findings can be silenced without silencing internal errors.
logger = logging.getLogger("stagetrace.findings")

#: Distinct (route, kind, fingerprint) keys remembered. Past this many, new keys are no longer
#: logged (and a single line says so): memory stays bounded in a process that sees an unbounded
#: number of distinct statements.
MAX_KEYS = 10_000


def finding_key(f: Finding) -> str:
    """What tells a finding from others of its kind: its ``fingerprint``, with the statement
    hash (``stagetrace.db.query.hash``) when it has one — statements whose recorded text was
    cut to the same characters share a fingerprint — or, without a fingerprint, its message."""
    fp = f.attrs.get("fingerprint")
    if not isinstance(fp, str):
        return f.message
    h = f.attrs.get("stagetrace.db.query.hash")
    return fp if type(h) is not str else f"{fp} #{h}"


def log_findings(timeline: Timeline, *, kinds: tuple[str, ...] | None = None) -> int:
    """Log each finding of `timeline` on logger ``stagetrace.findings`` at WARNING, once per
    process for each (route, kind, fingerprint) — later timelines with the same pattern are silent.
    Findings without a ``fingerprint`` attribute are keyed by their message (`finding_key`).
    `kinds` limits which finding kinds are logged (all by default). Returns the number of lines
    logged.

    The pipeline calls this for every analyzed timeline; call `reset_logged` to forget.
    """
    if not timeline.findings:
        return 0
    route = timeline.name
    logged = 0
    for f in timeline.findings:
        if kinds is not None and f.kind not in kinds:
            continue
        key = (route, f.kind, finding_key(f))
        logged_keys = STATE.logged_findings
        with STATE.lock:
            if key in logged_keys:
                continue
            if len(logged_keys) >= MAX_KEYS:
                if STATE.logged_findings_full:
                    continue
                STATE.logged_findings_full = True
                full_now = True
            else:
                logged_keys.add(key)
                full_now = False
        if full_now:
            logger.warning(
                "stagetrace: %d distinct findings logged; further new ones are not logged",
                MAX_KEYS,
            )
            continue
        logger.warning("stagetrace: %s: %s", route, f.message)
        logged += 1
    return logged


def reset_logged() -> None:
    """Forget which findings were logged (`stagetrace.reset()` does it too)."""
    with STATE.lock:
        STATE.logged_findings.clear()
        STATE.logged_findings_full = False
