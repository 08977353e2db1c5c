"""The ``Server-Timing`` response header: per-kind totals of the request so far.

Each entry is the *self time* of the stages of one kind — their time minus the time of the
stages nested in them — so ``db`` is time spent in SQL, ``view`` the view's own code without
the queries and templates it ran, ``mw`` middleware code around the view; a stage's time is
counted in one entry only, and for a request that runs one thing at a time the entries add up
to at most ``total``, the time since the request began (stages run concurrently —
``asyncio.gather`` children — overlap, and their entries can exceed it).
The header goes out with the response headers, so for a streamed body the totals cover the
work done before the first chunk. Times are in milliseconds (the header's unit), 0.01 ms
resolution; ``desc="n=3"`` gives the number of stages.
"""

from __future__ import annotations

from typing import Any

from .. import _recorder

#: Server-Timing metric names (short, as browser devtools show them) of the stage kinds.
#: Kinds not listed (the gateway's own time, response writing) are left out.
NAMES: dict[str, str] = {
    "middleware": "mw",
    "route": "route",
    "dependency": "dep",
    "view": "view",
    "orm.compile": "orm",
    "orm.fetch": "orm",
    "db.connect": "conn",
    "db.query": "db",
    "transaction": "db",
    "template": "tpl",
    "serialize": "ser",
    "cache": "cache",
    "session": "session",
    "http.client": "http",
    "task": "task",
    "custom": "custom",
}

#: The order entries appear in (the order of a request's life).
_ORDER = (
    "mw",
    "route",
    "dep",
    "view",
    "db",
    "conn",
    "orm",
    "tpl",
    "ser",
    "cache",
    "session",
    "http",
)


def value(root: Any) -> str | None:
    """The header value for the request whose root record is `root`, or None when it is not
    recording any more."""
    found = _recorder.kind_totals(root)
    if found is None:
        return None
    totals, total_ns = found
    merged: dict[str, list[int]] = {}
    for kind, (count, self_ns) in totals.items():
        name = NAMES.get(kind)
        if name is None:
            continue
        acc = merged.setdefault(name, [0, 0])
        acc[0] += count
        acc[1] += self_ns
    names = [n for n in _ORDER if n in merged] + sorted(n for n in merged if n not in _ORDER)
    parts = [f'{n};dur={merged[n][1] / 1e6:.2f};desc="n={merged[n][0]}"' for n in names]
    parts.append(f"total;dur={total_ns / 1e6:.2f}")
    return ", ".join(parts)


def append(existing: str | None, ours: str) -> str:
    """`ours` after the application's own Server-Timing value, if it set one."""
    existing = (existing or "").strip().rstrip(",")
    return f"{existing}, {ours}" if existing else ours
